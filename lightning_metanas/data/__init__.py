"""Few-shot task distributions (Omniglot, image datasets on disk, synthetic) and their Lightning
data module. ``registry.DATASETS`` lists them; ``images.py`` decodes and caches the images."""

from .errors import DataError, DataNotFoundError
from .image_cache import decode_images
from .images import ImageStore, LabelledImages, Listing
from .omniglot import list_omniglot, load_omniglot, omniglot_split
from .splits import SPLITS, labels_from_sizes, split_class_ids
from .folder import (
    IMAGE_SUFFIXES,
    list_image_folder,
    load_image_folder,
    read_split_layout,
    split_image_folder,
)
from .synthetic import make_synthetic, synthetic_split
from .transforms import RandomClassRotation90, rotate_sample
from .registry import DATASETS, DatasetSpec
from .episodic import (
    EpisodicDataModule,
    EpisodicTaskDataset,
    EpochTaskSampler,
    Task,
    check_task_settings,
    split_task,
)

__all__ = [
    "DATASETS",
    "DataError",
    "DataNotFoundError",
    "DatasetSpec",
    "EpisodicDataModule",
    "EpisodicTaskDataset",
    "EpochTaskSampler",
    "IMAGE_SUFFIXES",
    "ImageStore",
    "LabelledImages",
    "Listing",
    "RandomClassRotation90",
    "SPLITS",
    "Task",
    "check_task_settings",
    "decode_images",
    "list_image_folder",
    "labels_from_sizes",
    "list_omniglot",
    "load_image_folder",
    "load_omniglot",
    "make_synthetic",
    "omniglot_split",
    "read_split_layout",
    "rotate_sample",
    "split_class_ids",
    "split_image_folder",
    "split_task",
    "synthetic_split",
]
