#!/usr/bin/env bash
# Fills .device/ (gitignored) with what bench/device_check.sh needs on the GPU machine and
# cannot fetch there: that machine has no network, and its Python (3.12) has torch,
# pytorch-lightning, torchmetrics, matplotlib, jinja2, numpy, pillow, pyyaml and pytest, but
# not jsonargparse (LightningCLI's parser) nor learn2learn (task sampling, the MAML reference).
#
#   bash scripts/prepare_device.sh          # here, with PyPI reachable; ~10 MB, a few seconds
#
# .device/wheels/  pure-Python wheels (they install on any Python): jsonargparse and the two
#                  packages of its [signatures] extra, at the versions installed in .venv (the
#                  ones the tests pass with); and setuptools, wheel (with packaging) and Cython 3 (its
#                  pure-Python wheel), the build requirements of learn2learn.
# .device/learn2learn-0.2.0.tar.gz
#                  learn2learn's source distribution: device_check.sh builds it there with
#                  scripts/build_learn2learn.py against those wheels (no index) and the
#                  machine's C compiler, for the machine's own Python.
# W&B is not carried: nothing the device check runs logs to it (CSV logger).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DIR=.device
rm -rf "$DIR"
mkdir -p "$DIR/wheels"
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
any_python() {  # wheels tagged py3-none-any, for the device's Python 3.12
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation py --abi none --platform any -d "$DIR/wheels" "$@"
}
any_python "jsonargparse==$(version jsonargparse)" "docstring-parser==$(version docstring-parser)" \
  "typeshed-client==$(version typeshed-client)"
any_python "setuptools>=61" "wheel" "packaging" "cython>=3,<4"
"$PY" -m pip download --quiet --no-deps --no-binary learn2learn -d "$DIR" learn2learn==0.2.0
ls -l "$DIR" "$DIR/wheels"
du -sh "$DIR"
