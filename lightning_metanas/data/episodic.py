"""Few-shot episodes for Lightning: a map-style task dataset and the ``EpisodicDataModule``.

Tasks are drawn with learn2learn's ``Taskset`` (``NWays``, ``KShots``, ``LoadData``, class
rotations, ``RemapLabels``, ``ConsecutiveLabels``). learn2learn draws from Python's global
``random``, which makes its tasks depend on whatever else consumed random numbers, on the
worker process, and on nothing rank-specific under DDP. Here task ``i`` is instead drawn after
seeding ``random`` with a number derived from ``(seed, split, rank, epoch, i)`` (and the
global state is restored afterwards), so:

* validation and test task ``i`` is the same task in every run, epoch and process;
* training tasks change every epoch and differ between DDP ranks;
* a resumed run draws the tasks the uninterrupted run would have drawn.

The training epoch reaches the dataset through the sampler, which yields ``(epoch, i)`` keys:
Lightning calls ``set_epoch`` on it at the start of every epoch; under DDP (where Lightning
wraps it and the call does not reach it) or in a plain loop it counts its own iterations. The
counter is part of the data module's ``state_dict`` and so of every checkpoint.
"""

from __future__ import annotations

import inspect

import hashlib
import random
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Union

import learn2learn as l2l
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_metanas.errors import require_int

from .errors import DataError, DataNotFoundError
from .omniglot import (
    DRAWINGS_PER_CLASS,
    SPLIT_SIZES,
    ZIP_NAMES,
    LabelledImages,
    load_omniglot,
    omniglot_split,
    proportional_split_sizes,
)
from .synthetic import NUM_CLASSES as SYNTHETIC_CLASSES
from .synthetic import PER_CLASS as SYNTHETIC_PER_CLASS
from .synthetic import SPLIT_FRACTIONS as SYNTHETIC_FRACTIONS
from .synthetic import make_synthetic, synthetic_split
from .transforms import RandomClassRotation90

DATASETS: tuple[str, ...] = ("omniglot", "synthetic")
SPLITS: tuple[str, ...] = ("train", "val", "test")
TaskKey = Union[int, tuple[int, int]]


class Task(NamedTuple):
    """One episode; collated by the DataLoader into the same tuple with a leading task axis."""

    support_x: torch.Tensor  # [ways*shots, C, H, W]
    support_y: torch.Tensor  # [ways*shots] in 0..ways-1
    query_x: torch.Tensor  # [ways*queries, C, H, W]
    query_y: torch.Tensor  # [ways*queries]


def current_rank() -> int:
    """The DDP rank when a process group is up, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def task_seed(seed: int, split: str, rank: int, epoch: int, index: int) -> int:
    """A well-mixed 64-bit seed for one task; hashing avoids collisions like (1, 10) vs (11, 0)."""
    key = f"{seed}/{split}/{rank}/{epoch}/{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def split_task(
    x: torch.Tensor, y: torch.Tensor, ways: int, shots: int, queries: int
) -> Task:
    """Support = the first ``shots`` samples of each class, query = the rest, class by class."""
    per_class = shots + queries
    counts = torch.bincount(y, minlength=ways)
    if y.numel() != ways * per_class or counts.numel() != ways or bool((counts != per_class).any()):
        raise DataError(
            f"sampled task has class sizes {counts.tolist()}, expected {ways} classes of "
            f"{per_class} (shots + queries) samples"
        )
    order = torch.argsort(y, stable=True)
    x = x[order].reshape(ways, per_class, *x.shape[1:])
    labels = torch.arange(ways, dtype=torch.long)
    return Task(
        x[:, :shots].reshape(ways * shots, *x.shape[2:]),
        labels.repeat_interleave(shots),
        x[:, shots:].reshape(ways * queries, *x.shape[2:]),
        labels.repeat_interleave(queries),
    )


class _SplitImages(Dataset):
    """The images of one split, by position, without copying them out of the full tensor."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int], positions: Sequence[int]):
        self.images = images
        self.labels = labels
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        p = self.positions[i]
        return self.images[p], self.labels[p]


