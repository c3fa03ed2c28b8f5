"""Every random choice of the project from one rule: a generator derived from named keys.

A seed alone is not enough: task 10 of epoch 1 and task 1 of epoch 10 must not share a seed
(``seed + index`` would give them one), a DDP rank must draw its own tasks, a resumed run must
draw what the uninterrupted run would have, and drawing more in one place must not shift what
is drawn in another. So a generator is derived from the *path* of its use, e.g.
``(seed, "val", rank, epoch, index)``, and never shared between uses.

* ``rng(*keys)``: a ``random.Random`` (Python's string seeding: SHA-512 of ``key(*keys)``);
* ``seed_of(*keys)``: a well-mixed 64-bit integer (BLAKE2b of ``key(*keys)``), for libraries that
  take an integer (learn2learn draws from the global ``random``; torch generators);
* ``torch_generator(*keys)``: a ``torch.Generator`` seeded with ``seed_of(*keys)``;
* ``torch_seeded(*keys)``: torch's global generator seeded so for a block, then restored (for
  code that draws from it and takes no generator, such as a module's initialisation).

Both hashes are stable across processes, platforms and Python versions (unlike ``hash()``).
"""
from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from typing import Iterator

import torch


def key(*keys: object) -> str:
    """The keys joined as ``a/b/c``: the one string every generator is derived from."""
    return "/".join(str(k) for k in keys)


def rng(*keys: object) -> random.Random:
    return random.Random(key(*keys))


def seed_of(*keys: object) -> int:
    return int.from_bytes(hashlib.blake2b(key(*keys).encode(), digest_size=8).digest(), "big")


def torch_generator(*keys: object) -> torch.Generator:
    # torch takes seeds below 2**63 without complaint on every version
    return torch.Generator().manual_seed(seed_of(*keys) & (2**63 - 1))


@contextmanager
def torch_seeded(*keys: object) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of(*keys) & (2**63 - 1))
        yield
