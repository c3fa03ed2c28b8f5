"""Images decoded from files into uint8 arrays, and the store every dataset reads them from.

Every dataset goes through here, whatever holds its files (Omniglot's zips, split folders,
CSV splits, the single labelled folder of ``adapt.py``): a ``Listing`` names the classes and
their image files, ``image_cache.decode_images`` turns them into an ``ImageStore`` of uint8
``[N, C, S, S]`` images (in memory, or in the cache file of ``image_cache.py``), one class
after the other, and the store hands out one float image at a time.

Decoding is the pipeline of learn2learn's benchmarks without torchvision: PIL, the first frame,
grayscale (``L``) or RGB, a LANCZOS resize to ``S x S`` (the aspect ratio is not kept, as in
MAML's miniImageNet preparation), optionally inverted (``255 - x``: Omniglot's ink = 1).
A ``Listing`` with ``channels=None`` reads every file's mode first: RGB if any image has
colour (grayscale ones among them are replicated to three channels), else grayscale. Modes
that would lose information when squeezed into 8 bits (16-bit, 32-bit, float) are refused.

Why one module of ~330 lines: listing, decoding and the store are the one path every image
takes; the cache file's format is ``image_cache.py``'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .errors import DataError

PathLike = Union[str, "os.PathLike[str]"]
Splits = tuple[list[int], list[int], list[int]]

GRAY_MODES = frozenset({"1", "L", "LA", "La"})
COLOUR_MODES = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_PIL_MODE = {1: "L", 3: "RGB"}
_CHUNK = 256  # images decoded per batch of threads and written per pwrite


class LabelledImages(NamedTuple):
    """Images with integer class labels, the common currency of all dataset loaders.

    ``images`` is a float tensor ``[N, C, S, S]``, or an ``ImageStore`` that reads them from a
    cache file one at a time; ``class_names[c]`` names class ``c`` so that errors about a
    class can say which one.
    """

    images: Any  # torch.Tensor | ImageStore
    labels: torch.Tensor  # int64 [N] in 0..num_classes-1
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _open_path(item: str) -> str:
    return item


@contextlib.contextmanager
def plain_files() -> Iterator[Callable[[str], Any]]:
    """The reader of a listing whose items are file paths: PIL opens them itself."""
    yield _open_path


@dataclass
class Listing:
    """A dataset's images before decoding: classes, their image files, and their split.

    Args:
        title: the dataset's name in messages (``miniImageNet``, ``image folder``).
        root: where it was read from, for messages and the default cache folder.
        class_names: one name per class, in label order.
        files: per class, its images in order (file paths, or members of an archive).
        fingerprint: a digest of every file's name, size and modification time (or of the
            archives' member names, sizes and CRCs): what a cache is valid for.
        splits: class ids of train / val / test when the files say (split folders, CSVs);
            ``None`` when the classes are split by a seed (Omniglot).
        reader: a context manager giving ``read(item)``, what ``PIL.Image.open`` takes.
        describe: an item as a message names it.
    """

    title: str
    root: Path
    class_names: list[str]
    files: list[list[str]]
    fingerprint: str
    splits: Optional[Splits] = None
    reader: Callable[[], ContextManager[Callable[[str], Any]]] = plain_files
    describe: Callable[[str], str] = str

    @property
    def class_sizes(self) -> list[int]:
        return [len(f) for f in self.files]


def fingerprint_files(paths: Sequence[Path], root: Path, extra: bytes = b"") -> str:
    """SHA-256 of every file's path relative to ``root``, size and modification time (and
    ``extra``, e.g. the CSV files' bytes). Moving the whole dataset keeps it; editing,
    adding, removing or touching an image changes it."""
    digest = hashlib.sha256(extra)
    for path in paths:
        try:
            stat = path.stat()
        except OSError as err:  # a dangling symbolic link, a link to itself, a vanished file
            kind = "a symbolic link to nothing readable" if path.is_symlink() else "unreadable"
            raise DataError(f"image {path} is {kind} ({err.strerror}); remove or replace it") from None
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Decoding one image
# ---------------------------------------------------------------------------------------
def pixels_to_float(pixels: np.ndarray, mean: Optional[Sequence[float]] = None,
                    std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """uint8 images ``[N, C, S, S]`` (or one, ``[C, S, S]``) as floats ``x / 255``, then
    ``(x - mean) / std`` per channel when given: the one conversion of every image the networks
    see (training data, a task folder, a file handed to predict.py)."""
    x = torch.from_numpy(np.require(pixels, requirements=("C", "W"))).float().div_(255.0)
    return x if mean is None or std is None else pixels_scaled(x, mean, std, inplace=True)


def pixels_scaled(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> torch.Tensor:
    """Float images ``(x - mean) / std`` per channel (the channel axis third from last)."""
    shape = (-1, 1, 1)
    mean_t, std_t = torch.tensor(mean, dtype=x.dtype).view(shape), torch.tensor(std, dtype=x.dtype).view(shape)
    return x.sub_(mean_t).div_(std_t) if inplace else (x - mean_t) / std_t

def _checked_mode(img: Image.Image, name: str) -> str:
    if img.mode in GRAY_MODES or img.mode in COLOUR_MODES:
        return img.mode
    raise DataError(
        f"image {name} has PIL mode {img.mode!r} (16-bit, 32-bit or floating-point pixels), "
        "which 8-bit grayscale or RGB cannot hold without loss; convert it to an 8-bit image"
    )


def decode_image(source: Any, name: str, image_size: int, channels: int, invert: bool = False) -> np.ndarray:
    """One image as uint8 ``[channels, image_size, image_size]`` (``255 - x`` if ``invert``).

    ``source`` is what ``PIL.Image.open`` takes (a path or a file object); ``name`` is how
    an error names it. Raises ``DataError`` for a file that does not decode, is truncated,
    or has a mode that 8 bits cannot hold.
    """
    try:
        with Image.open(source) as img:
            img.seek(0)  # the first frame of an animated GIF
            _checked_mode(img, name)
            converted = img.convert(_PIL_MODE[channels])
            if converted.size != (image_size, image_size):
                converted = converted.resize((image_size, image_size), Image.LANCZOS)
            pixels = np.asarray(converted, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {name}: {err}") from None
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return 255 - pixels if invert else np.ascontiguousarray(pixels)


def _read_mode(source: Any, name: str) -> str:
    try:
        with Image.open(source) as img:
            return _checked_mode(img, name)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {name}: {err}") from None


def _detect_channels(listing: Listing, read: Callable[[str], Any]) -> tuple[int, int]:
    """(channels, number of grayscale images among colour ones) from every file's header."""
    gray = colour = 0
    for files in listing.files:
        for item in files:
            if _read_mode(read(item), listing.describe(item)) in GRAY_MODES:
                gray += 1
            else:
                colour += 1
    return (3, gray) if colour else (1, 0)