class EpisodicTaskDataset(Dataset):
    """``num_tasks`` few-shot tasks over the classes ``class_ids`` of ``data``.

    Item ``i`` (or key ``(epoch, i)``) is a ``Task``, drawn deterministically from
    ``(seed, split, rank, epoch, i)``; an integer index uses the epoch set by ``set_epoch``.
    The learn2learn taskset is built lazily and left out of pickles, so the dataset can be
    sent to spawned DataLoader workers or DDP processes.

    Raises:
        DataError: when the split has fewer than ``ways`` classes or a class has fewer than
            ``shots + queries`` images (naming the class).
    """

    def __init__(
        self,
        data: LabelledImages,
        class_ids: Sequence[int],
        *,
        ways: int,
        shots: int,
        queries: int,
        num_tasks: int,
        rotations: bool = True,
        seed: int = 0,
        split: str = "train",
        rank: int = 0,
        dataset_name: str = "dataset",
    ) -> None:
        self.ways, self.shots, self.queries = ways, shots, queries
        self.num_tasks, self.rotations = num_tasks, rotations
        self.seed, self.split, self.rank, self.epoch = seed, split, rank, 0
        self.class_ids = [int(c) for c in class_ids]
        self._images = data.images
        self._labels: list[int] = data.labels.tolist()
        self._positions = _positions_by_class(data.labels, self.class_ids)
        self._check(data, dataset_name)
        self._taskset: Any = None

    def _check(self, data: LabelledImages, dataset_name: str) -> None:
        if self.ways > len(self.class_ids):
            raise DataError(
                f"data.ways={self.ways} is more than the {len(self.class_ids)} classes of the "
                f"{dataset_name} {self.split} split; use data.ways <= {len(self.class_ids)}"
            )
        needed = self.shots + self.queries
        for c in self.class_ids:
            have = len(self._positions[c])
            if have < needed:
                raise DataError(
                    f"{dataset_name} class {data.class_names[c]!r} (label {c}, {self.split} "
                    f"split) has {have} images, fewer than data.shots + data.queries = "
                    f"{self.shots} + {self.queries} = {needed}"
                )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_taskset"] = None  # Cython transforms; rebuilt on first use
        return state

    @property
    def taskset(self) -> Any:
        if self._taskset is None:
            self._taskset = self._build_taskset()
        return self._taskset

    def _build_taskset(self) -> Any:
        flat: list[int] = []
        labels_to_indices: dict[int, list[int]] = {}
        for c in self.class_ids:
            start = len(flat)
            flat.extend(self._positions[c])
            labels_to_indices[c] = list(range(start, len(flat)))
        meta = l2l.data.MetaDataset(
            _SplitImages(self._images, self._labels, flat), labels_to_indices=labels_to_indices
        )
        transforms: list[Any] = [
            l2l.data.transforms.NWays(meta, n=self.ways),
            l2l.data.transforms.KShots(meta, k=self.shots + self.queries),
            l2l.data.transforms.LoadData(meta),
        ]
        if self.rotations:
            transforms.append(RandomClassRotation90(meta))
        transforms += [
            l2l.data.transforms.RemapLabels(meta),
            l2l.data.transforms.ConsecutiveLabels(meta),
        ]
        return l2l.data.Taskset(meta, task_transforms=transforms, num_tasks=-1)

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain integer indices."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_tasks

    def __getitem__(self, key: TaskKey) -> Task:
        if isinstance(key, (tuple, list)):
            epoch, index = int(key[0]), int(key[1])
        else:
            epoch, index = self.epoch, int(key)
        if not 0 <= index < self.num_tasks:
            raise IndexError(f"task index {index} out of range 0..{self.num_tasks - 1}")
        saved = random.getstate()
        try:
            random.seed(task_seed(self.seed, self.split, self.rank, epoch, index))
            x, y = self.taskset.sample()
        finally:
            random.setstate(saved)
        return split_task(x, y, self.ways, self.shots, self.queries)


def _positions_by_class(labels: torch.Tensor, class_ids: Sequence[int]) -> dict[int, list[int]]:
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels).tolist()
    starts = [0]
    for n in counts:
        starts.append(starts[-1] + n)
    order_list = order.tolist()
    return {
        c: (order_list[starts[c] : starts[c + 1]] if 0 <= c < len(counts) else [])
        for c in class_ids
    }


