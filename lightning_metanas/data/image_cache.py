"""The decoded-image cache: one file per dataset, size and mode, decoded once, read by every
process without holding it.

The file is a JSON header saying what was decoded (the files' fingerprint, image size,
channels, inversion, class sizes, exact per-class pixel sums for normalisation and for
checking the pixels), padded to 4 KiB, then the pixels. Its name carries the same key, so a
changed dataset gets a new file (the stale one is removed) and is never silently reused; a
file under the expected name whose header says otherwise (copied or renamed from another
dataset or size) is refused, and one whose pixels no longer add up to its header's sums is
rebuilt. Runs read single images from it with ``os.pread``: a process holds only the images
of the tasks at hand, and the file lives once in the operating system's page cache, shared by
concurrent runs and by every DDP rank. The first process to need a cache builds it under an
``flock`` on the cache folder (sweeping what killed processes left half-written); the others
wait and then read it. A folder that cannot be written, or a disk that fills up, leaves
nothing behind and decodes into memory for the run, with a warning.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import DataError
from .images import ImageStore, Listing, PathLike, decode_listing, decode_in_memory

_MAGIC = b"LMNCACHE"
_VERSION = 1
_ALIGN = 4096
_CACHE_SUFFIX = ".u8"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_name(key: str, listing: Listing, image_size: int, channels: Optional[int], invert: bool) -> str:
    mode = {None: "auto", 1: "gray", 3: "rgb"}[channels]
    return (f"{key}-{image_size}px-{mode}{'-inverted' if invert else ''}-"
            f"{listing.fingerprint[:16]}{_CACHE_SUFFIX}")


def decode_images(
    listing: Listing,
    key: str,
    image_size: int,
    channels: Optional[int] = None,
    invert: bool = False,
    cache_dir: Optional[PathLike] = None,
) -> ImageStore:
    """The images of ``listing`` as an ``ImageStore``, decoded at most once per cache folder.

    Args:
        listing: the classes and their files.
        key: the dataset's registry name, the first part of the cache file's name.
        image_size: side of the square images.
        channels: 1 (grayscale), 3 (RGB) or ``None``: as the data is.
        invert: store ``255 - x``.
        cache_dir: folder of the cache file; ``None`` decodes into memory for this process
            only. A folder that cannot be written also decodes into memory, with a warning.

    Raises:
        DataError: a file does not decode (the partly written cache is removed), or the file
            under the cache's name was written for another dataset, size or mode.
    """
    expected = {"fingerprint": listing.fingerprint, "image_size": image_size,
                "channels_setting": channels, "invert": invert,
                "class_sizes": listing.class_sizes}
    if cache_dir is None:
        return decode_in_memory(listing, image_size, channels, invert)
    directory = Path(cache_dir).expanduser()
    path = directory / cache_name(key, listing, image_size, channels, invert)
    store = _open_cache(path, expected)
    if store is not None:
        return store
    try:
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        lock = os.open(directory, os.O_RDONLY)
    except OSError as err:
        warnings.warn(f"cannot create the image cache folder {directory} ({err}); decoding into "
                      "memory for this run only: set --data.cache_dir to a writable folder")
        return decode_in_memory(listing, image_size, channels, invert)
    try:
        with contextlib.suppress(OSError):  # a file system without locks: decode regardless
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process decodes; the others wait, then read
        store = _open_cache(path, expected)
        if store is None:
            _remove_abandoned(directory)
            store = _build_cache(path, listing, key, image_size, channels, invert, expected)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # nothing written: not even an empty cache folder
        raise
    finally:
        os.close(lock)
    return store


def _build_cache(
    path: Path, listing: Listing, key: str, image_size: int, channels: Optional[int],
    invert: bool, expected: dict[str, Any],
) -> ImageStore:
    total = sum(listing.class_sizes)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    started = time.perf_counter()
    _say(f"decoding {total} images of {listing.title} {listing.root} to {image_size}x{image_size} "
         f"into {path} (once; later runs read this file)")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as err:
        warnings.warn(f"cannot write the image cache {path} ({err}); decoding into memory for "
                      "this run only: set --data.cache_dir to a writable folder")
        return decode_in_memory(listing, image_size, channels, invert)
    try:
        data_offset = _ALIGN * 64  # room for the header; fixed up below if it needs more
        per_image = [0]

        def write(start: int, block: np.ndarray) -> None:
            per_image[0] = block[0].size
            os.pwrite(fd, block.tobytes(), data_offset + start * per_image[0])

        info = decode_listing(listing, image_size, channels, invert, write)
        header = dict(expected, format="lightning_metanas image cache", version=_VERSION,
                      dataset=key, title=listing.title, root=str(listing.root.absolute()),
                      class_names=listing.class_names, shape=[total, info["channels"], image_size, image_size],
                      **info)
        blob = json.dumps(header).encode()
        need = len(_MAGIC) + 8 + len(blob)
        if need > data_offset:  # a very long class list: move the pixels further back
            new_offset = -(-need // _ALIGN) * _ALIGN
            size = total * per_image[0]
            pixels = os.pread(fd, size, data_offset) if size else b""
            os.pwrite(fd, pixels, new_offset)
            data_offset = new_offset
        os.pwrite(fd, _MAGIC + len(blob).to_bytes(8, "little") + blob, 0)
        os.ftruncate(fd, data_offset + total * (per_image[0] or 0))
        os.fsync(fd)
    except BaseException as err:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            warnings.warn(f"cannot write the image cache {path} ({err.strerror}); nothing of it was kept, "
                          "decoding into memory for this run only: free space or set --data.cache_dir "
                          "to a folder with room")
            return decode_in_memory(listing, image_size, channels, invert)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _remove_stale(path, key, listing, expected)
    seconds = time.perf_counter() - started
    converted = info["gray_among_colour"]
    note = (f"; {converted} grayscale images among colour ones were replicated to RGB"
            if converted else "")
    _say(f"decoded {total} images in {seconds:.1f} s: {info['channels']} channel(s), "
         f"{path.stat().st_size / 1e9:.2f} GB{note}")
    store = _open_cache(path, expected)
    assert store is not None
    return store


def _remove_abandoned(directory: Path) -> None:
    """Delete the half-written caches of processes that died while decoding (killed, out of
    time): ``.<name>.<pid>.tmp``, up to a whole cache's size each. Called under the folder's
    lock, which every decoding process holds, so no live writer's file is touched; a pid still
    running (a file system without locks) is left alone too."""
    for tmp in directory.glob(f".*{_CACHE_SUFFIX}.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and _running(int(pid)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(path: Path, key: str, listing: Listing, expected: dict[str, Any]) -> None:
    """Delete caches of this dataset (same root) and setting written for older versions of its
    files: a changed dataset leaves no gigabyte-sized leftovers behind."""
    root = str(listing.root.absolute())
    same = ("image_size", "channels_setting", "invert")
    for other in path.parent.glob(f"{key}-*{_CACHE_SUFFIX}"):
        if other == path:
            continue
        try:
            header, _ = _read_header(other)
        except (OSError, ValueError):
            continue
        if (header.get("root"), header.get("dataset")) == (root, key) and all(
            header.get(k) == expected[k] for k in same
        ):
            with contextlib.suppress(OSError):
                other.unlink()


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        magic = f.read(len(_MAGIC))
        if magic != _MAGIC:
            raise ValueError("not a lightning_metanas image cache")
        length = int.from_bytes(f.read(8), "little")
        if not 0 < length < 1 << 31:
            raise ValueError("damaged header")
        header = json.loads(f.read(length))
    if not isinstance(header, dict) or header.get("version") != _VERSION:
        raise ValueError("another cache version")
    offset = -(-(len(_MAGIC) + 8 + length) // _ALIGN) * _ALIGN
    return header, max(offset, _ALIGN * 64)


def _open_cache(path: Path, expected: dict[str, Any]) -> Optional[ImageStore]:
    """The store of the cache at ``path``; ``None`` when there is none or it is damaged (then
    it is rebuilt); ``DataError`` when it was written for other files, size or mode."""
    if not path.is_file():
        return None
    try:
        header, offset = _read_header(path)
        shape = tuple(int(v) for v in header["shape"])
        c, s = shape[1], shape[2]
        size = path.stat().st_size
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(f"ignoring unreadable image cache {path} ({err}); rebuilding it")
        return None
    differs = [k for k, v in expected.items() if header.get(k) != v]
    if differs:
        raise DataError(
            f"image cache {path} was written for another dataset or setting (its "
            f"{', '.join(differs)} {'differs' if len(differs) == 1 else 'differ'}: it holds "
            f"{header.get('title')} at "
            f"{header.get('root')}, {header.get('image_size')}x{header.get('image_size')}); "
            "delete it (it is rebuilt) or set --data.cache_dir to another folder"
        )
    if size != offset + shape[0] * c * s * s:
        warnings.warn(f"ignoring truncated image cache {path}; rebuilding it")
        return None
    store = ImageStore(shape, header["class_sizes"], header["class_sums"],
                       header["class_squares"], path=path, offset=offset)
    damaged = _damaged_class(store)
    if damaged is not None:
        warnings.warn(f"image cache {path} is damaged (the pixels of class {damaged} do not add up to the "
                      "sums recorded when it was decoded); rebuilding it")
        return None
    return store


def _damaged_class(store: ImageStore, chunk: int = 4096) -> Optional[int]:
    """The first class whose pixel sums differ from the header's (a cache damaged after it was
    written: zeroed blocks, bit rot), or None. Reads the whole file once, paid by every process
    that opens the cache: Omniglot's 26 MB in 0.03-0.07 s here (RELIABILITY.md), about 2-3 s
    for a 1.3 GB miniImageNet cache at that rate."""
    sizes = store.class_sizes
    label_of = np.repeat(np.arange(len(sizes)), sizes)
    sums = np.zeros((len(sizes), store.channels), dtype=np.int64)
    for start in range(0, len(store), chunk):
        block = store.uint8(start, min(start + chunk, len(store)))
        np.add.at(sums, label_of[start : start + len(block)], block.reshape(len(block), store.channels, -1).sum(axis=2, dtype=np.int64))
    recorded = np.asarray(store.class_sums, dtype=np.int64).reshape(sums.shape)
    bad = np.flatnonzero((sums != recorded).any(axis=1))
    return int(bad[0]) if bad.size else None
