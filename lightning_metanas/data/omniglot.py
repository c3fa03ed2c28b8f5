"""Omniglot, read straight from the two official zips, and its class split.

The images go through the same pipeline as learn2learn's Omniglot benchmark (PIL LANCZOS
resize, ``ToTensor``, ``1 - x`` so that ink is 1 and paper is 0) without torchvision, which
cannot be installed beside the CPU build of torch used here.

Decoding 32,460 PNGs takes several seconds, so the decoded images are cached next to the zips
as a ``torch.save`` file of plain tensors (loaded with ``weights_only=True``; no pickle). The
cache records a fingerprint of the zips' contents (member names, sizes, CRCs) and is rebuilt
when it no longer matches, cannot be read, or has the wrong shape.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import warnings
import zipfile
import zlib
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple, Sequence, Union

import numpy as np
import torch
from PIL import Image

from lightning_metanas.errors import require_int

from .errors import DataError, DataNotFoundError

ZIP_NAMES: tuple[str, ...] = ("images_background.zip", "images_evaluation.zip")
NUM_CLASSES = 1623
DRAWINGS_PER_CLASS = 20
SPLIT_SIZES: tuple[int, int, int] = (1100, 100, 423)
SPLIT_FRACTIONS: tuple[float, float, float] = tuple(s / NUM_CLASSES for s in SPLIT_SIZES)
_CACHE_VERSION = 1
_ROOT_HINT = (
    "set --data.root (data.root in a config file) to the folder that holds "
    + " and ".join(ZIP_NAMES)
)

PathLike = Union[str, "os.PathLike[str]"]


class LabelledImages(NamedTuple):
    """Images with integer class labels, the common currency of all dataset loaders.

    ``class_names[c]`` names class ``c`` so that errors about a class can say which one.
    """

    images: torch.Tensor  # float32 [N, C, S, S] in [0, 1]
    labels: torch.Tensor  # int64 [N] in 0..num_classes-1
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------------------------------
# Class splits
# ---------------------------------------------------------------------------------------
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


def omniglot_split(
    split_seed: int = 0, num_classes: int = NUM_CLASSES
) -> tuple[list[int], list[int], list[int]]:
    """Train / validation / test class ids: 1100 / 100 / 423 of the 1623 characters.

    A copy of Omniglot with another number of characters (e.g. a trimmed test fixture) is
    split in the same proportions, with a warning, rather than refused.
    """
    if num_classes == NUM_CLASSES:
        sizes: Sequence[int] = SPLIT_SIZES
    else:
        warnings.warn(
            f"Omniglot has {num_classes} characters instead of {NUM_CLASSES}; splitting them "
            f"in the proportions {SPLIT_SIZES[0]}/{SPLIT_SIZES[1]}/{SPLIT_SIZES[2]}",
            stacklevel=2,
        )
        sizes = proportional_split_sizes(num_classes, SPLIT_FRACTIONS)
    train, val, test = split_class_ids(num_classes, sizes, split_seed)
    return train, val, test


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------
def load_omniglot(
    root: PathLike = "data/omniglot", image_size: int = 28, cache: bool = True
) -> LabelledImages:
    """All Omniglot drawings as ``[N, 1, S, S]`` floats with labels ``0..1622``.

    Classes are ordered by (zip, alphabet, character) name, drawings by file name, so labels
    are stable across machines. ``cache=False`` neither reads nor writes the cache file.
    """
    require_int("image_size", image_size, 1, DataError)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(
            f"Omniglot directory not found: {root.absolute()}; {_ROOT_HINT}"
        )
    zip_paths = [root / name for name in ZIP_NAMES]
    for path in zip_paths:
        if not path.is_file():
            raise DataNotFoundError(f"Omniglot zip not found: {path.absolute()}; {_ROOT_HINT}")

    members = [_list_members(path) for path in zip_paths]
    fingerprint = _fingerprint(members)
    cache_path = root / f"omniglot_{image_size}.pt"
    if cache:
        cached = _read_cache(cache_path, image_size, fingerprint)
        if cached is not None:
            return cached
    ink, labels, names = _decode(zip_paths, members, image_size)
    if cache:
        _write_cache(cache_path, image_size, fingerprint, ink, labels, names)
    return _as_labelled(ink, labels, names)


class _Member(NamedTuple):
    class_key: tuple[int, str, str, str]  # (zip index, top folder, alphabet, character)
    name: str  # path inside the zip
    crc: int
    size: int


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise DataError(
            f"{path.absolute()} is not a readable zip file ({err}); it may be truncated or "
            "corrupt: replace it with a fresh copy of the Omniglot zip"
        ) from err


def _list_members(path: Path) -> list[_Member]:
    """The drawings inside one zip, from its central directory (cheap: nothing is inflated)."""
    zip_index = ZIP_NAMES.index(path.name)
    with _open_zip(path) as archive:
        infos = archive.infolist()
    members = []
    for info in infos:
        parts = info.filename.split("/")
        if info.is_dir() or len(parts) != 4 or parts[0].startswith("__MACOSX"):
            continue
        if not parts[3].lower().endswith(".png") or parts[3].startswith("."):
            continue
        key = (zip_index, parts[0], parts[1], parts[2])
        members.append(_Member(key, info.filename, info.CRC, info.file_size))
    if not members:
        raise DataError(
            f"{path.absolute()} holds no drawings in the expected layout "
            "<images_background|images_evaluation>/<Alphabet>/<character>/<drawing>.png"
        )
    return members


def _fingerprint(members: Sequence[Sequence[_Member]]) -> str:
    digest = hashlib.sha256()
    for zip_members in members:
        for m in sorted(zip_members, key=lambda m: m.name):
            digest.update(f"{m.name}\0{m.crc}\0{m.size}\n".encode())
    return digest.hexdigest()


def _decode(
    zip_paths: Sequence[Path], members: Sequence[Sequence[_Member]], image_size: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    by_class: dict[tuple[int, str, str, str], list[_Member]] = defaultdict(list)
    for zip_members in members:
        for m in zip_members:
            by_class[m.class_key].append(m)
    class_keys = sorted(by_class)
    total = sum(len(v) for v in by_class.values())
    ink = np.empty((total, 1, image_size, image_size), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    names = ["/".join(key[1:]) for key in class_keys]

    archives = [_open_zip(p) for p in zip_paths]
    try:
        row = 0
        for label, key in enumerate(class_keys):
            archive, zip_path = archives[key[0]], zip_paths[key[0]]
            for m in sorted(by_class[key], key=lambda m: m.name):
                ink[row, 0] = _decode_png(archive, zip_path, m.name, image_size)
                labels[row] = label
                row += 1
    finally:
        for archive in archives:
            archive.close()
    return torch.from_numpy(ink), torch.from_numpy(labels), names


def _decode_png(archive: zipfile.ZipFile, zip_path: Path, name: str, size: int) -> np.ndarray:
    """One drawing as uint8 ink (255 = stroke), resized like learn2learn's benchmark."""
    try:
        data = archive.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as err:
        raise DataError(f"cannot read {name} from {zip_path.absolute()}: {err}") from err
    try:
        with Image.open(io.BytesIO(data)) as img:
            gray = img.convert("L")
            if gray.size != (size, size):
                gray = gray.resize((size, size), Image.LANCZOS)
            pixels = np.asarray(gray, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(
            f"cannot decode image {name} in {zip_path.absolute()}: {err}"
        ) from err
    return 255 - pixels


def _as_labelled(ink: torch.Tensor, labels: torch.Tensor, names: list[str]) -> LabelledImages:
    return LabelledImages(ink.float().div_(255.0), labels.long(), list(names))


# ---------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------
def _read_cache(path: Path, image_size: int, fingerprint: str) -> LabelledImages | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        ok = (
            isinstance(blob, dict)
            and blob.get("version") == _CACHE_VERSION
            and blob.get("image_size") == image_size
            and blob.get("fingerprint") == fingerprint
        )
        if ok:
            ink, labels, names = blob["ink"], blob["labels"], blob["class_names"]
            n = labels.shape[0] if isinstance(labels, torch.Tensor) else -1
            ok = (
                isinstance(ink, torch.Tensor)
                and ink.dtype == torch.uint8
                and tuple(ink.shape) == (n, 1, image_size, image_size)
                and labels.dtype == torch.int64
                and labels.ndim == 1
                and isinstance(names, list)
                and n > 0
                and int(labels.min()) == 0
                and int(labels.max()) == len(names) - 1
            )
    except Exception as err:  # unreadable or foreign file: rebuild rather than fail
        warnings.warn(f"ignoring unreadable Omniglot cache {path} ({err}); rebuilding it")
        return None
    if not ok:
        return None  # stale (other zips, other version) or malformed: rebuild silently
    return _as_labelled(ink, labels, names)


def _write_cache(
    path: Path,
    image_size: int,
    fingerprint: str,
    ink: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
) -> None:
    """Write atomically so that concurrent runs never read half a file; skip if read-only."""
    blob = {
        "version": _CACHE_VERSION,
        "image_size": image_size,
        "fingerprint": fingerprint,
        "ink": ink,
        "labels": labels,
        "class_names": list(names),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