# ---------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class ImageStore:
    """uint8 images ``[N, C, S, S]`` in a cache file (read with ``os.pread``) or in memory;
    ``store[i]`` is image ``i`` as float32 ``[C, S, S]``: ``x / 255``, then
    ``(x - mean) / std`` per channel when the store is ``normalized``.

    Pickles without its data or file descriptor (DataLoader workers, spawned DDP ranks reopen
    the file), so every process shares the one copy in the page cache.
    """

    shape: tuple[int, int, int, int]
    class_sizes: list[int]
    class_sums: list[list[int]]  # per class, per channel: sum of the uint8 pixels
    class_squares: list[list[int]]  # per class, per channel: sum of their squares
    path: Optional[Path] = None
    offset: int = 0
    array: Optional[np.ndarray] = None
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    _fd: Optional[int] = field(default=None, repr=False)
    _fd_pid: Optional[int] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n, c, s, _ = self.shape
        self._item_bytes = c * s * s

    @property
    def channels(self) -> int:
        return self.shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"] = state["_fd_pid"] = None
        return state

    def __del__(self) -> None:
        if self._fd is not None and self._fd_pid == os.getpid():
            with contextlib.suppress(Exception):
                os.close(self._fd)

    def _descriptor(self) -> int:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd, self._fd_pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def uint8(self, start: int, stop: Optional[int] = None) -> np.ndarray:
        """Images ``start:stop`` (default: just ``start``) as a uint8 array ``[n, C, S, S]``."""
        stop = start + 1 if stop is None else stop
        if self.array is not None:
            return self.array[start:stop]
        buffer = bytearray((stop - start) * self._item_bytes)
        got = os.preadv(self._descriptor(), [buffer], self.offset + start * self._item_bytes)
        if got != len(buffer):
            raise DataError(f"image cache {self.path} is shorter than its header says; delete it")
        return np.frombuffer(buffer, dtype=np.uint8).reshape(stop - start, *self.shape[1:])

    def _to_float(self, pixels: np.ndarray) -> torch.Tensor:
        return pixels_to_float(pixels, self.mean, self.std)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._to_float(self.uint8(int(index))[0])

    def tensor(self) -> torch.Tensor:
        """Every image as one float tensor ``[N, C, S, S]`` (for small datasets only)."""
        return self._to_float(self.uint8(0, len(self)))

    def channel_stats(self, class_ids: Sequence[int]) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation (of ``x / 255``) over the images of the
        classes ``class_ids``, from the exact pixel sums recorded when decoding."""
        s = self.shape[2]
        count = sum(self.class_sizes[c] for c in class_ids) * s * s
        sums = np.sum([self.class_sums[c] for c in class_ids], axis=0, dtype=np.float64)
        squares = np.sum([self.class_squares[c] for c in class_ids], axis=0, dtype=np.float64)
        mean = sums / count / 255.0
        var = np.maximum(squares / count / 255.0**2 - mean**2, 0.0)
        std = np.where(var > 0, np.sqrt(var), 1.0)  # a constant channel is only shifted
        return mean.tolist(), std.tolist()

    def normalized(self, mean: Sequence[float], std: Sequence[float]) -> "ImageStore":
        """The same images, handed out as ``(x / 255 - mean) / std`` per channel."""
        return ImageStore(self.shape, self.class_sizes, self.class_sums, self.class_squares,
                          self.path, self.offset, self.array, list(mean), list(std))


# ---------------------------------------------------------------------------------------
# Decoding a listing
# ---------------------------------------------------------------------------------------
def decode_listing(
    listing: Listing, image_size: int, channels: Optional[int], invert: bool,
    write: Callable[[int, np.ndarray], None],
) -> dict[str, Any]:
    """Decode every image in label order, handing ``write(first_index, block)`` blocks of
    uint8 images; returns what the header records (channels, per-class sums)."""
    items = [item for files in listing.files for item in files]
    sizes = listing.class_sizes
    label_of = np.repeat(np.arange(len(sizes)), sizes)
    with listing.reader() as read:
        gray_among_colour = 0
        if channels is None:
            channels, gray_among_colour = _detect_channels(listing, read)
        sums = np.zeros((len(sizes), channels), dtype=np.int64)
        squares = np.zeros((len(sizes), channels), dtype=np.int64)

        def one(item: str) -> np.ndarray:
            return decode_image(read(item), listing.describe(item), image_size, channels, invert)

        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while it decodes
            for start in range(0, len(items), _CHUNK):
                block = np.stack(list(pool.map(one, items[start : start + _CHUNK])))
                write(start, block)
                flat = block.reshape(len(block), channels, -1)
                labels = label_of[start : start + len(block)]
                np.add.at(sums, labels, flat.sum(axis=2, dtype=np.int64))
                np.add.at(squares, labels, np.square(flat, dtype=np.int64).sum(axis=2))
    return {
        "channels": channels,
        "gray_among_colour": gray_among_colour,
        "class_sums": sums.tolist(),
        "class_squares": squares.tolist(),
    }


def decode_in_memory(listing: Listing, image_size: int, channels: Optional[int], invert: bool) -> ImageStore:
    total = sum(listing.class_sizes)
    arrays: list[np.ndarray] = []

    def write(start: int, block: np.ndarray) -> None:
        if not arrays:  # the channels are known once the first block is decoded
            arrays.append(np.empty((total, *block.shape[1:]), dtype=np.uint8))
        arrays[0][start : start + len(block)] = block

    info = decode_listing(listing, image_size, channels, invert, write)
    array = arrays[0] if arrays else np.empty((0, info["channels"], image_size, image_size), np.uint8)
    return ImageStore(tuple(array.shape), listing.class_sizes, info["class_sums"],
                      info["class_squares"], array=array)
