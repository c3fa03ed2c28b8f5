"""Per-class rotations by multiples of 90 degrees, as a learn2learn task transform.

Rotating a whole class by a random quarter turn per task is how learn2learn's Omniglot
benchmark augments characters (``RandomClassRotation(dataset, [0, 90, 180, 270])``). Its
0.2.0 implementation has two problems here: it needs torchvision, and its per-sample
``lambda x: (rotation(x[0]), x[1])`` looks ``rotation`` up when the sample is *loaded*, after
the loop has finished, so every sample of a task gets the last class's rotation. This version
binds each class's turn count with ``functools.partial`` and rotates with ``torch.rot90``,
which is exact (no interpolation) for square images.
"""

from __future__ import annotations

import functools
import random
from typing import Any, Sequence

import torch
from learn2learn.data.transforms import TaskTransform


def rotate_sample(sample: Sequence[Any], k: int) -> tuple[Any, ...]:
    """Rotate the image of an ``(image, label, ...)`` sample by ``k`` quarter turns."""
    image = sample[0]
    if k % 4:
        image = torch.rot90(image, k, dims=(-2, -1))
    return (image, *sample[1:])


class RandomClassRotation90(TaskTransform):
    """Rotate all images of each class in a task by the same random multiple of 90 degrees.

    The turn count is drawn from Python's global ``random`` (as every learn2learn task
    transform does), once per class per task, so seeding ``random`` before
    ``TaskDataset.sample()`` makes the rotations reproducible along with the rest of the task.
    Place it after ``LoadData`` (it rotates loaded images) and before ``RemapLabels`` (it
    reads the original class through ``dataset.indices_to_labels``, which works either way).

    Args:
        dataset: the ``MetaDataset`` the task descriptions index into.
        quarter_turns: the allowed ``k`` of ``torch.rot90``; default all four orientations.
    """

    def __init__(self, dataset: Any, quarter_turns: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__(dataset)
        if not quarter_turns:
            raise ValueError("quarter_turns must not be empty")
        self.quarter_turns = tuple(int(k) % 4 for k in quarter_turns)

    def __call__(self, task_description: list | None) -> list:
        if task_description is None:
            task_description = self.new_task()
        turns: dict[int, int] = {}
        for description in task_description:
            cls = self.dataset.indices_to_labels[description.index]
            if cls not in turns:
                turns[cls] = random.choice(self.quarter_turns)
            description.transforms.append(functools.partial(rotate_sample, k=turns[cls]))
        return task_description