class EpochTaskSampler(Sampler):
    """Yields ``(epoch, i)`` for ``i < num_tasks``, with a new epoch on every pass.

    ``set_epoch`` (called by Lightning's fit loop before each epoch) fixes the epoch of the
    next pass; without it each pass takes the epoch after the previous one. ``next_epoch`` is
    what the data module checkpoints.
    """

    def __init__(self, num_tasks: int, next_epoch: int = 0) -> None:
        self.num_tasks = num_tasks
        self.next_epoch = next_epoch
        self._requested: Optional[int] = None

    def set_epoch(self, epoch: int) -> None:
        self._requested = int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.next_epoch if self._requested is None else self._requested
        self._requested = None
        self.next_epoch = epoch + 1
        return ((epoch, i) for i in range(self.num_tasks))

    def __len__(self) -> int:
        return self.num_tasks


def _expected_layout(dataset: str) -> tuple[tuple[int, ...], int, str]:
    """(classes per split, images per class, display name) before anything is loaded."""
    if dataset == "omniglot":
        return SPLIT_SIZES, DRAWINGS_PER_CLASS, "Omniglot"
    return (
        proportional_split_sizes(SYNTHETIC_CLASSES, SYNTHETIC_FRACTIONS),
        SYNTHETIC_PER_CLASS,
        "synthetic",
    )


