"""The search space: what an architecture is, and the moves the search makes in it.

An architecture is a plain, frozen, JSON-serialisable value (a tuple of operation names and a
tuple of channel widths, one per layer), so that it can be logged, hashed, de-duplicated,
written next to a checkpoint and read back without pickle or eval. Sampling, mutation and
crossover live here, beside the definition of what is valid, so that every architecture the
search produces is valid by construction.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from lightning_metanas.errors import SettingsError
from lightning_metanas.ops import OPERATIONS


class ArchitectureError(SettingsError):
    """An architecture, or a search-space setting, that the search space cannot hold."""


@dataclass(frozen=True)
class Architecture:
    """One subnet of the SuperNet: layer ``i`` applies ``ops[i]`` with ``widths[i]`` channels."""

    ops: tuple[str, ...]
    widths: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.ops) != len(self.widths):
            raise ArchitectureError(
                f"architecture has {len(self.ops)} ops but {len(self.widths)} widths; "
                "'ops' and 'widths' must have one entry per layer"
            )

    @property
    def depth(self) -> int:
        return len(self.ops)

    def to_dict(self) -> dict:
        return {"ops": list(self.ops), "widths": list(self.widths)}

    def __str__(self) -> str:
        return "-".join(f"{op}@{w}" for op, w in zip(self.ops, self.widths))

    @classmethod
    def from_dict(cls, data: object) -> "Architecture":
        if not isinstance(data, dict):
            raise ArchitectureError(
                f"an architecture must be a JSON object with keys 'ops' and 'widths', "
                f"got {type(data).__name__}"
            )
        missing = [k for k in ("ops", "widths") if k not in data]
        if missing:
            raise ArchitectureError(f"architecture is missing the field(s) {missing}")
        unknown = sorted(set(data) - {"ops", "widths"})
        if unknown:
            raise ArchitectureError(
                f"architecture has unknown field(s) {unknown}; allowed: 'ops', 'widths'"
            )
        ops, widths = data["ops"], data["widths"]
        if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
            raise ArchitectureError("architecture field 'ops' must be a list of operation names")
        if not isinstance(widths, list) or not all(
            isinstance(w, int) and not isinstance(w, bool) for w in widths
        ):
            raise ArchitectureError("architecture field 'widths' must be a list of integers")
        return cls(tuple(ops), tuple(widths))

    @classmethod
    def of(cls, value: "Architecture | dict") -> "Architecture":
        """``value`` itself, or the architecture its JSON form (``to_dict``) describes: every
        label (``str``) and comparison (``==``) of architectures read from files goes through
        here."""
        return value if isinstance(value, cls) else cls.from_dict(dict(value))

    @classmethod
    def from_json(cls, text: str) -> "Architecture":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchitectureError(f"architecture is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> "Architecture":
        """Read an architecture JSON file (plain JSON: nothing in it is executed)."""
        path = Path(path)
        if not path.is_file():
            raise ArchitectureError(f"architecture file {path} does not exist")
        try:
            return cls.from_json(path.read_text())
        except ArchitectureError as err:
            raise ArchitectureError(f"{path}: {err}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass
class SearchSpace:
    """Which operations, widths and depths the SuperNet holds.

    Args:
        ops: candidate operation of every layer (names from the operation registry).
        widths: candidate channel counts of every layer; weights are shared across widths
            (a narrower layer uses the first channels of the widest one).
        depths: candidate numbers of layers.
    """

    ops: tuple[str, ...] = tuple(OPERATIONS)
    widths: tuple[int, ...] = (32, 48, 64)
    depths: tuple[int, ...] = (3, 4, 5)

    def __post_init__(self) -> None:
        self.ops = tuple(self.ops)
        self.widths = tuple(sorted(set(int(w) for w in self.widths)))
        self.depths = tuple(sorted(set(int(d) for d in self.depths)))
        unknown = [op for op in self.ops if op not in OPERATIONS]
        if unknown or not self.ops:
            raise ArchitectureError(
                f"search_space.ops: unknown operation(s) {unknown or '(none given)'}; "
                f"allowed: {sorted(OPERATIONS)}"
            )
        if len(set(self.ops)) != len(self.ops):
            raise ArchitectureError(f"search_space.ops lists an operation twice: {list(self.ops)}")
        if not self.widths or min(self.widths) < 1:
            raise ArchitectureError(
                f"search_space.widths must be positive integers, got {list(self.widths)}"
            )
        if not self.depths or min(self.depths) < 1:
            raise ArchitectureError(
                f"search_space.depths must be positive integers, got {list(self.depths)}"
            )

    @property
    def max_width(self) -> int:
        return self.widths[-1]

    @property
    def max_depth(self) -> int:
        return self.depths[-1]

    def size(self) -> int:
        """Number of distinct architectures in the space."""
        per_layer = len(self.ops) * len(self.widths)
        return sum(per_layer**d for d in self.depths)

    def validate(self, arch: Architecture) -> Architecture:
        """Return ``arch`` if the space holds it, else raise naming the offending field."""
        if arch.depth not in self.depths:
            raise ArchitectureError(
                f"architecture has {arch.depth} layers; allowed depths: {list(self.depths)}"
            )
        for i, (op, width) in enumerate(zip(arch.ops, arch.widths)):
            if op not in self.ops:
                raise ArchitectureError(
                    f"architecture ops[{i}] = {op!r} is not in the search space; "
                    f"allowed: {list(self.ops)}"
                )
            if width not in self.widths:
                raise ArchitectureError(
                    f"architecture widths[{i}] = {width} is not in the search space; "
                    f"allowed: {list(self.widths)}"
                )
        return arch

    def reference(self) -> Architecture:
        """Conv-4, the classic MAML network, if the space holds it; else the deepest, widest
        stack of the first operation. Evaluation falls back to it before a search has run."""
        op = "conv3x3" if "conv3x3" in self.ops else self.ops[0]
        depth = 4 if 4 in self.depths else self.max_depth
        width = 64 if 64 in self.widths else self.max_width
        return Architecture((op,) * depth, (width,) * depth)

    def sample(self, rng: random.Random) -> Architecture:
        depth = rng.choice(self.depths)
        return Architecture(
            tuple(rng.choice(self.ops) for _ in range(depth)),
            tuple(rng.choice(self.widths) for _ in range(depth)),
        )

    def mutate(self, arch: Architecture, rng: random.Random, prob: float = 0.2) -> Architecture:
        """Resample each op and width with probability ``prob``; with the same probability add
        or drop a layer. Always returns an architecture that differs from ``arch`` (when the
        space has more than one), so that a mutation is never a wasted scoring."""
        if self.size() == 1:
            return arch
        while True:
            ops, widths = list(arch.ops), list(arch.widths)
            for i in range(len(ops)):
                if rng.random() < prob:
                    ops[i] = rng.choice(self.ops)
                if rng.random() < prob:
                    widths[i] = rng.choice(self.widths)
            if len(self.depths) > 1 and rng.random() < prob:
                depth = rng.choice([d for d in self.depths if d != len(ops)])
                while len(ops) > depth:
                    i = rng.randrange(len(ops))
                    del ops[i], widths[i]
                while len(ops) < depth:
                    i = rng.randrange(len(ops) + 1)
                    ops.insert(i, rng.choice(self.ops))
                    widths.insert(i, rng.choice(self.widths))
            child = Architecture(tuple(ops), tuple(widths))
            if child != arch:
                return child

    def crossover(self, a: Architecture, b: Architecture, rng: random.Random) -> Architecture:
        """Uniform crossover per layer; the child takes its depth from a random parent, and
        layers beyond the shorter parent come from the parent that has them."""
        depth = rng.choice((a.depth, b.depth))
        ops, widths = [], []
        for i in range(depth):
            parents = [p for p in (a, b) if i < p.depth]
            p = rng.choice(parents)
            q = rng.choice(parents)
            ops.append(p.ops[i])
            widths.append(q.widths[i])
        return Architecture(tuple(ops), tuple(widths))

    def encode(self, arch: Architecture) -> list[float]:
        """Fixed-length numeric features for the performance predictor: per layer slot a
        one-hot op (all zeros past the architecture's depth) and the width as a fraction of
        the widest; then the depth as a one-hot."""
        features: list[float] = []
        for i in range(self.max_depth):
            present = i < arch.depth
            for op in self.ops:
                features.append(1.0 if present and arch.ops[i] == op else 0.0)
            features.append(arch.widths[i] / self.max_width if present else 0.0)
        features.extend(1.0 if arch.depth == d else 0.0 for d in self.depths)
        return features

    @property
    def encoding_size(self) -> int:
        return self.max_depth * (len(self.ops) + 1) + len(self.depths)
