"""Image datasets in the layouts people have on disk, read as ``Listing``s (see ``images.py``).

* A labelled image folder, ``root/<class>/<image>``: the task ``adapt.py`` adapts to, and the
  building block of the next layout.
* Split folders, ``root/{train,val,test}/<class>/<image>``: how miniImageNet, tieredImageNet,
  CIFAR-FS and FC100 are usually converted.
* The Ravi & Larochelle miniImageNet layout: ``root/images/<file>`` with
  ``root/{train,val,test}.csv``, each a header ``filename,label`` and one row per image.

Classes are ordered by name within a split (train's first, then val's, then test's), images
by file name within a class, so labels are the same on every machine. Images are PNG, JPEG,
BMP or GIF (the first frame). Nothing is skipped silently: a missing split folder or CSV, a
CSV row naming a missing file, a class in two splits, an empty folder, a file that is not an
image stops with a ``DataError`` naming the file or folder. Hidden files (``.DS_Store``, the
``.cache`` folder) are the one thing ignored.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from lightning_metanas import seeding
from lightning_metanas.errors import require_int

from .errors import DataError, DataNotFoundError
from .image_cache import decode_images
from .images import LabelledImages, Listing, PathLike, fingerprint_files
from .splits import SPLITS, labels_from_sizes

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
LAYOUTS = (
    "split folders root/{train,val,test}/<class>/<image>, or the CSV layout root/images/<file> "
    "with root/{train,val,test}.csv (header filename,label)"
)
ROOT_HINT = f"; set --data.root (data.root in a config file) to the folder that holds {LAYOUTS}"


def _not_an_image(path: Path, where: str) -> DataError:
    return DataError(
        f"{path} is not an image file (allowed suffixes: {', '.join(IMAGE_SUFFIXES)}); "
        f"{where}"
    )


def _is_dir(entry: os.DirEntry) -> bool:
    """``entry.is_dir()``, with a link that cannot be followed (to itself, in a loop) named."""
    try:
        return entry.is_dir()
    except OSError as err:
        raise DataError(f"image {entry.path} is a symbolic link that cannot be followed ({err.strerror}); "
                        "remove or replace it") from None


def list_image_folder(root: PathLike, min_images: int = 2) -> list[tuple[str, list[Path]]]:
    """``(class name, image files)`` per class folder of ``root/<class>/<image>``, both sorted
    by name; raises ``DataError`` for anything that does not fit the layout, and for a class
    with fewer than ``min_images`` images (2 by default: one to train on, one to validate)."""
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise DataNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"image folder {root} is a file, not a folder")
    entries = sorted((e for e in os.scandir(root) if not e.name.startswith(".")), key=lambda e: e.name)
    class_dirs = [Path(e.path) for e in entries if _is_dir(e)]
    if not class_dirs:
        loose = [e for e in entries if Path(e.name).suffix.lower() in IMAGE_SUFFIXES]
        hint = f" (it holds {len(loose)} images directly: put each class in its own folder)" if loose else ""
        raise DataError(
            f"image folder {root} has no class folders{hint}; expected the layout "
            "root/<class>/<image>"
        )
    classes = []
    for class_dir in class_dirs:
        files = sorted((e for e in os.scandir(class_dir) if not e.name.startswith(".")), key=lambda e: e.name)
        for entry in files:
            if _is_dir(entry):
                raise DataError(
                    f"{entry.path} is a folder inside class folder {class_dir.name!r}; expected "
                    "the layout root/<class>/<image> (one level of class folders)"
                )
            if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                raise _not_an_image(Path(entry.path), "move it out of the class folder")
        if not files:
            raise DataError(f"class folder {class_dir} is empty; remove it or add its images")
        if len(files) < min_images:
            raise DataError(
                f"class folder {class_dir} has {len(files)} image"
                f"{'' if len(files) == 1 else 's'}; every class needs at least {min_images} (one "
                "for training, one for validation)"
            )
        classes.append((class_dir.name, [Path(e.path) for e in files]))
    return classes


def image_folder_listing(root: PathLike, min_images: int = 2) -> Listing:
    """A labelled image folder ``root/<class>/<image>`` as a ``Listing`` (no split)."""
    classes = list_image_folder(root, min_images)
    paths = [p for _, files in classes for p in files]
    root = Path(root).expanduser().absolute()
    return Listing("image folder", root, [name for name, _ in classes],
                   [[str(p) for p in files] for _, files in classes], fingerprint_files(paths, root))


def read_split_folders(root: Path, title: str) -> Listing:
    """``root/{train,val,test}/<class>/<image>``; a class name may be in one split only."""
    names: list[str] = []
    files: list[list[Path]] = []
    splits: tuple[list[int], list[int], list[int]] = ([], [], [])
    folder_of: dict[str, Path] = {}
    for ids, split in zip(splits, SPLITS):
        folder = root / split
        if not folder.is_dir():
            raise DataNotFoundError(
                f"missing split folder {folder} (the split-folder layout is "
                "root/{train,val,test}/<class>/<image>)"
            )
        for name, paths in list_image_folder(folder, min_images=1):
            if name in folder_of:
                raise DataError(
                    f"class {name!r} is in two splits, {folder_of[name]} and {folder / name}; "
                    "every class belongs to one split"
                )
            folder_of[name] = folder / name
            ids.append(len(names))
            names.append(name)
            files.append(paths)
    fingerprint = fingerprint_files([p for f in files for p in f], root)
    return Listing(title, root, names, [[str(p) for p in f] for f in files], fingerprint, splits)


def read_csv_splits(root: Path, title: str) -> Listing:
    """``root/images/<file>`` with ``root/{train,val,test}.csv`` (``filename,label``)."""
    images = root / "images"
    if not images.is_dir():
        raise DataNotFoundError(
            f"missing image folder {images} (the CSV layout is root/images/<file> with "
            "root/{train,val,test}.csv)"
        )
    digest = hashlib.sha256()
    names: list[str] = []
    files: list[list[str]] = []
    splits: tuple[list[int], list[int], list[int]] = ([], [], [])
    split_of: dict[str, str] = {}  # class -> where it was first seen
    row_of: dict[str, str] = {}  # file -> where it was first listed
    for ids, split in zip(splits, SPLITS):
        path = root / f"{split}.csv"
        if not path.is_file():
            raise DataNotFoundError(
                f"missing split file {path} (the CSV layout is root/images/<file> with "
                "root/{train,val,test}.csv, each with the header filename,label)"
            )
        classes = _read_csv(path, images, split_of, row_of, digest)
        for label in sorted(classes):
            ids.append(len(names))
            names.append(label)
            files.append(sorted(classes[label]))
    return Listing(title, root, names, files, digest.hexdigest(), splits)


def _read_csv(
    path: Path, images: Path, split_of: dict[str, str], row_of: dict[str, str], digest
) -> dict[str, list[str]]:
    """One split's CSV: ``{label: [image paths]}``, each row checked against the folder."""
    text = path.read_bytes()
    digest.update(path.name.encode() + b"\0" + text)
    try:
        rows = list(csv.reader(io.StringIO(text.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path} is not a readable CSV file ({err})") from None
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        found = ",".join(rows[0]) if rows else "nothing"
        raise DataError(f"{path}: the first line must be the header filename,label, found {found!r}")
    classes: dict[str, list[str]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        where = f"{path} line {number}"
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{where}: expected filename,label, found {','.join(row)!r}")
        name, label = row[0].strip(), row[1].strip()
        image = images / name
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise _not_an_image(image, f"named by {where}")
        try:
            stat = image.stat()
        except OSError:
            raise DataNotFoundError(f"{where} names {image}, which does not exist") from None
        if name in row_of:
            raise DataError(f"{where} lists {name} again (first listed at {row_of[name]})")
        row_of[name] = where
        first = split_of.setdefault(label, where)
        if first != where and not first.startswith(f"{path} "):
            raise DataError(
                f"class {label!r} is in two splits, at {first} and at {where}; every class "
                "belongs to one split"
            )
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        classes.setdefault(label, []).append(str(image))
    if not classes:
        raise DataError(f"{path} lists no images (only its header)")
    return classes


def read_split_layout(root: PathLike, title: str) -> Listing:
    """Split folders or the CSV layout, whichever ``root`` holds."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DataNotFoundError(f"{title} directory not found: {root}{ROOT_HINT}")
    tables = [f"{s}.csv" for s in SPLITS if (root / f"{s}.csv").exists()]
    folders = [f"{s}/" for s in SPLITS if (root / s).is_dir()]
    if tables and folders:
        raise DataError(
            f"{root} holds both layouts ({', '.join(folders + tables)}); keep one of {LAYOUTS}"
        )
    if tables:
        return read_csv_splits(root, title)
    if folders:
        return read_split_folders(root, title)
    raise DataError(f"--data.root {root} holds neither layout of an image dataset; expected {LAYOUTS}")


def load_image_folder(
    root: PathLike,
    image_size: int = 28,
    channels: Optional[int] = 1,
    invert: bool = False,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> LabelledImages:
    """Every image of ``root/<class>/<image>`` as float ``[N, C, image_size, image_size]`` in
    [0, 1] with labels ``0..C-1``, through the same decoder as the meta-training datasets (in
    memory: a task is small). ``channels`` 1 reads grayscale, 3 RGB, ``None`` as the images
    are; ``invert`` stores ``1 - x`` (Omniglot's ink = 1); ``mean``/``std`` normalise per
    channel (a checkpoint's, so the task looks like its meta-training data)."""
    require_int("image_size", image_size, 1, DataError)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    listing = image_folder_listing(root)
    store = decode_images(listing, "folder", image_size, channels, invert)
    if mean is not None and std is not None:
        store = store.normalized(mean, std)
    return LabelledImages(store.tensor(), labels_from_sizes(listing.class_sizes), listing.class_names)


def split_image_folder(
    data: LabelledImages, val_fraction: float = 0.25, seed: int = 0
) -> tuple[LabelledImages, LabelledImages]:
    """Per-class train / validation split: each class's images are shuffled with a generator
    seeded by ``(seed, class name)`` (so adding a class leaves the others' splits alone) and
    ``round(n * val_fraction)`` of them, at least 1 and at most ``n - 1``, go to validation.
    Deterministic: the same data, fraction and seed always give the same split."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (
        0.0 < val_fraction < 1.0
    ):
        raise DataError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label, name in enumerate(data.class_names):
        members = torch.nonzero(data.labels == label).flatten().tolist()
        if len(members) < 2:
            raise DataError(
                f"class {name!r} has {len(members)} image(s); every class needs at least 2 "
                "(one for training, one for validation)"
            )
        seeding.rng(seed, name).shuffle(members)
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val_idx.extend(sorted(members[:n_val]))
        train_idx.extend(sorted(members[n_val:]))

    def subset(index: list[int]) -> LabelledImages:
        idx = torch.tensor(index, dtype=torch.long)
        return LabelledImages(data.images[idx], data.labels[idx], list(data.class_names))

    return subset(train_idx), subset(val_idx)