class EpisodicDataModule(pl.LightningDataModule):
    """N-way K-shot episodes from Omniglot or a synthetic task distribution.

    Batches are ``(support_x, support_y, query_x, query_y)`` with a leading task axis:
    ``[B, ways*shots, C, H, W]``, ``[B, ways*shots]``, ``[B, ways*queries, C, H, W]``,
    ``[B, ways*queries]``; labels run over ``0..ways-1`` and agree between support and query.
    Classes are split 1100/100/423 (Omniglot) or 60/20/20% (synthetic) into disjoint
    train/validation/test sets. Settings are checked when the module is built, before any data
    is read, and violations raise ``DataError`` naming the setting.

    Args:
        dataset: which task distribution: ``omniglot`` or ``synthetic`` (generated in memory,
            for tests and smoke runs).
        root: folder holding Omniglot's ``images_background.zip`` and
            ``images_evaluation.zip`` (relative to the working directory); the decoded images
            are cached there as ``omniglot_<image_size>.pt``. Unused for ``synthetic``.
        ways: classes per task (N).
        shots: labelled support images per class (K).
        queries: query images per class, on which the adapted learner is scored.
        meta_batch_size: tasks per training batch.
        train_batches: training batches per epoch.
        val_tasks: validation tasks, the same ones at every validation.
        test_tasks: test tasks, the same ones in every run.
        eval_batch_size: tasks per validation/test batch (the last batch may be smaller).
        image_size: side of the square images after resizing.
        rotations: rotate each class of a task by a random multiple of 90 degrees, in all
            splits, as learn2learn's Omniglot benchmark does.
        split_seed: seed of the class split (and of the synthetic images); keep it fixed to
            compare runs.
        seed: seed of the task sampling; training tasks also vary with epoch and DDP rank.
        num_workers: DataLoader worker processes (0 = sample in the main process).
    """

    def __init__(
        self,
        dataset: str = "omniglot",
        root: str = "data/omniglot",
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        meta_batch_size: int = 32,
        train_batches: int = 100,
        val_tasks: int = 200,
        test_tasks: int = 600,
        eval_batch_size: int = 25,
        image_size: int = 28,
        rotations: bool = True,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        # No save_hyperparameters(): Lightning refuses to log when a key (``seed``, ``ways``,
        # ``image_size``) is in both the model's and the data module's hparams with different
        # values; the CLI's saved config records these settings instead.
        self.dataset, self.root = dataset, root
        self.ways, self.shots, self.queries = ways, shots, queries
        self.meta_batch_size, self.train_batches = meta_batch_size, train_batches
        self.val_tasks, self.test_tasks = val_tasks, test_tasks
        self.eval_batch_size, self.image_size = eval_batch_size, image_size
        self.rotations, self.split_seed, self.seed = rotations, split_seed, seed
        self.num_workers = num_workers
        self._validate()
        self._data: Optional[LabelledImages] = None
        self._splits: dict[str, EpisodicTaskDataset] = {}
        self._train_sampler = EpochTaskSampler(train_batches * meta_batch_size)

    # -- settings --------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.dataset not in DATASETS:
            raise DataError(
                f"unknown data.dataset {self.dataset!r}; choose one of "
                + ", ".join(repr(d) for d in DATASETS)
            )
        for name in ("ways", "shots", "queries", "meta_batch_size", "train_batches",
                     "val_tasks", "test_tasks", "eval_batch_size", "image_size"):
            require_int(f"data.{name}", getattr(self, name), 1, DataError)
        for name in ("split_seed", "seed"):
            if not _is_int(getattr(self, name)):
                raise DataError(f"data.{name} must be an integer, got {getattr(self, name)!r}")
        require_int("data.num_workers", self.num_workers, 0, DataError)
        if not isinstance(self.rotations, bool):
            raise DataError(f"data.rotations must be true or false, got {self.rotations!r}")

        split_sizes, per_class, label = _expected_layout(self.dataset)
        fewest = min(split_sizes)
        if self.ways > fewest:
            split = SPLITS[split_sizes.index(fewest)]
            raise DataError(
                f"data.ways={self.ways} is more than the {fewest} classes of the {label} "
                f"{split} split (splits: {'/'.join(map(str, split_sizes))} classes); "
                f"use data.ways <= {fewest}"
            )
        if self.shots + self.queries > per_class:
            raise DataError(
                f"data.shots + data.queries = {self.shots} + {self.queries} = "
                f"{self.shots + self.queries} is more than the {per_class} images per class of "
                f"{label}; lower data.shots or data.queries"
            )
        if self.dataset == "omniglot":
            root = Path(self.root).expanduser()
            if not root.is_dir():
                raise DataNotFoundError(
                    f"Omniglot directory not found: {root.absolute()} (looked for "
                    f"{' and '.join(ZIP_NAMES)} there); set --data.root (data.root in a "
                    "config file) to the folder that holds them"
                )

    @property
    def image_channels(self) -> int:
        """Channels of the images (1: Omniglot and the synthetic data are grayscale)."""
        return 1

    # -- data ------------------------------------------------------------------------------
    def _load(self) -> LabelledImages:
        if self._data is None:
            if self.dataset == "omniglot":
                self._data = load_omniglot(self.root, self.image_size)
            else:
                self._data = make_synthetic(image_size=self.image_size, seed=self.split_seed)
        return self._data

    def prepare_data(self) -> None:
        """Decode Omniglot once (on rank 0 under DDP) so the other ranks read the cache."""
        self._load()

    def setup(self, stage: Optional[str] = None) -> None:
        if self._splits:
            return
        data = self._load()
        if self.dataset == "omniglot":
            class_splits = omniglot_split(self.split_seed, data.num_classes)
            name = "Omniglot"
        else:
            class_splits = synthetic_split(self.split_seed, data.num_classes)
            name = "synthetic"
        num_tasks = {"train": self.train_batches * self.meta_batch_size,
                     "val": self.val_tasks, "test": self.test_tasks}
        for split, class_ids in zip(SPLITS, class_splits):
            self._splits[split] = EpisodicTaskDataset(
                data,
                class_ids,
                ways=self.ways,
                shots=self.shots,
                queries=self.queries,
                num_tasks=num_tasks[split],
                rotations=self.rotations,
                seed=self.seed,
                split=split,
                dataset_name=name,
            )

    def class_splits(self) -> dict[str, list[int]]:
        """The class ids of each split (after ``setup``)."""
        self._require_setup()
        return {split: list(ds.class_ids) for split, ds in self._splits.items()}

    def task_dataset(self, split: str) -> EpisodicTaskDataset:
        """The task dataset of ``train``, ``val`` or ``test`` (after ``setup``)."""
        self._require_setup()
        return self._splits[split]

    def _require_setup(self) -> None:
        if not self._splits:
            raise RuntimeError("call setup() before asking EpisodicDataModule for data")

    # -- loaders ---------------------------------------------------------------------------
    def _loader(
        self, dataset: Dataset, batch_size: int, sampler: Optional[Sampler] = None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        train = self._splits["train"]
        train.rank = current_rank()  # read now: the process group exists by the time of fit
        return self._loader(train, self.meta_batch_size, self._train_sampler)

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self._splits["val"], self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader(self._splits["test"], self.eval_batch_size)

    # -- checkpointing ---------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The constructor arguments, so a checkpoint can rebuild the same task distribution
        (eval.py reads them back from the checkpoint)."""
        names = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in names if name != "self"}

    def state_dict(self) -> dict[str, Any]:
        return {"train_next_epoch": self._train_sampler.next_epoch, "settings": self.settings()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_next_epoch" in state_dict:
            self._train_sampler.next_epoch = int(state_dict["train_next_epoch"])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
