"""The pytest suite (CPU); tests/conftest.py sets it to one torch thread."""
