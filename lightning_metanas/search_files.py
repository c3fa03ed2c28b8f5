"""The files a search leaves next to its checkpoints after every generation, so that plots and
the report can be drawn again from files alone: ``best_arch.json`` (the best architecture),
``search_history.json`` (one ``GenerationRecord`` per generation), ``scored.json`` (the
population and every architecture scored) and ``front.json`` (the accuracy-cost front: the
scored architectures no other scored one beats on accuracy and every cost at once); when the
search ends, ``why.json`` (``explain.explain``: why the best architecture, measured).
``callbacks/evolution.py`` writes them; ``report.py`` reads them.

A *row* of ``scored.json`` is what ``plots.py`` draws: ``arch`` (the architecture's JSON),
``architecture`` (its label), ``accuracy`` (the raw mean query accuracy after adaptation),
``score`` (what the search ranks by: the accuracy times the size prior), ``predicted`` (None
when the predictor did not screen it), ``params``, ``flops`` and, under a latency budget,
``latency_ms``; plus ``born`` in the population, ``in_population`` in the archive.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lightning_metanas.costs import CostModel
from lightning_metanas.evolution import EvolutionarySearch
from lightning_metanas.search_space import Architecture

BEST_ARCH = "best_arch.json"
WHY = "why.json"
HISTORY = "search_history.json"
SCORED = "scored.json"
FRONT = "front.json"
COSTS = ("params", "flops", "latency_ms")


def _row(search: EvolutionarySearch, arch: Architecture, score: float, costs: CostModel) -> dict:
    predicted = search.predicted.get(arch)
    return {"arch": arch.to_dict(), "architecture": str(arch), "accuracy": search.accuracies.get(arch, score),
            "score": float(score), "predicted": None if predicted is None else float(predicted), **costs.of(arch)}


def scored_record(search: EvolutionarySearch, costs: CostModel, **shape: Optional[int]) -> dict:
    """The content of ``scored.json``: the generation, the input ``shape`` (``ways``,
    ``image_size``, ``image_channels``), the budget, the best architecture, the population rows
    and the archive rows (every architecture scored, its latest score)."""
    alive = {m.arch for m in search.population}
    return {
        "generation": search.history[-1].generation,
        **shape,
        "budget": costs.budget_record(),
        "best": search.best().arch.to_dict(),
        "population": [dict(_row(search, m.arch, m.score, costs), born=m.born) for m in search.population],
        "archive": [dict(_row(search, arch, score, costs), in_population=arch in alive)
                    for arch, score in search.archive.items()],
    }


def cost_keys(rows: list[dict]) -> list[str]:
    """The costs of ``COSTS`` that every row holds: the ones a front compares."""
    return [k for k in COSTS if all(k in r for r in rows)]


def dominates(a: dict, b: dict, keys: list[str]) -> bool:
    """Row ``a`` is at least as accurate as ``b`` and at most as costly in every cost of
    ``keys``, and strictly better in one."""
    no_worse = a["accuracy"] >= b["accuracy"] and all(a[k] <= b[k] for k in keys)
    better = a["accuracy"] > b["accuracy"] or any(a[k] < b[k] for k in keys)
    return no_worse and better


def accuracy_cost_front(rows: list[dict]) -> list[dict]:
    """The rows no other row dominates: at least as accurate and at most as costly in every
    cost the rows hold, and strictly better in one. Sorted by parameters."""
    keys = cost_keys(rows)
    front = [r for r in rows if not any(dominates(o, r, keys) for o in rows)]
    return sorted(front, key=lambda r: (r.get("params", 0), -r["accuracy"]))


def write_search_files(directory: Path, search: EvolutionarySearch, scored: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    search.best().arch.save(directory / BEST_ARCH)
    history = [record.to_dict() for record in search.history]
    (directory / HISTORY).write_text(json.dumps(history, indent=1) + "\n")
    (directory / SCORED).write_text(json.dumps(scored, indent=1) + "\n")
    front = {"budget": scored.get("budget", {}), "front": [
        {k: r[k] for k in ("arch", "architecture", "accuracy", "score", *COSTS) if k in r}
        for r in accuracy_cost_front(scored["archive"])]}
    (directory / FRONT).write_text(json.dumps(front, indent=1) + "\n")
