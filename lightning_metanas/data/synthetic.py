"""A tiny, instantly generated task distribution for tests and smoke runs.

Each class is a random blocky binary prototype; its samples are the prototype plus a little
Gaussian noise. Classes are therefore easy to tell apart after one look at the support set,
so a meta-learner's accuracy should climb within a few steps: a run that does not learn here
has a bug, not a hard problem. Nothing is read from disk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_metanas.errors import require_int

from .errors import DataError
from .images import LabelledImages
from .splits import proportional_split_sizes, split_class_ids

SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)
NUM_CLASSES = 60
PER_CLASS = 20
SPLIT_SIZES = proportional_split_sizes(NUM_CLASSES, SPLIT_FRACTIONS)  # 36/12/12


def make_synthetic(
    num_classes: int = NUM_CLASSES,
    per_class: int = PER_CLASS,
    image_size: int = 28,
    channels: int = 1,
    noise: float = 0.1,
    flip: float = 0.2,
    seed: int = 0,
) -> LabelledImages:
    """``num_classes * per_class`` images ``[C, S, S]`` in [0, 1], grouped by class.

    Prototypes are drawn on a coarse grid (at most 7x7) and upsampled, so they survive a
    strided conv net and stay distinct under the 90-degree class rotations.
    """
    for name, value in (("num_classes", num_classes), ("per_class", per_class),
                        ("image_size", image_size), ("channels", channels)):
        require_int(f"synthetic {name}", value, 1, DataError)
    if noise < 0:
        raise DataError(f"synthetic noise must be >= 0, got {noise!r}")
    generator = torch.Generator().manual_seed(seed)  # the data set is defined by this integer seed
    grid = min(7, image_size)
    coarse = (torch.rand(num_classes, channels, grid, grid, generator=generator) > 0.5).float()
    # Each sample flips a share of its prototype's cells: one-shot tasks are then learnable but
    # not solved at a glance, so accuracies (and search scores) differ between learners.
    flips = torch.rand(num_classes * per_class, channels, grid, grid, generator=generator) < flip
    samples = (coarse.repeat_interleave(per_class, dim=0) + flips.float()) % 2
    images = F.interpolate(samples, size=(image_size, image_size), mode="nearest")
    images = images + noise * torch.randn(images.shape, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    names = [f"synthetic/class{c:03d}" for c in range(num_classes)]
    return LabelledImages(images.clamp_(0.0, 1.0), labels, names)


def synthetic_split(
    split_seed: int = 0, num_classes: int = NUM_CLASSES
) -> tuple[list[int], list[int], list[int]]:
    """Train / validation / test class ids in 60% / 20% / 20% proportions (36/12/12 of 60)."""
    sizes = proportional_split_sizes(num_classes, SPLIT_FRACTIONS)
    train, val, test = split_class_ids(num_classes, sizes, split_seed)
    return train, val, test
