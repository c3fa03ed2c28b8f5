"""Where the meta-train step gets its architectures from.

This is the one seam between the search and the weight meta-learning: the LightningModule
asks its ``sampler`` for the architectures of a meta-batch and, for evaluation, for the
current best; the search (a callback) replaces or updates the sampler. Nothing else crosses
over.

How a meta-batch's architectures are drawn from the space is the *sampling rule*, because the
SuperNet's weights are only as good at ranking architectures as the way its paths were trained
(``bench/ranking.py`` measures it against stand-alone ground truth):

* ``uniform``: every task draws independently (single-path one-shot, Guo et al. 2020);
* ``fair``: within a meta-batch, depths, and each layer slot's operations and widths, are
  dealt from shuffled decks, so every candidate of a slot is trained equally often (strict
  fairness, FairNAS, Chu et al. 2021), not just equally often on average;
* ``sandwich``: the largest (deepest, widest) and the smallest (shallowest, narrowest)
  subnets are in every meta-batch, the rest dealt fairly (the sandwich rule of BigNAS /
  once-for-all), so the nested extremes of the weight sharing are trained every step.
"""
from __future__ import annotations

import random
from typing import Literal, Optional, Protocol, Sequence

from lightning_metanas.search_space import Architecture, SearchSpace

SamplingRule = Literal["uniform", "fair", "sandwich"]
SAMPLING_RULES: tuple[str, ...] = ("uniform", "fair", "sandwich")


def _deal(items: Sequence, count: int, rng: random.Random) -> list:
    """``count`` items, each of ``items`` equally often (the remainder drawn without
    repeats), in random order."""
    deck = list(items) * (count // len(items)) + rng.sample(list(items), count % len(items))
    rng.shuffle(deck)
    return deck


def draw(space: SearchSpace, rng: random.Random, count: int, rule: SamplingRule = "uniform") -> list[Architecture]:
    """The architectures of ``count`` tasks under ``rule`` (see the module's docstring)."""
    if rule == "uniform":
        return [space.sample(rng) for _ in range(count)]
    fixed: list[Architecture] = []
    if rule == "sandwich" and count >= 2:
        fixed = [
            Architecture(tuple(rng.choice(space.ops) for _ in range(space.max_depth)),
                         (space.max_width,) * space.max_depth),
            Architecture(tuple(rng.choice(space.ops) for _ in range(space.depths[0])),
                         (space.widths[0],) * space.depths[0]),
        ]
    elif rule not in SAMPLING_RULES:
        raise ValueError(f"unknown sampling rule {rule!r}; choose one of {list(SAMPLING_RULES)}")
    n = count - len(fixed)
    depths = _deal(space.depths, n, rng)
    ops: list[list[str]] = [[] for _ in range(n)]
    widths: list[list[int]] = [[] for _ in range(n)]
    for slot in range(space.max_depth):
        reaching = [t for t in range(n) if depths[t] > slot]
        if not reaching:
            continue
        for t, op, width in zip(reaching, _deal(space.ops, len(reaching), rng), _deal(space.widths, len(reaching), rng)):
            ops[t].append(op)
            widths[t].append(width)
    return fixed + [Architecture(tuple(o), tuple(w)) for o, w in zip(ops, widths)]


class ArchitectureSampler(Protocol):
    def sample_batch(self, rng: random.Random, count: int) -> list[Architecture]:
        """The architectures of the ``count`` tasks of one meta-batch."""

    def best(self) -> Architecture:
        """The architecture that validation and meta-test evaluate."""


class SpaceSampler:
    """The whole space under a sampling rule (``uniform``, ``fair`` or ``sandwich``), before any
    search has run (one-shot training).

    ``best`` is what evaluation uses: the space's reference (Conv-4) unless told otherwise,
    e.g. the search's best restored from a checkpoint.
    """

    def __init__(self, space: SearchSpace, best: Optional[Architecture] = None, rule: SamplingRule = "uniform") -> None:
        self.space, self.best_arch, self.rule = space, best, rule

    def sample_batch(self, rng: random.Random, count: int) -> list[Architecture]:
        return draw(self.space, rng, count, self.rule)

    def best(self) -> Architecture:
        return self.best_arch or self.space.reference()


class FixedSampler:
    """Always the same architecture: meta-training one network, e.g. the Conv-4 baseline."""

    def __init__(self, arch: Architecture) -> None:
        self.arch = arch

    def sample_batch(self, rng: random.Random, count: int) -> list[Architecture]:
        return [self.arch] * count

    def best(self) -> Architecture:
        return self.arch


class PopulationSampler:
    """The evolution's current population, plus a share of draws from the whole space (under
    the sampling rule) so that the SuperNet keeps training paths outside the population (the
    search's next offspring)."""

    def __init__(
        self, space: SearchSpace, population: list[Architecture], best: Architecture,
        uniform_share: float, rule: SamplingRule = "uniform",
    ) -> None:
        if not population:
            raise ValueError("PopulationSampler needs at least one architecture")
        self.space, self.population = space, list(population)
        self.best_arch, self.uniform_share, self.rule = best, uniform_share, rule

    def sample_batch(self, rng: random.Random, count: int) -> list[Architecture]:
        if self.rule == "uniform":  # one coin and one draw per task, in task order
            return [
                self.space.sample(rng) if rng.random() < self.uniform_share else rng.choice(self.population)
                for _ in range(count)
            ]
        from_space = [rng.random() < self.uniform_share for _ in range(count)]
        spread = iter(draw(self.space, rng, sum(from_space), self.rule))
        members = iter(_deal(self.population, count - sum(from_space), rng))
        return [next(spread) if s else next(members) for s in from_space]

    def best(self) -> Architecture:
        return self.best_arch
