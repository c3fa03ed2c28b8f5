"""What an architecture costs (parameters, multiply-accumulates, one-image latency) and the
budget a search is held to.

Users on site need the most accurate network that fits their machine, so a budget is a
constraint *inside* the search (once-for-all's shape), not a filter afterwards: ``Budget.fits``
is asked before anything is sampled, mutated, crossed over or scored. Parameters and FLOPs are
exact counts of the standalone subnet; latency is measured (``latency.latency_ms``).

``SpaceCosts`` enumerates the parameters and FLOPs of *every* architecture of the space at once
(4.3 million in the default space, a few seconds with numpy): what a zero-cost rule needs to
rank the whole space, and what tells a user the smallest value a budget can take.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from typing import Callable, Iterator, Optional

import numpy as np

from lightning_metanas.errors import SettingsError
from lightning_metanas.latency import LatencyTable
from lightning_metanas.ops import pooled_size
from lightning_metanas.search_space import Architecture, SearchSpace
from lightning_metanas.supernet import SuperNet


class BudgetError(SettingsError):
    """A budget the search space cannot meet, or a malformed one."""


@dataclass(frozen=True)
class Budget:
    """Upper bounds on an architecture's cost; ``None``: no bound.

    Args:
        max_params: parameters of the standalone network.
        max_flops: multiply-accumulates of one forward pass of one image.
        max_latency_ms: one-image forward time on one CPU thread (``latency.latency_ms``),
            measured on the machine that runs the search.
        max_latency_vs_reference: the same time as a multiple of the space's reference network
            (Conv-4) timed by the same process: a bound that means the same on a fast and a
            slow CPU, so one config serves both (with ``max_latency_ms`` too, the tighter wins).
    """

    max_params: Optional[int] = None
    max_flops: Optional[int] = None
    max_latency_ms: Optional[float] = None
    max_latency_vs_reference: Optional[float] = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 < value < math.inf):
                raise BudgetError(f"search.{f.name} must be a number > 0 or null, got {value!r}")

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    @property
    def bounds_latency(self) -> bool:
        return self.max_latency_ms is not None or self.max_latency_vs_reference is not None

    def as_dict(self) -> dict[str, Optional[float]]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in self.as_dict().items()) or "none"


class CostModel:
    """Costs of architectures of ``space`` for ``ways``-way tasks on ``in_channels`` x
    ``image_size``² images, and whether they fit a ``budget``. Latencies are measured once per
    architecture (a ``LatencyTable``) and only when the budget bounds latency; a bound relative
    to the reference network is turned into milliseconds by timing that network once, here."""

    def __init__(self, space: SearchSpace, ways: int = 5, in_channels: int = 1, image_size: int = 28,
                 budget: Budget = Budget(), supernet: Optional[SuperNet] = None,
                 latency: Optional[Callable[[Architecture], float]] = None) -> None:
        self.space, self.ways, self.in_channels, self.image_size = space, ways, in_channels, image_size
        self.budget = budget
        self.supernet = supernet if supernet is not None else SuperNet(space, ways, in_channels)
        self.latency = latency or LatencyTable(in_channels, image_size, ways)
        self._reference_ms: Optional[float] = None

    @property
    def reference_latency_ms(self) -> float:
        """The reference network's (``space.reference()``, Conv-4) one-image time, measured once."""
        if self._reference_ms is None:
            self._reference_ms = float(self.latency(self.space.reference()))
        return self._reference_ms

    def latency_bound(self) -> Optional[float]:
        """The budget's latency bound in milliseconds on this machine (``None``: unbounded)."""
        b = self.budget
        bounds = [b.max_latency_ms] if b.max_latency_ms is not None else []
        if b.max_latency_vs_reference is not None:
            bounds.append(b.max_latency_vs_reference * self.reference_latency_ms)
        return min(bounds) if bounds else None

    def budget_record(self) -> dict[str, float]:
        """The budget as the search's files state it: the bounds set and, for a relative latency
        bound, the reference's time and the bound in milliseconds that this run applied."""
        record = self.budget.as_dict()
        if self.budget.max_latency_vs_reference is not None:
            record["reference_latency_ms"] = round(self.reference_latency_ms, 4)
            record["latency_bound_ms"] = round(float(self.latency_bound()), 4)
        return record

    def params(self, arch: Architecture) -> int:
        return int(self.supernet.num_parameters(arch))

    def flops(self, arch: Architecture) -> int:
        return int(self.supernet.flops(arch, self.image_size))

    def of(self, arch: Architecture, latency: Optional[bool] = None) -> dict[str, float]:
        """``params``, ``flops`` and, where the budget bounds it (or ``latency``), ``latency_ms``."""
        cost: dict[str, float] = {"params": self.params(arch), "flops": self.flops(arch)}
        if latency or (latency is None and self.budget.bounds_latency):
            cost["latency_ms"] = round(float(self.latency(arch)), 4)
        return cost

    def fits(self, arch: Architecture) -> bool:
        """Within every bound of the budget (the cheap counts first, latency last)."""
        b = self.budget
        if b.max_params is not None and self.params(arch) > b.max_params:
            return False
        if b.max_flops is not None and self.flops(arch) > b.max_flops:
            return False
        bound = self.latency_bound()
        return bound is None or self.latency(arch) <= bound

    def check_feasible(self) -> None:
        """Stop up front, in one line naming the smallest value the space allows, when no
        architecture meets a bound of the budget (each bound alone, then all together)."""
        b = self.budget
        if not b.active:
            return
        table = SpaceCosts(self.space, self.supernet, self.image_size)
        if b.max_params is not None and table.params.min() > b.max_params:
            raise BudgetError(f"search.max_params={b.max_params:g}: no architecture of the space has so few "
                              f"parameters; the smallest has {int(table.params.min())}")
        if b.max_flops is not None and table.flops.min() > b.max_flops:
            raise BudgetError(f"search.max_flops={b.max_flops:g}: no architecture of the space needs so few "
                              f"multiply-accumulates; the smallest needs {int(table.flops.min())}")
        bound = self.latency_bound()
        if bound is not None:
            fastest = min(self.latency(a) for a in table.fastest_candidates())
            if fastest > bound:
                if bound != b.max_latency_ms:  # the relative bound is the tighter one: name it
                    raise BudgetError(
                        f"search.max_latency_vs_reference={b.max_latency_vs_reference:g}: the fastest architecture "
                        f"of the space takes {fastest / self.reference_latency_ms:.3f} x the reference network's "
                        f"time on this machine ({fastest:.3f} vs {self.reference_latency_ms:.3f} ms); use at least that")
                raise BudgetError(
                    f"search.max_latency_ms={b.max_latency_ms:g}: the fastest architecture of the space "
                    f"takes {fastest:.3f} ms per image on this machine; use at least that")
        within = np.ones(len(table), dtype=bool)
        if b.max_params is not None:
            within &= table.params <= b.max_params
        if b.max_flops is not None:
            within &= table.flops <= b.max_flops
        # cheapest first: if the few fastest-looking candidates miss the latency bound, so does the rest
        if table.first(self.fits, key=-table.flops, mask=within, limit=200) is None:
            raise BudgetError(f"no architecture of the space meets the budget ({b}) all at once; loosen one bound")


