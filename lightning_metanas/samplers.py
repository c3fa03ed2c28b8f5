"""Where the meta-train step gets its architectures from.

This is the one seam between the search and the weight meta-learning: the LightningModule
asks its ``sampler`` for an architecture per task and, for evaluation, for the current best;
the search (a callback) replaces or updates the sampler. Nothing else crosses over.
"""
from __future__ import annotations

import random
from typing import Protocol

from lightning_metanas.search_space import Architecture, SearchSpace


class ArchitectureSampler(Protocol):
    def sample(self, rng: random.Random) -> Architecture:
        """An architecture for one meta-training task."""

    def best(self) -> Architecture:
        """The architecture that validation and meta-test evaluate."""


class UniformSampler:
    """Uniform over the whole space, before any search has run (single-path one-shot)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def sample(self, rng: random.Random) -> Architecture:
        return self.space.sample(rng)

    def best(self) -> Architecture:
        return self.space.reference()


class FixedSampler:
    """Always the same architecture: meta-training one network, e.g. the Conv-4 baseline."""

    def __init__(self, arch: Architecture) -> None:
        self.arch = arch

    def sample(self, rng: random.Random) -> Architecture:
        return self.arch

    def best(self) -> Architecture:
        return self.arch
