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

Why one module of ~550 lines: the task dataset, the epoch sampler and the data module share
one seeding rule and one split bookkeeping; apart, each would restate them.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Union

import learn2learn as l2l
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_metanas.errors import require_int
from lightning_metanas.seeding import seed_of

from .errors import DataError, DataNotFoundError
from .image_cache import decode_images
from .images import ImageStore, LabelledImages, Splits, pixels_scaled
from .registry import DATASETS, DatasetSpec
from .splits import SPLITS, labels_from_sizes
from .transforms import RandomClassRotation90

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


def check_task_settings(
    title: str, class_names: Sequence[str], class_sizes: Sequence[int],
    splits: dict[str, Sequence[int]], ways: int, shots: int, queries: int,
) -> None:
    """Every split has at least ``ways`` classes and every class ``shots + queries`` images;
    else ``DataError`` naming the split or the class (by name and label)."""
    for split, class_ids in splits.items():
        smallest = min(class_ids, key=lambda c: class_sizes[c], default=None)
        described = ("no class", 0) if smallest is None else (
            f"{title} class {class_names[smallest]!r} (label {smallest}, {split} split)", class_sizes[smallest])
        check_counts(title, split, len(class_ids), ways, shots, queries, described)


def check_counts(title: str, split: str, classes: int, ways: int, shots: int, queries: int,
                 smallest: tuple[str, int], queries_flag: str = "data.queries") -> None:
    """The one check of a task distribution's sizes: ``ways`` classes in the split, and
    ``shots + queries`` images in its smallest class (``smallest``: how to name it, its size)."""
    if ways > classes:
        raise DataError(f"data.ways={ways} is more than the {classes} classes of the {title} {split} split; "
                        f"use data.ways <= {classes}")
    name, size = smallest
    if shots + queries > size:
        raise DataError(f"{name} has {size} images, fewer than data.shots + {queries_flag} = {shots} + {queries} = "
                        f"{shots + queries}; lower data.shots or {queries_flag}")


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
        sizes = {c: len(p) for c, p in self._positions.items()}
        check_task_settings(dataset_name, data.class_names, sizes, {self.split: self.class_ids},
                            self.ways, self.shots, self.queries)

    def variant(self, *, queries: int, num_tasks: int, setting: str = "queries") -> "EpisodicTaskDataset":
        """The same split and seeds with another number of query images per class and of
        tasks (e.g. lower-noise scoring tasks); ``setting`` names the flag in errors."""
        fewest = min(len(self._positions[c]) for c in self.class_ids)
        check_counts("", self.split, len(self.class_ids), self.ways, self.shots, queries,
                     (f"{setting}={queries}: the smallest {self.split} class", fewest), setting)
        other = copy.copy(self)
        other.queries, other.num_tasks, other._taskset = queries, num_tasks, None
        return other

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
            random.seed(seed_of(self.seed, self.split, self.rank, epoch, index))
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