class SpaceCosts:
    """Parameters and FLOPs of every architecture of ``space``, as numpy arrays indexed the
    same way (depth by depth, then layer choices in lexicographic order of ``space.ops`` x
    ``space.widths``); ``arch(i)`` decodes an index, ``additive`` enumerates any other cost
    that is a sum over layers."""

    def __init__(self, space: SearchSpace, supernet: SuperNet, image_size: int) -> None:
        self.space, self.supernet, self.image_size = space, supernet, image_size
        self.choices = [(op, w) for op in space.ops for w in space.widths]
        self._offsets = list(np.cumsum([0] + [len(self.choices) ** d for d in space.depths[:-1]]))
        self.depth = np.concatenate([np.full(len(self.choices) ** d, d, dtype=np.int64) for d in space.depths])
        self.params = self.additive(lambda i, op, c_in, w, size: supernet.layer_parameters(i, op, c_in, w),
                                    lambda c_in: supernet.head_parameters(c_in), dtype=np.int64)
        self.flops = self.additive(lambda i, op, c_in, w, size: supernet.slots[i][op].flops(c_in, w, size, size),
                                   lambda c_in: supernet.ways * c_in, dtype=np.int64)

    def additive(self, layer_cost: Callable[[int, str, int, int, int], float], head_cost: Callable[[int], float],
                 dtype: type = np.float64) -> np.ndarray:
        """``sum_i layer_cost(i, op_i, c_in_i, width_i, input_size_i) + head_cost(last width)``
        for every architecture, in index order."""
        space, supernet, k = self.space, self.supernet, len(self.choices)
        widths = np.array([w for _, w in self.choices], dtype=np.int64)
        per_depth = []
        for depth in space.depths:
            total = np.zeros(1, dtype=dtype)
            last_width = np.full(1, supernet.in_channels, dtype=np.int64)
            size = self.image_size
            for i in range(depth):
                inputs = [supernet.in_channels] if i == 0 else list(space.widths)
                layer = np.zeros((len(inputs), k), dtype=dtype)
                for row, c_in in enumerate(inputs):
                    for j, (op, w) in enumerate(self.choices):
                        layer[row, j] = layer_cost(i, op, c_in, w, size)
                rows = np.zeros_like(last_width) if i == 0 else np.searchsorted(space.widths, last_width)
                total = (total[:, None] + layer[rows]).reshape(-1)
                last_width = np.broadcast_to(widths, (last_width.shape[0], k)).reshape(-1)
                size = pooled_size(size)
            heads = {int(w): head_cost(int(w)) for w in np.unique(last_width)}
            per_depth.append(total + np.vectorize(heads.__getitem__, otypes=[dtype])(last_width))
        return np.concatenate(per_depth)

    def __len__(self) -> int:
        return self.depth.shape[0]

    def arch(self, index: int) -> Architecture:
        d = int(np.searchsorted(self._offsets, index, side="right")) - 1
        depth, rest, k = self.space.depths[d], int(index) - self._offsets[d], len(self.choices)
        picks = []
        for _ in range(depth):
            rest, j = divmod(rest, k)
            picks.append(self.choices[j])
        picks.reverse()
        return Architecture(tuple(op for op, _ in picks), tuple(w for _, w in picks))

    def fastest_candidates(self) -> list[Architecture]:
        """Per depth and operation, that operation at the narrowest width in every layer: the
        architectures a latency bound is checked against (latency on CPU follows the number
        and kind of layers more than their FLOPs: a pooling layer costs no multiply-accumulate
        and more time than a skip)."""
        w = self.space.widths[0]
        return [Architecture((op,) * d, (w,) * d) for d in self.space.depths for op in self.space.ops]

    def ranked(self, key: np.ndarray, mask: Optional[np.ndarray] = None) -> Iterator[int]:
        """Indices in decreasing order of ``key`` (ties: enumeration order), within ``mask``."""
        where = np.arange(len(self)) if mask is None else np.flatnonzero(mask)
        order = np.argsort(-key[where], kind="stable")
        yield from (int(i) for i in where[order])

    def first(self, fits: Callable[[Architecture], bool], key: Optional[np.ndarray] = None,
              mask: Optional[np.ndarray] = None, limit: int = 100000) -> Optional[Architecture]:
        """The first architecture in ``ranked(key, mask)`` order that ``fits``, trying at most
        ``limit``; ``None`` if none did."""
        order = self.ranked(key if key is not None else np.zeros(len(self)), mask)
        for index in itertools.islice(order, limit):
            arch = self.arch(index)
            if fits(arch):
                return arch
        return None
