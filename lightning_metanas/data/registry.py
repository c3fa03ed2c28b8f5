"""The registry of datasets: what ``--data.dataset`` can name. A new dataset is one entry here.

Like the operation registry (``ops.OPERATIONS``), an entry says everything the data module
needs: where the images come from (a ``Listing`` of files, decoded once into a cache, or a
generator), how the classes are split when the files do not say, and the dataset's
conventions, which the ``data.*`` settings left at ``null`` take: channels, inversion,
per-channel normalisation, class rotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

from . import folder, omniglot, synthetic
from .images import LabelledImages, Listing, Splits


@dataclass(frozen=True)
class DatasetSpec:
    """One task distribution.

    Args:
        title: its name in messages.
        read: ``root -> Listing``, its files; ``None`` for a generated dataset.
        generate: ``(image_size, seed, channels) -> LabelledImages``, for a generated dataset.
        split: ``(split_seed, num_classes) -> class ids of train, val, test`` when the files
            do not split the classes themselves.
        layout: ``(classes per split, images per class)`` when known before anything is read,
            so that impossible settings fail before a file is opened.
        root_hint: what ``data.root`` must hold, appended to "<title> directory not found".
        channels: 1 or 3; ``None``: as the images are (3 if any has colour).
        invert: store ``1 - x`` (Omniglot's ink = 1, paper = 0).
        normalize: map each channel to zero mean and unit variance over the train split.
        rotations: rotate every class of a task by its own random multiple of 90 degrees.
    """

    title: str
    read: Optional[Callable[[Path], Listing]] = None
    generate: Optional[Callable[[int, int, int], LabelledImages]] = None
    split: Optional[Callable[[int, int], Splits]] = None
    layout: Optional[tuple[tuple[int, ...], int]] = None
    root_hint: str = folder.ROOT_HINT
    channels: Optional[int] = None
    invert: bool = False
    normalize: bool = True
    rotations: bool = False


def split_layout(title: str) -> DatasetSpec:
    """A dataset in split folders or the CSV layout (``folder.read_split_layout``), with
    ImageNet-style conventions: channels as the images are, per-channel normalisation, no
    rotations."""
    return DatasetSpec(title, read=partial(folder.read_split_layout, title=title))


def _synthetic(image_size: int, seed: int, channels: int) -> LabelledImages:
    return synthetic.make_synthetic(image_size=image_size, channels=channels, seed=seed)


DATASETS: dict[str, DatasetSpec] = {
    "omniglot": DatasetSpec(
        "Omniglot", read=omniglot.list_omniglot, split=omniglot.omniglot_split,
        layout=(omniglot.SPLIT_SIZES, omniglot.DRAWINGS_PER_CLASS), root_hint=omniglot.ROOT_HINT,
        channels=1, invert=True, normalize=False, rotations=True,
    ),
    "synthetic": DatasetSpec(
        "synthetic", generate=_synthetic, split=synthetic.synthetic_split,
        layout=(synthetic.SPLIT_SIZES, synthetic.PER_CLASS), channels=1, normalize=False,
        rotations=True,
    ),
    "folder": split_layout("image dataset"),  # any dataset of your own in one of the layouts
    "miniimagenet": split_layout("miniImageNet"),
    "tieredimagenet": split_layout("tieredImageNet"),
    "cifarfs": split_layout("CIFAR-FS"),
    "fc100": split_layout("FC100"),
}
"""Name -> ``DatasetSpec``, in the order ``--data.dataset`` lists them."""
