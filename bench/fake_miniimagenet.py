#!/usr/bin/env python
"""Write a fake few-shot image dataset in the layouts real ones come in (no download).

    python bench/fake_miniimagenet.py /tmp/fake_miniimagenet                 # miniImageNet's size
    python bench/fake_miniimagenet.py /tmp/fake_mini_csv --layout csv        # Ravi & Larochelle's CSVs
    python bench/fake_miniimagenet.py /tmp/tiny --classes 4 3 3 --per_class 8 --size 32

The default is miniImageNet's shape: 100 classes split 64 / 16 / 20, 600 images per class,
84x84 RGB JPEGs (60,000 files, about 0.2 GB), class folders named like ImageNet synsets
(``n00000000``) and files like the Ravi & Larochelle CSVs' (``n0000000000000001.jpg``).
``--layout folders`` writes ``out/{train,val,test}/<class>/<image>``; ``--layout csv`` writes
``out/images/<image>`` and ``out/{train,val,test}.csv`` (``filename,label``).

Each class is a smooth random colour field; its images are that field shifted by a few
pixels, rescaled in brightness and with pixel noise, so that the classes can be told apart
from a few examples (a meta-learner has something to learn) and every file differs. The same
arguments write the same files (seeded). The tests use ``write_fake_dataset`` for their small
RGB datasets.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")


def _class_images(seed: int, count: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size + 8, size + 8), Image.BICUBIC), dtype=np.float32)
    images = []
    for _ in range(count):
        dy, dx = rng.integers(0, 9, size=2)
        pixels = field[dy : dy + size, dx : dx + size] * rng.uniform(0.8, 1.2)
        pixels = pixels + rng.normal(0, 12, size=pixels.shape)
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return images


def write_fake_dataset(
    out: Path,
    classes: Sequence[int] = (64, 16, 20),
    per_class: int = 600,
    size: int = 84,
    layout: str = "folders",
    suffix: str = ".jpg",
    seed: int = 0,
    workers: int = 4,
) -> Path:
    """Write ``classes[i]`` classes of ``per_class`` images to split ``SPLITS[i]`` of ``out``
    in ``layout`` (``folders`` or ``csv``); returns ``out``."""
    if layout not in ("folders", "csv"):
        raise ValueError(f"layout must be 'folders' or 'csv', got {layout!r}")
    out = Path(out)
    jobs = []
    label = 0
    for split, n in zip(SPLITS, classes):
        rows = []
        for _ in range(n):
            wnid = f"n{label:08d}"
            folder = out / "images" if layout == "csv" else out / split / wnid
            names = [f"{wnid}{i + 1:08d}{suffix}" for i in range(per_class)]
            jobs.append((seed * 100_003 + label, folder, names))
            rows += [(name, wnid) for name in names]
            label += 1
        if layout == "csv":
            out.mkdir(parents=True, exist_ok=True)
            with open(out / f"{split}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["filename", "label"])
                writer.writerows(rows)

    def write(job: tuple[int, Path, list[str]]) -> None:
        class_seed, folder, names = job
        folder.mkdir(parents=True, exist_ok=True)
        options = {"quality": 90} if suffix in (".jpg", ".jpeg") else {}
        for name, image in zip(names, _class_images(class_seed, len(names), size)):
            image.save(folder / name, **options)

    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while it encodes
        list(pool.map(write, jobs))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="Folder to write (outside the repository, e.g. /tmp/...).")
    parser.add_argument("--classes", type=int, nargs=3, default=[64, 16, 20], metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--per_class", type=int, default=600)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--layout", choices=("folders", "csv"), default="folders")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"error: {args.out} is not empty; give a new folder")
    started = time.perf_counter()
    write_fake_dataset(args.out, args.classes, args.per_class, args.size, args.layout, seed=args.seed)
    files = sum(args.classes) * args.per_class
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {files} images ({size / 1e9:.2f} GB) in {args.layout} layout to {args.out} in "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
