"""Lightning callbacks: they decide *when* the search runs; the algorithms live in
``lightning_metanas`` (which never imports this package)."""
