#!/usr/bin/env python3
"""Build a learn2learn 0.2.0 wheel that installs cleanly on Python 3.11+ with a CPU torch.

Why this exists: learn2learn 0.2.0 (its last release) ships only a source distribution whose
Cython-generated C files predate Python 3.11 and fail to compile, and it declares torchvision,
gym, gsutil, scipy and qpth as dependencies. torchvision from PyPI breaks beside the CPU torch
wheel (and drags in a CUDA torch), and the core modules this project uses
(`algorithms`, `data`, `nn`, `optim`, `utils`) import none of them. So we take the sdist,
regenerate the C files with Cython 3, trim install_requires to what the core really imports,
make the `vision`/`gym`/`text` sub-packages optional, and build a wheel into OUT_DIR.

Usage: python scripts/build_learn2learn.py OUT_DIR
Then:  pip install --find-links OUT_DIR learn2learn==0.2.0

Offline (bench/device_check.sh on a GPU machine without network, from what
scripts/prepare_device.sh put in .device/): ``--sdist`` names the downloaded source
distribution and ``--find-links`` a folder holding the build's own requirements as wheels
(setuptools, wheel, Cython); pip then reads no index.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile

VERSION = "0.2.0"
CORE_REQUIRES = ["numpy>=1.15.4", "torch>=1.1.0", "requests", "tqdm"]


def run(*cmd: str, cwd: pathlib.Path | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=cwd)


def patch_setup(src: pathlib.Path) -> None:
    setup = src / "setup.py"
    text = setup.read_text()
    # Always cythonize from the .pyx sources (the shipped .c files do not compile on 3.11).
    text = text.replace(
        "use_cython = 'develop' in sys.argv or 'build_ext' in sys.argv", "use_cython = True"
    )
    text = re.sub(
        r"install_requires=\[.*?\],",
        "install_requires=" + repr(CORE_REQUIRES) + ",",
        text,
        flags=re.S,
    )
    text = text.replace("setup_requires=['cython>=0.28.5', ],", "")
    # distutils is gone from Python 3.12, and its `setup` was never called here
    text = text.replace("from distutils.core import setup\n", "")
    setup.write_text(text)
    for stale in (src / "learn2learn" / "data").glob("*.c"):
        stale.unlink()
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61", "wheel", "cython>=3"]\n'
        'build-backend = "setuptools.build_meta"\n'
    )


def patch_init(src: pathlib.Path) -> None:
    init = src / "learn2learn" / "__init__.py"
    text = init.read_text()
    for optional in ("gym", "text", "vision"):
        text = text.replace(
            f"from . import {optional}\n",
            f"try:  # needs an optional dependency (torchvision / gym), missing or of another age\n"
            f"    from . import {optional}\nexcept Exception:\n    pass\n",
        )
    init.write_text(text)


def main(out_dir: str, sdist: str | None = None, find_links: str | None = None) -> None:
    out = pathlib.Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if list(out.glob(f"learn2learn-{VERSION}-*.whl")):
        print(f"learn2learn {VERSION} wheel already in {out}")
        return
    offline = ["--no-index", "--find-links", str(pathlib.Path(find_links).resolve())] if find_links else []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = pathlib.Path(tmp)
        archive = pathlib.Path(sdist) if sdist else tmpdir / f"learn2learn-{VERSION}.tar.gz"
        if not sdist:
            run(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "learn2learn",
                f"learn2learn=={VERSION}", "-d", str(tmpdir))
        with tarfile.open(archive) as tar:
            tar.extractall(tmpdir, filter="data")
        src = tmpdir / f"learn2learn-{VERSION}"
        patch_setup(src)
        patch_init(src)
        run(sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "-w", str(out), str(src))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="folder the wheel is written to")
    parser.add_argument("--sdist", help="learn2learn-0.2.0.tar.gz already downloaded (else pip downloads it)")
    parser.add_argument("--find-links", help="build requirements as wheels here; no package index is read")
    args = parser.parse_args()
    main(args.out_dir, args.sdist, args.find_links)
