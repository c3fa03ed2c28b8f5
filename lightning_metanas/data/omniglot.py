"""Omniglot, read straight from the two official zips, and its class split.

The zips are listed from their central directories (cheap: nothing is inflated) into a
``Listing`` that the common decoder (``images.py``) turns into uint8 images, once: the
pipeline is learn2learn's Omniglot benchmark (PIL LANCZOS resize, ``ToTensor``, ``1 - x`` so
that ink is 1 and paper is 0) without torchvision, which cannot be installed beside the CPU
build of torch used here. The cache is keyed by a fingerprint of the zips' contents (member
names, sizes, CRCs), so other zips are decoded again, never silently reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence


from lightning_metanas.errors import require_int

from .errors import DataError, DataNotFoundError
from .image_cache import decode_images
from .images import LabelledImages, Listing, PathLike
from .splits import labels_from_sizes, proportional_split_sizes, split_class_ids

ZIP_NAMES: tuple[str, ...] = ("images_background.zip", "images_evaluation.zip")
NUM_CLASSES = 1623
DRAWINGS_PER_CLASS = 20
SPLIT_SIZES: tuple[int, int, int] = (1100, 100, 423)
SPLIT_FRACTIONS: tuple[float, float, float] = tuple(s / NUM_CLASSES for s in SPLIT_SIZES)
CACHE_FOLDER = ".cache"
ROOT_HINT = (
    f"(looked for {' and '.join(ZIP_NAMES)} there); set --data.root (data.root in a config "
    "file) to the folder that holds them"
)


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
def list_omniglot(root: PathLike = "data/omniglot") -> Listing:
    """The drawings of both zips as a ``Listing``: classes ordered by (zip, alphabet,
    character) name, drawings by file name, so labels are stable across machines."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"Omniglot directory not found: {root.absolute()} {ROOT_HINT}")
    zip_paths = [root / name for name in ZIP_NAMES]
    for path in zip_paths:
        if not path.is_file():
            raise DataNotFoundError(
                f"Omniglot zip not found: {path.absolute()}; set --data.root (data.root in a "
                f"config file) to the folder that holds {' and '.join(ZIP_NAMES)}"
            )
    members = [_list_members(path) for path in zip_paths]
    by_class: dict[tuple[int, str, str, str], list[str]] = {}
    for zip_members in members:
        for m in zip_members:
            by_class.setdefault(m.class_key, []).append(m.name)
    class_keys = sorted(by_class)
    owner = {m.name: zip_paths[m.class_key[0]] for zip_members in members for m in zip_members}
    return Listing(
        "Omniglot",
        root,
        ["/".join(key[1:]) for key in class_keys],
        [sorted(by_class[key]) for key in class_keys],
        _fingerprint(members),
        reader=lambda: _zip_reader(zip_paths, owner),
        describe=lambda name: f"{name} in {owner[name].absolute()}",
    )


def load_omniglot(
    root: PathLike = "data/omniglot", image_size: int = 28, cache: bool = True
) -> LabelledImages:
    """All Omniglot drawings as ``[N, 1, S, S]`` floats with labels ``0..1622``, decoded once
    into ``root/.cache/`` (``cache=False``: decoded in memory, no cache read or written)."""
    require_int("image_size", image_size, 1, DataError)
    listing = list_omniglot(root)
    cache_dir = Path(root).expanduser() / CACHE_FOLDER if cache else None
    store = decode_images(listing, "omniglot", image_size, channels=1, invert=True, cache_dir=cache_dir)
    return LabelledImages(store.tensor(), labels_from_sizes(listing.class_sizes), listing.class_names)


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


@contextlib.contextmanager
def _zip_reader(zip_paths: Sequence[Path], owner: dict[str, Path]) -> Iterator[Callable[[str], Any]]:
    """``read(member)``: the member's bytes as a file object (zipfile reads are thread-safe)."""
    archives = {path: _open_zip(path) for path in zip_paths}

    def read(name: str) -> io.BytesIO:
        path = owner[name]
        try:
            return io.BytesIO(archives[path].read(name))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as err:
            raise DataError(f"cannot read {name} from {path.absolute()}: {err}") from err

    try:
        yield read
    finally:
        for archive in archives.values():
            archive.close()


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
