"""A labelled image folder, ``root/<class>/<image>``, as ``LabelledImages``, and its split.

The task a user brings to ``adapt.py``: any number of classes, one sub-folder per class,
images as PNG, JPEG, BMP or GIF (the first frame). Images go through the pipeline of the
Omniglot loader (PIL, LANCZOS resize to ``image_size``, scaled to [0, 1]); ``invert=True``
stores ``1 - x``, the Omniglot convention (ink = 1, paper = 0) for dark-on-light drawings.

Nothing is skipped silently: a missing folder, a folder without class folders, a class with
fewer than two images (one is needed for training, one for validation), a file that is not
an image, or an image that does not decode stops with a ``DataError`` naming the folder or
file. Hidden files (``.DS_Store``, ...) are the one thing ignored.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightning_metanas.errors import require_int

from .errors import DataError, DataNotFoundError
from .omniglot import LabelledImages, PathLike

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_MODES = {1: "L", 3: "RGB"}


def list_image_folder(root: PathLike) -> list[tuple[str, list[Path]]]:
    """``(class name, image files)`` per class folder, both sorted by name; raises
    ``DataError`` for anything that does not fit the ``root/<class>/<image>`` layout."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataNotFoundError(f"image folder not found: {root.absolute()}")
    if not root.is_dir():
        raise DataError(f"image folder {root.absolute()} is a file, not a folder")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    class_dirs = [p for p in entries if p.is_dir()]
    if not class_dirs:
        loose = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        hint = f" (it holds {len(loose)} images directly: put each class in its own folder)" if loose else ""
        raise DataError(
            f"image folder {root.absolute()} has no class folders{hint}; expected the layout "
            "root/<class>/<image>"
        )
    classes = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if not p.name.startswith("."))
        for path in files:
            if path.is_dir():
                raise DataError(
                    f"{path.absolute()} is a folder inside class folder {class_dir.name!r}; "
                    "expected the layout root/<class>/<image> (one level of class folders)"
                )
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(
                    f"{path.absolute()} is not an image file (allowed suffixes: "
                    f"{', '.join(IMAGE_SUFFIXES)}); move it out of the class folder"
                )
        if len(files) < 2:
            raise DataError(
                f"class folder {class_dir.absolute()} has {len(files)} image"
                f"{'' if len(files) == 1 else 's'}; every class needs at least 2 (one for "
                "training, one for validation)"
            )
        classes.append((class_dir.name, files))
    return classes


def decode_image(path: Path, image_size: int, channels: int = 1, invert: bool = False) -> np.ndarray:
    """One image as float32 ``[channels, image_size, image_size]`` in [0, 1]."""
    try:
        with Image.open(path) as img:
            img.seek(0)  # the first frame of an animated GIF
            converted = img.convert(_MODES[channels])
            if converted.size != (image_size, image_size):
                converted = converted.resize((image_size, image_size), Image.LANCZOS)
            pixels = np.asarray(converted, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {path.absolute()}: {err}") from None
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return 1.0 - pixels if invert else pixels


def load_image_folder(
    root: PathLike, image_size: int = 28, channels: int = 1, invert: bool = False
) -> LabelledImages:
    """Every image of ``root/<class>/<image>`` as ``[N, channels, image_size, image_size]``
    floats in [0, 1] with labels ``0..C-1`` (classes in folder-name order, images in file-name
    order within a class), resized with LANCZOS; ``channels`` 1 reads grayscale ("L"), 3 RGB.
    ``invert`` stores ``1 - x`` (the Omniglot pipeline's ink = 1 for dark-on-light images)."""
    require_int("image_size", image_size, 1, DataError)
    if channels not in _MODES:
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    classes = list_image_folder(root)
    total = sum(len(files) for _, files in classes)
    images = np.empty((total, channels, image_size, image_size), dtype=np.float32)
    labels = np.empty(total, dtype=np.int64)
    row = 0
    for label, (_, files) in enumerate(classes):
        for path in files:
            images[row] = decode_image(path, image_size, channels, invert)
            labels[row] = label
            row += 1
    return LabelledImages(torch.from_numpy(images), torch.from_numpy(labels), [n for n, _ in classes])


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
        random.Random(f"{seed}/{name}").shuffle(members)
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val_idx.extend(sorted(members[:n_val]))
        train_idx.extend(sorted(members[n_val:]))

    def subset(index: list[int]) -> LabelledImages:
        idx = torch.tensor(index, dtype=torch.long)
        return LabelledImages(data.images[idx], data.labels[idx], list(data.class_names))

    return subset(train_idx), subset(val_idx)
