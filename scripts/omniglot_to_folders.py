#!/usr/bin/env python
"""Export Omniglot from its two zips to the split-folder layout, ``out/{train,val,test}/<class>/<image>``.

    python scripts/omniglot_to_folders.py --root data/omniglot --out runs/omniglot_folders
    python train.py --config configs/omniglot_5w1s.yaml --data.dataset=folder \\
        --data.root=runs/omniglot_folders --data.invert=true --data.normalize=false --data.rotations=true

The split is the zip path's (``omniglot_split(split_seed)``: 1100 / 100 / 423 characters) and
the drawings are copied byte for byte, so the folder path decodes the same images. A class
folder is named ``<position>-<zip folder>--<alphabet>--<character>``, the position in the
split's shuffled order first: the folder path orders a split's classes by name and task
sampling draws classes by position, so with the settings above it draws the same tasks as
``--data.dataset=omniglot`` for the same seeds (only the numbering 0..N-1 of a task's classes
may differ: learn2learn numbers them through a set of their dataset-wide ids).
``tests/test_datasets.py::test_folder_path_gives_the_zip_paths_images_split_and_tasks``
checks this on a trimmed copy.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_metanas.data.omniglot import list_omniglot, omniglot_split  # noqa: E402

SPLITS = ("train", "val", "test")


def folder_name(position: int, class_name: str) -> str:
    """``images_background/Korean/character09`` at position 7 -> ``0007-images_background--Korean--character09``."""
    return f"{position:04d}-" + class_name.replace("/", "--")


def class_name(folder: str) -> str:
    """The inverse of ``folder_name``: the zip path's class name."""
    return folder.split("-", 1)[1].replace("--", "/")


def export(root: Path, out: Path, split_seed: int = 0) -> Path:
    """Write every drawing of the zips in ``root`` to ``out``; returns ``out``."""
    listing = list_omniglot(root)
    splits = omniglot_split(split_seed, len(listing.class_names))
    with listing.reader() as read:
        for split, class_ids in zip(SPLITS, splits):
            for position, c in enumerate(class_ids):
                folder = out / split / folder_name(position, listing.class_names[c])
                folder.mkdir(parents=True, exist_ok=True)
                for member in listing.files[c]:
                    with open(folder / Path(member).name, "wb") as f:
                        shutil.copyfileobj(read(member), f)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT / "data/omniglot", help="Folder of the two zips.")
    parser.add_argument("--out", type=Path, required=True, help="Folder to write the split folders to.")
    parser.add_argument("--split_seed", type=int, default=0, help="data.split_seed of the zip path.")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"error: {args.out} is not empty; give a new folder")
    export(args.root, args.out, args.split_seed)
    print(f"exported {args.root} to {args.out}")


if __name__ == "__main__":
    main()
