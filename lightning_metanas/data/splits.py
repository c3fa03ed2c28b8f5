"""Class splits shared by every dataset: the three splits' names, a seeded shuffle-and-cut of
the class ids, proportional sizes for small datasets, and labels from class sizes."""
from __future__ import annotations

import random
from typing import Sequence

import torch

from .errors import DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")


def split_class_ids(
    num_classes: int, sizes: Sequence[int], seed: int = 0
) -> tuple[list[int], ...]:
    """Shuffle ``0..num_classes-1`` with ``random.Random(seed)`` and cut it into ``sizes``.

    Same mechanism as learn2learn's benchmark (shuffle, then cut in order), but with a private
    generator so the split does not depend on, or disturb, the global ``random`` state.
    """
    if sum(sizes) != num_classes or any(s < 1 for s in sizes):
        raise DataError(
            f"cannot split {num_classes} classes into splits of sizes {list(sizes)}: "
            "each split needs at least one class and the sizes must add up"
        )
    ids = list(range(num_classes))
    random.Random(seed).shuffle(ids)
    out, start = [], 0
    for size in sizes:
        out.append(ids[start : start + size])
        start += size
    return tuple(out)


def proportional_split_sizes(
    num_classes: int, fractions: Sequence[float]
) -> tuple[int, ...]:
    """Split sizes for ``num_classes`` in the given proportions; the first split takes the rest.

    Every split keeps at least one class, so small datasets still get validation/test classes.
    """
    rest = [max(1, round(num_classes * f)) for f in fractions[1:]]
    first = num_classes - sum(rest)
    if first < 1:
        raise DataError(
            f"{num_classes} classes are too few to split in proportions {list(fractions)}"
        )
    return (first, *rest)


def labels_from_sizes(sizes: Sequence[int]) -> torch.Tensor:
    """``[0]*sizes[0] + [1]*sizes[1] + ...``: the labels of images stored class by class."""
    return torch.arange(len(sizes)).repeat_interleave(torch.tensor(list(sizes), dtype=torch.long))
