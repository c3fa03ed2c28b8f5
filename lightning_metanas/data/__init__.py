"""Few-shot task distributions (Omniglot, synthetic) and their Lightning data module."""

from .errors import DataError, DataNotFoundError
from .omniglot import LabelledImages, load_omniglot, omniglot_split, split_class_ids
from .synthetic import make_synthetic, synthetic_split
from .transforms import RandomClassRotation90, rotate_sample
from .episodic import (
    EpisodicDataModule,
    EpisodicTaskDataset,
    EpochTaskSampler,
    Task,
    split_task,
    task_seed,
)

__all__ = [
    "DataError",
    "DataNotFoundError",
    "EpisodicDataModule",
    "EpisodicTaskDataset",
    "EpochTaskSampler",
    "LabelledImages",
    "RandomClassRotation90",
    "Task",
    "load_omniglot",
    "make_synthetic",
    "omniglot_split",
    "rotate_sample",
    "split_class_ids",
    "split_task",
    "synthetic_split",
    "task_seed",
]

from .folder import IMAGE_SUFFIXES, load_image_folder, split_image_folder  # noqa: E402

__all__ += ["IMAGE_SUFFIXES", "load_image_folder", "split_image_folder"]
