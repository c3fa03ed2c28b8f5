"""What adapt.py tells a user about their image folder before adapting to it: images per class
and the imbalance ratio, byte-identical files filed under two classes, classes with fewer images
than adapting needs, and the files that do not decode (skipped, named).

A folder from site is rarely clean: one unreadable file should not stop an adaptation that the
other hundred images allow, and a file copied into two class folders is a label error the user
can fix at once, before any network is trained. The survey reads bytes only (no checkpoint is
needed to list, count and hash); decoding comes after, with the checkpoint's preprocessing.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from lightning_metanas.data.errors import DataError
from lightning_metanas.data.folder import list_image_folder, split_image_folder
from lightning_metanas.data.images import LabelledImages


@dataclass
class DataSummary:
    """An image folder ``root/<class>/<image>`` as adapt.py found it."""

    root: str
    class_names: list[str]
    files: list[list[str]]  # per class, its image files (sorted), including those that do not decode
    duplicates: list[list[str]] = field(default_factory=list)  # byte-identical files in 2+ classes
    undecodable: dict[str, str] = field(default_factory=dict)  # file -> why it does not decode

    @property
    def counts(self) -> list[int]:
        """Usable images per class (files that decode)."""
        return [sum(f not in self.undecodable for f in files) for files in self.files]

    @property
    def imbalance_ratio(self) -> float:
        """Largest class over smallest (usable images); 1 for a balanced folder."""
        counts = self.counts
        return max(counts) / min(counts) if min(counts) > 0 else float("inf")

    def too_few(self, minimum: int) -> list[str]:
        return [name for name, n in zip(self.class_names, self.counts) if n < minimum]

    def relative(self, path: str) -> str:
        return str(Path(path).relative_to(self.root))

    def to_dict(self, minimum: int) -> dict:
        return asdict(self) | {"counts": dict(zip(self.class_names, self.counts)), "minimum": minimum,
                               "imbalance_ratio": self.imbalance_ratio, "too_few": self.too_few(minimum)}

    def lines(self, minimum: int) -> list[str]:
        """The summary as printed: one line per finding, ``data:`` first."""
        per_class = ", ".join(f"{name} {n}" for name, n in zip(self.class_names, self.counts))
        out = [f"data: {len(self.class_names)} classes, {sum(self.counts)} images (per class: {per_class}); "
               f"imbalance ratio {self.imbalance_ratio:.1f} (largest class / smallest)"]
        for group in self.duplicates:
            out.append("data: byte-identical images in different classes: " + " = ".join(map(self.relative, group)))
        if self.too_few(minimum):
            out.append(f"data: classes with fewer than {minimum} images: {', '.join(self.too_few(minimum))}")
        for path, why in self.undecodable.items():
            out.append(f"data: skipped {self.relative(path)}, which does not decode ({why})")
        return out

    def check(self, minimum: int, why: str) -> None:
        """``DataError`` naming the first class with fewer than ``minimum`` usable images."""
        for name, files, n in zip(self.class_names, self.files, self.counts):
            if n < minimum:
                folder = Path(self.root) / name
                broken = [self.relative(f) for f in files if f in self.undecodable]
                detail = f" that decode ({', '.join(broken)} do not)" if broken else ""
                raise DataError(f"class folder {folder} has {n} image{'' if n == 1 else 's'}{detail}; "
                                f"every class needs at least {minimum} ({why})")


def survey_folder(root: str | Path) -> DataSummary:
    """The classes, files and cross-class duplicates of ``root`` (bytes only, nothing decoded);
    ``DataError`` for a folder that does not have the layout."""
    classes = list_image_folder(root, min_images=1)
    root = Path(root).expanduser().absolute()
    owners: dict[str, list[tuple[str, str]]] = {}
    for name, files in classes:
        for path in files:
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as err:
                raise DataError(f"image {path} cannot be read ({err.strerror}); remove or replace it") from None
            owners.setdefault(digest, []).append((name, str(path)))
    duplicates = [[p for _, p in group] for group in owners.values() if len({c for c, _ in group}) > 1]
    return DataSummary(str(root), [n for n, _ in classes], [[str(p) for p in f] for _, f in classes], duplicates)


def decode_folder(summary: DataSummary, decode: Callable[[str], torch.Tensor]) -> tuple[LabelledImages, list[str]]:
    """Every file of ``summary`` that ``decode`` (e.g. ``adapted_model.Preprocessing``) reads,
    labelled by its class folder, and their paths in the same order; the others are recorded in
    ``summary.undecodable``."""
    images, labels, paths = [], [], []
    for label, files in enumerate(summary.files):
        for path in files:
            try:
                images.append(decode(path))
            except DataError as err:
                summary.undecodable[path] = str(err)
                continue
            labels.append(label)
            paths.append(path)
    if not images:
        raise DataError(f"no image of {summary.root} decodes")
    return LabelledImages(torch.stack(images), torch.tensor(labels), list(summary.class_names)), paths


def split_with_indices(data: LabelledImages, val_fraction: float, seed: int) -> tuple[
        LabelledImages, LabelledImages, list[int], list[int]]:
    """``split_image_folder``'s split, and the positions in ``data`` of the train and held-out
    images (to name them by file): the same split applied to the positions themselves."""
    train, val = split_image_folder(data, val_fraction, seed)
    positions = LabelledImages(torch.arange(len(data.labels)), data.labels, data.class_names)
    train_at, val_at = split_image_folder(positions, val_fraction, seed)
    return train, val, train_at.images.tolist(), val_at.images.tolist()


def named(paths: list[str], positions: list[int], root: Optional[str] = None) -> list[str]:
    """The files at ``positions``, relative to ``root`` when given."""
    return [str(Path(paths[i]).relative_to(root)) if root else paths[i] for i in positions]
