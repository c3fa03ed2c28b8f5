"""Why this architecture: the SuperNet's own counterfactuals around a chosen architecture.

An explanation is only worth reading if it is measured, not asserted. For every layer of the
chosen architecture, each other operation (at the layer's width) and each other width (with
the layer's operation) is scored by the scorer the search used (``scoring.Scorer``: the same
tasks, adaptation steps and size prior), so each number is what the SuperNet would have scored
had the search chosen otherwise; the size prior's factor is kept apart from the raw accuracy.
A layer matters as much as its alternatives' scores spread. Where the choice sits among the
architectures the search scored comes from its archive (``search_files.accuracy_cost_front``),
and what the performance predictor expected, with its measured rank quality, from the predictor.
How far these counterfactuals agree with networks trained alone is measured by
``bench/explain_faithfulness.py`` (RESULTS.md).

The cost is bounded and stated in the result: one edit at a time, ``ops + widths - 2``
alternatives per layer, and with ``depth_edits`` each layer dropped or repeated once (distinct
results only): at most ``depth * (ops + widths)`` scorings, fewer where the scorer remembers an
architecture scored on the same weights; ``WhyConfig.tasks`` scores on fewer tasks than the
search did.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from lightning_metanas.costs import CostModel
from lightning_metanas.errors import SettingsError, require_int
from lightning_metanas.metrics import kendall_tau
from lightning_metanas.predictor import PerformancePredictor
from lightning_metanas.scoring import Scorer, size_weighted
from lightning_metanas.search_files import WHY, accuracy_cost_front, cost_keys, dominates
from lightning_metanas.search_space import Architecture, ArchitectureError, SearchSpace

__all__ = ["WHY", "Edit", "WhyConfig", "counterfactuals", "explain", "layer_importance", "one_edits", "write_why"]


@dataclass
class WhyConfig:
    """Settings of the explanation written when a search ends (``--search.why.<field>``).

    Args:
        enabled: write ``why.json`` next to ``best_arch.json`` when the search ends (and so the
            report's "why" section).
        tasks: score the counterfactuals on the first ``tasks`` of the search's scoring tasks
            (``None``: all of them, so scores the search already measured on the same weights
            are reused, and every number compares with the search's own).
        depth_edits: also score the architecture with each layer dropped and each layer
            repeated (where the space's depths allow it).
    """

    enabled: bool = True
    tasks: Optional[int] = None
    depth_edits: bool = True

    def __post_init__(self) -> None:
        for name in ("enabled", "depth_edits"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"search.why.{name} must be true or false, got {getattr(self, name)!r}")
        if self.tasks is not None:
            require_int("search.why.tasks", self.tasks, 1)


@dataclass(frozen=True)
class Edit:
    """One change to one layer (``layer`` counts from 1): ``kind`` ``op`` or ``width`` with the
    new ``value`` (the layer's own value: the chosen architecture itself), ``drop`` (the layer
    removed) or ``repeat`` (a copy inserted after it). ``reason`` says why the space cannot
    hold the result (``None``: it can)."""

    kind: str
    layer: int
    value: Optional[str | int]
    arch: Architecture
    reason: Optional[str] = None

    @property
    def label(self) -> str:
        return f"{self.kind} layer {self.layer}" + ("" if self.value is None else f" -> {self.value}")


def _checked(space: SearchSpace, kind: str, i: int, value: Optional[str | int], arch: Architecture) -> Edit:
    try:
        space.validate(arch)
        return Edit(kind, i + 1, value, arch)
    except ArchitectureError as err:
        return Edit(kind, i + 1, value, arch, str(err))


def one_edits(space: SearchSpace, arch: Architecture, depth_edits: bool = True) -> list[Edit]:
    """Every architecture one edit from ``arch``: per layer each op of the space at the layer's
    width and each width with the layer's op (the layer's own included, so each layer lists
    every alternative), then, with ``depth_edits``, each layer dropped and each repeated (the
    first edit of each distinct result; one the space's depths exclude is kept, with its
    reason)."""
    edits = []
    for i in range(arch.depth):
        for op in space.ops:
            ops = arch.ops[:i] + (op,) + arch.ops[i + 1:]
            edits.append(_checked(space, "op", i, op, Architecture(ops, arch.widths)))
        for width in space.widths:
            widths = arch.widths[:i] + (width,) + arch.widths[i + 1:]
            edits.append(_checked(space, "width", i, width, Architecture(arch.ops, widths)))
    if depth_edits:
        seen: set[Architecture] = set()
        for kind, cut, keep in (("drop", 0, 1), ("repeat", 1, 0)):
            for i in range(arch.depth):
                child = Architecture(arch.ops[:i + cut] + arch.ops[i + keep:], arch.widths[:i + cut] + arch.widths[i + keep:])
                if child not in seen:
                    seen.add(child)
                    edits.append(_checked(space, kind, i, None, child))
    return edits


def layer_importance(layers: Sequence[dict]) -> list[int]:
    """Layer numbers, the one whose alternatives' scores spread most first (ties: in order);
    a layer with nothing scored comes last."""
    return [layer["layer"] for layer in sorted(layers, key=lambda r: (-(r["spread"] or 0.0), r["layer"]))]


class _Entries:
    """Rows of the explanation: one architecture's raw accuracy, the size prior's factor, the
    score and its change against the chosen architecture, its costs and budget."""

    def __init__(self, scorer: Scorer, costs: Optional[CostModel], base: Architecture) -> None:
        self.scorer, self.costs, self.base = scorer, costs, base

    def row(self, arch: Architecture, reason: Optional[str] = None) -> dict:
        row: dict = {"architecture": str(arch), "arch": arch.to_dict(), "feasible": reason is None}
        if reason is not None:
            return row | {"reason": reason}
        scorer, base = self.scorer, self.base
        accuracy = scorer.accuracies[arch]
        row |= {"accuracy": accuracy, "prior": size_weighted(1.0, scorer.params(arch), scorer.largest, scorer.size_prior),
                "score": scorer.score(arch), "delta": scorer.score(arch) - scorer.score(base),
                "accuracy_delta": accuracy - scorer.accuracies[base]}
        if self.costs is None:
            return row | {"params": int(scorer.params(arch))}
        return row | self.costs.of(arch) | {"within_budget": self.costs.fits(arch)}


def _layer(edits: list[Edit], entries: _Entries, arch: Architecture, i: int) -> dict:
    rows: dict[str, list[dict]] = {"ops": [], "widths": []}
    for edit in edits:
        key = "op" if edit.kind == "op" else "width"
        rows[key + "s"].append({key: edit.value, "chosen": edit.arch == arch} | entries.row(edit.arch, edit.reason))
    scored = [r for r in rows["ops"] + rows["widths"] if r["feasible"]]
    others = [r for r in scored if not r["chosen"]]
    best = max(others, key=lambda r: r["score"]) if others else None
    return {
        "layer": i + 1, "op": arch.ops[i], "width": arch.widths[i], **rows,
        "spread": max(r["score"] for r in scored) - min(r["score"] for r in scored) if scored else None,
        "accuracy_spread": max(r["accuracy"] for r in scored) - min(r["accuracy"] for r in scored) if scored else None,
        "best_alternative": best and best["architecture"],
        "best_alternative_within_budget": best and best.get("within_budget"),
        "margin": None if best is None else -best["delta"],
    }


def _front(arch: Architecture, mine: dict, archive: Sequence[dict], neighbours: Sequence[dict]) -> dict:
    """Where ``arch`` sits among the architectures the search scored (``archive``: rows of
    ``scored.json``, each with ``accuracy`` and costs), and which one-edit neighbours dominate it."""
    rows = [r for r in archive if Architecture.of(r["arch"]) != arch] + [mine]
    keys = cost_keys(rows)
    front = accuracy_cost_front(rows)
    cheaper = [r for r in front if r is not mine and r.get("params", 0) < mine.get("params", 0)]
    richer = [r for r in front if r is not mine and r["accuracy"] > mine["accuracy"]]

    def pick(row: Optional[dict]) -> Optional[dict]:
        return row and {k: row[k] for k in ("architecture", "accuracy", "score", *keys) if k in row}

    edit_keys = [k for k in keys if all(k in n for n in neighbours)]
    return {
        "scored": len(rows), "on_front": any(r is mine for r in front), "front_size": len(front),
        "rank_by_accuracy": 1 + sum(r["accuracy"] > mine["accuracy"] for r in rows),
        "rank_by_score": 1 + sum(r.get("score", r["accuracy"]) > mine["score"] for r in rows),
        "dominated_by": [r["architecture"] for r in rows if dominates(r, mine, keys)],
        "next_cheaper_on_front": pick(max(cheaper, key=lambda r: r["accuracy"], default=None)),
        "next_more_accurate_on_front": pick(min(richer, key=lambda r: r.get("params", 0), default=None)),
        "dominating_edits": [n["architecture"] for n in neighbours if dominates(n, mine, edit_keys)],
    }


def _predictor(predictor: PerformancePredictor, archs: list[Architecture], scores: list[float]) -> dict:
    """The predictor's estimate of the chosen architecture (``archs[0]``) against the measured
    score, its held-out Kendall tau, and its tau on these very neighbours."""
    predicted = predictor.predict(archs)
    return {"estimate": predicted[0], "measured": scores[0], "error": predicted[0] - scores[0],
            "trained_on": predictor.trained_on, "held_out_tau": predictor.tau, "trusted": predictor.ready,
            "tau_on_neighbours": kendall_tau(predicted, scores)}


def explain(arch: Architecture, space: SearchSpace, scorer: Scorer, costs: Optional[CostModel] = None,
            archive: Optional[Sequence[dict]] = None, predictor: Optional[PerformancePredictor] = None,
            config: WhyConfig = WhyConfig(), tasks: Optional[int] = None, steps: Optional[int] = None) -> dict:
    """The content of ``why.json`` for ``arch``.

    Args:
        scorer: scores an architecture as the search did (its tasks, steps and size prior).
        costs: costs and budget; edits outside the budget are scored and marked
            (``within_budget``), since what the budget cost is part of the answer.
        archive: rows of ``scored.json``'s archive, for the place on the accuracy-cost front.
        predictor: the search's performance predictor (left out while untrained).
        tasks, steps: the scorer's tasks and adaptation steps, recorded with the cost.

    Returns a dict: ``layers`` (per layer, ``ops`` and ``widths``: one row per alternative, the
    chosen one marked, each with ``accuracy``, the size ``prior``'s factor, ``score`` and
    ``delta`` against the chosen; ``spread``; ``best_alternative`` and the ``margin`` the choice
    keeps over it), ``depth`` (the depth edits), ``importance`` (layer numbers, most important
    first), ``front``, ``predictor`` and ``cost`` (candidates, real scorings, seconds)."""
    space.validate(arch)
    edits = one_edits(space, arch, config.depth_edits)
    candidates = list(dict.fromkeys([arch] + [e.arch for e in edits if e.reason is None]))
    start = time.perf_counter()
    scores = scorer(candidates)
    real, seconds = scorer.real_scorings, time.perf_counter() - start
    entries = _Entries(scorer, costs, arch)
    mine = entries.row(arch)
    layers = [_layer([e for e in edits if e.layer == i + 1 and e.kind in ("op", "width")], entries, arch, i)
              for i in range(arch.depth)]
    depth = [{"edit": e.label, "kind": e.kind, "layer": e.layer} | entries.row(e.arch, e.reason)
             for e in edits if e.kind in ("drop", "repeat")]
    neighbours = [entries.row(a) for a in candidates[1:]]
    trained = predictor is not None and predictor.trained_on > 0
    return {
        "architecture": str(arch), "arch": arch.to_dict(),
        **{k: mine[k] for k in ("accuracy", "prior", "score")},
        "costs": {k: v for k, v in mine.items() if k in ("params", "flops", "latency_ms", "within_budget")},
        "space": {"ops": list(space.ops), "widths": list(space.widths), "depths": list(space.depths)},
        "budget": costs.budget_record() if costs is not None else {},
        "layers": layers,
        "depth": depth,
        "importance": layer_importance(layers),
        "front": _front(arch, mine, archive, neighbours) if archive is not None else None,
        "predictor": _predictor(predictor, candidates, scores) if trained else None,
        "cost": {"candidates": len(candidates), "scorings": real, "seconds": round(seconds, 2), "tasks": tasks,
                 "steps": steps, "size_prior": scorer.size_prior, "settings": asdict(config)},
    }


def counterfactuals(why: dict) -> dict[Architecture, dict]:
    """Every scored row of an explanation (``explain``'s result or ``why.json``), by
    architecture: the chosen one and each feasible one-edit neighbour."""
    rows = [r for layer in why["layers"] for r in layer["ops"] + layer["widths"]] + why["depth"]
    return {Architecture.of(r["arch"]): r for r in rows if r["feasible"]}


def write_why(directory: str | Path, why: dict) -> Path:
    path = Path(directory) / WHY
    path.write_text(json.dumps(why, indent=1) + "\n")
    return path