class EpisodicDataModule(pl.LightningDataModule):
    """N-way K-shot episodes from any dataset of the registry (``registry.DATASETS``).

    Batches are ``(support_x, support_y, query_x, query_y)`` with a leading task axis:
    ``[B, ways*shots, C, H, W]``, ``[B, ways*shots]``, ``[B, ways*queries, C, H, W]``,
    ``[B, ways*queries]``; labels run over ``0..ways-1`` and agree between support and query.
    Classes are split into disjoint train/validation/test sets: by the files (split folders,
    CSVs), 1100/100/423 (Omniglot) or 60/20/20% (synthetic). Settings are checked when the
    module is built, the files' layout and class sizes before any image is decoded, and
    violations raise ``DataError`` naming the setting or file.

    Images are decoded once into a uint8 cache file (``images.py``) that every run and DDP
    rank reads image by image: no process holds the dataset.

    Args:
        dataset: the task distribution: ``omniglot``; ``miniimagenet``, ``tieredimagenet``,
            ``cifarfs``, ``fc100`` or ``folder`` (any dataset of your own), each in split
            folders ``root/{train,val,test}/<class>/<image>`` or the CSV layout
            ``root/images/<file>`` with ``root/{train,val,test}.csv`` (``filename,label``);
            ``synthetic`` (generated in memory, for tests and smoke runs).
        root: the dataset's folder (relative to the working directory): Omniglot's two zips,
            or one of the layouts above. Unused for ``synthetic``.
        cache_dir: folder of the decoded-image cache (default: ``<root>/.cache``); give
            another when ``root`` is read-only.
        ways: classes per task (N).
        shots: labelled support images per class (K).
        queries: query images per class, on which the adapted learner is scored.
        meta_batch_size: tasks per training batch.
        train_batches: training batches per epoch.
        val_tasks: validation tasks, the same ones at every validation.
        test_tasks: test tasks, the same ones in every run.
        eval_batch_size: tasks per validation/test batch (the last batch may be smaller).
        image_size: side of the square images after resizing (aspect ratio not kept).
        channels: 1 (grayscale) or 3 (RGB); ``null``: the dataset's (Omniglot: 1; image
            datasets: 3 if any image has colour, grayscale ones then replicated, else 1).
        normalize: map each channel to zero mean and unit variance with the train split's
            statistics; ``null``: the dataset's convention (Omniglot, synthetic: no, ink is
            1 on 0; image datasets: yes).
        invert: store ``1 - x`` (dark drawings on light paper become ink = 1); ``null``: the
            dataset's convention (Omniglot: yes; others: no).
        rotations: rotate each class of a task by a random multiple of 90 degrees, in all
            splits, as learn2learn's Omniglot benchmark does; ``null``: the dataset's
            convention (Omniglot, synthetic: yes; image datasets: no).
        split_seed: seed of the class split where the files do not give one (and of the
            synthetic images); keep it fixed to compare runs.
        seed: seed of the task sampling; training tasks also vary with epoch and DDP rank;
            ``None``: ``--seed_everything``'s (train.py), 0 when built directly.
        num_workers: DataLoader worker processes (0 = sample in the main process).
    """

    def __init__(
        self,
        dataset: str = "omniglot",
        root: str = "data/omniglot",
        cache_dir: Optional[str] = None,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        meta_batch_size: int = 32,
        train_batches: int = 100,
        val_tasks: int = 200,
        test_tasks: int = 600,
        eval_batch_size: int = 25,
        image_size: int = 28,
        channels: Optional[int] = None,
        normalize: Optional[bool] = None,
        invert: Optional[bool] = None,
        rotations: Optional[bool] = None,
        split_seed: int = 0,
        seed: Optional[int] = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        # Saved in every checkpoint (``datamodule_hyper_parameters``): eval.py and adapt.py
        # rebuild the task distribution from it. Not logged (``logger=False``): Lightning refuses
        # to merge the model's and the data module's hparams where a key (``seed``) differs.
        self.save_hyperparameters(logger=False)
        if dataset not in DATASETS:
            raise DataError(
                f"unknown data.dataset {dataset!r}; choose one of "
                + ", ".join(repr(d) for d in DATASETS)
            )
        self.spec: DatasetSpec = DATASETS[dataset]
        self.dataset, self.root, self.cache_dir = dataset, root, cache_dir
        self.ways, self.shots, self.queries = ways, shots, queries
        self.meta_batch_size, self.train_batches = meta_batch_size, train_batches
        self.val_tasks, self.test_tasks = val_tasks, test_tasks
        self.eval_batch_size, self.image_size, self.channels = eval_batch_size, image_size, channels
        # the dataset's conventions where a setting is left at None (saved resolved)
        self.normalize = self.spec.normalize if normalize is None else normalize
        self.invert = self.spec.invert if invert is None else invert
        self.rotations = self.spec.rotations if rotations is None else rotations
        self.split_seed, self.seed = split_seed, 0 if seed is None else seed
        # saved resolved: a checkpoint rebuilds these tasks even if a dataset's convention changes
        self.hparams.update(normalize=self.normalize, invert=self.invert, rotations=self.rotations, seed=self.seed)
        self.num_workers = num_workers
        self._validate()
        self._data: Optional[LabelledImages] = None
        self._tasks_data: Optional[LabelledImages] = None
        self._class_splits: Optional[Splits] = None
        self._normalization: Optional[dict[str, list[float]]] = None
        self._splits: dict[str, EpisodicTaskDataset] = {}
        self._train_sampler = EpochTaskSampler(train_batches * meta_batch_size)

    # -- settings --------------------------------------------------------------------------
    def _validate(self) -> None:
        for name in ("ways", "shots", "queries", "meta_batch_size", "train_batches",
                     "val_tasks", "test_tasks", "eval_batch_size", "image_size"):
            require_int(f"data.{name}", getattr(self, name), 1, DataError)
        for name in ("split_seed", "seed"):
            if not _is_int(getattr(self, name)):
                raise DataError(f"data.{name} must be an integer, got {getattr(self, name)!r}")
        require_int("data.num_workers", self.num_workers, 0, DataError)
        for name in ("rotations", "normalize", "invert"):
            if not isinstance(getattr(self, name), bool):
                raise DataError(f"data.{name} must be true, false or null, got {getattr(self, name)!r}")
        if self.channels not in (None, 1, 3):
            raise DataError(f"data.channels must be 1 (grayscale), 3 (RGB) or null (as the images "
                            f"are), got {self.channels!r}")

        title = self.spec.title
        if self.spec.layout is not None:  # sizes known before reading: fail before any file is opened
            split_sizes, per_class = self.spec.layout
            for split, classes in zip(SPLITS, split_sizes):
                check_counts(title, split, classes, self.ways, self.shots, self.queries,
                             (f"every {title} class", per_class))
        if self.spec.read is not None:
            root = Path(self.root).expanduser()
            if not root.is_dir():
                raise DataNotFoundError(
                    f"{title} directory not found: {root.absolute()}{self.spec.root_hint}"
                )

    @property
    def image_channels(self) -> int:
        """Channels of the images the network gets: ``data.channels``, else the dataset's
        (reading an image dataset's files, or its cache, to find out)."""
        if self.channels is not None:
            return self.channels
        if self.spec.channels is not None:
            return self.spec.channels
        return self._load().images.channels

    # -- data ------------------------------------------------------------------------------
    def _load(self) -> LabelledImages:
        """The images and the class split; the layout and the class sizes are checked against
        the task settings before anything is decoded."""
        if self._data is not None:
            return self._data
        spec, channels = self.spec, self.channels or self.spec.channels
        if spec.generate is not None:
            data = spec.generate(self.image_size, self.split_seed, channels or 1)
            names, sizes = data.class_names, torch.bincount(data.labels).tolist()
            splits = spec.split(self.split_seed, data.num_classes)
        else:
            listing = spec.read(Path(self.root).expanduser())
            names, sizes = listing.class_names, listing.class_sizes
            splits = listing.splits or spec.split(self.split_seed, len(names))
        check_task_settings(spec.title, names, sizes, dict(zip(SPLITS, splits)),
                            self.ways, self.shots, self.queries)
        if spec.generate is None:
            cache_dir = self.cache_dir or Path(self.root).expanduser() / ".cache"
            store = decode_images(listing, self.dataset, self.image_size, channels, self.invert, cache_dir)
            labels = labels_from_sizes(sizes)
            data = LabelledImages(store, labels, names)
        self._data, self._class_splits = data, splits
        return data

    def prepare_data(self) -> None:
        """Decode the images once (on rank 0 under DDP) so the other ranks read the cache."""
        self._load()

    def setup(self, stage: Optional[str] = None) -> None:
        if self._splits:
            return
        data = self._load()
        if self.normalize:
            data = self._normalized(data, self._class_splits[0])
        self._tasks_data = data
        num_tasks = {"train": self.train_batches * self.meta_batch_size,
                     "val": self.val_tasks, "test": self.test_tasks}
        for split, class_ids in zip(SPLITS, self._class_splits):
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
                dataset_name=self.spec.title,
            )

    def _normalized(self, data: LabelledImages, train_ids: Sequence[int]) -> LabelledImages:
        """``data`` with every channel mapped to zero mean, unit variance over the train split
        (only its statistics: validation and test images are never looked at)."""
        if isinstance(data.images, ImageStore):
            mean, std = data.images.channel_stats(train_ids)
            images = data.images.normalized(mean, std)
        else:
            train = data.images[torch.isin(data.labels, torch.tensor(list(train_ids)))].double()
            var, mean_t = torch.var_mean(train, dim=(0, 2, 3), correction=0)
            # the rule of ImageStore.channel_stats: a constant channel is only shifted
            std_t = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
            mean, std = mean_t.tolist(), std_t.tolist()
            images = pixels_scaled(data.images, mean, std)
        self._normalization = {"mean": mean, "std": std}
        return LabelledImages(images, data.labels, data.class_names)

    def labelled_images(self) -> LabelledImages:
        """Every image of the dataset with its label, as the tasks show them (normalised when
        ``normalize``), after ``setup``."""
        self._require_setup()
        return self._tasks_data

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
        """The constructor arguments (Lightning's ``hparams``, saved in every checkpoint)."""
        return {k: v for k, v in self.hparams.items() if not k.startswith("_")}

    def state_dict(self) -> dict[str, Any]:
        """The sampler's epoch, and the per-channel normalisation (so that ``adapt.py`` shows a
        new task's images to the network as meta-training did)."""
        return {"train_next_epoch": self._train_sampler.next_epoch, "normalization": self._normalization}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_next_epoch" in state_dict:
            self._train_sampler.next_epoch = int(state_dict["train_next_epoch"])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
