#!/usr/bin/env python3
"""Build a learn2learn 0.2.0 wheel that installs cleanly on Python 3.11 with a CPU torch.

Why this exists: learn2learn 0.2.0 (its last release) ships only a source distribution whose
Cython-generated C files predate Python 3.11 and fail to compile, and it declares torchvision,
gym, gsutil, scipy and qpth as dependencies. torchvision from PyPI breaks beside the CPU torch
wheel (and drags in a CUDA torch), and the core modules this project uses
(`algorithms`, `data`, `nn`, `optim`, `utils`) import none of them. So we take the sdist,
regenerate the C files with Cython 3, trim install_requires to what the core really imports,
make the `vision`/`gym`/`text` sub-packages optional, and build a wheel into OUT_DIR.

Usage: python scripts/build_learn2learn.py OUT_DIR
Then:  pip install --find-links OUT_DIR learn2learn==0.2.0
"""
from __future__ import annotations

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
            f"try:  # needs an optional dependency (torchvision / gym)\n"
            f"    from . import {optional}\nexcept ImportError:\n    pass\n",
        )
    init.write_text(text)


def main(out_dir: str) -> None:
    out = pathlib.Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if list(out.glob(f"learn2learn-{VERSION}-*.whl")):
        print(f"learn2learn {VERSION} wheel already in {out}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = pathlib.Path(tmp)
        run(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "learn2learn",
            f"learn2learn=={VERSION}", "-d", str(tmpdir))
        with tarfile.open(tmpdir / f"learn2learn-{VERSION}.tar.gz") as tar:
            tar.extractall(tmpdir, filter="data")
        src = tmpdir / f"learn2learn-{VERSION}"
        patch_setup(src)
        patch_init(src)
        run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
