"""Where the meta-train step gets its architectures from.

This is the one seam between the search and the weight meta-learning: the LightningModule
asks its ``sampler`` for an architecture per task and, for evaluation, for the current best;
the search (a callback) replaces or updates the sampler. Nothing else crosses over.
"""
from __future__ import annotations

import random
from typing import Optional, Protocol

from lightning_metanas.search_space import Architecture, SearchSpace


class ArchitectureSampler(Protocol):
    def sample(self, rng: random.Random) -> Architecture:
        """An architecture for one meta-training task."""

    def best(self) -> Architecture:
        """The architecture that validation and meta-test evaluate."""


class UniformSampler:
    """Uniform over the whole space, before any search has run (single-path one-shot).

    ``best`` is what evaluation uses: the space's reference (Conv-4) unless told otherwise,
    e.g. the search's best restored from a checkpoint.
    """

    def __init__(self, space: SearchSpace, best: Optional[Architecture] = None) -> None:
        self.space, self.best_arch = space, best

    def sample(self, rng: random.Random) -> Architecture:
        return self.space.sample(rng)

    def best(self) -> Architecture:
        return self.best_arch or self.space.reference()


class FixedSampler:
    """Always the same architecture: meta-training one network, e.g. the Conv-4 baseline."""

    def __init__(self, arch: Architecture) -> None:
        self.arch = arch

    def sample(self, rng: random.Random) -> Architecture:
        return self.arch

    def best(self) -> Architecture:
        return self.arch


class PopulationSampler:
    """The evolution's current population, plus a share of uniform samples so that the
    SuperNet keeps training paths outside the population (the search's next offspring)."""

    def __init__(
        self, space: SearchSpace, population: list[Architecture], best: Architecture, uniform_share: float
    ) -> None:
        if not population:
            raise ValueError("PopulationSampler needs at least one architecture")
        self.space, self.population = space, list(population)
        self.best_arch, self.uniform_share = best, uniform_share

    def sample(self, rng: random.Random) -> Architecture:
        if rng.random() < self.uniform_share:
            return self.space.sample(rng)
        return rng.choice(self.population)

    def best(self) -> Architecture:
        return self.best_arch
