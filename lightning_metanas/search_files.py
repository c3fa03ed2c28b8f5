"""The files a search leaves next to its checkpoints after every generation, so that plots and
the report can be drawn again from files alone: ``best_arch.json`` (the best architecture),
``search_history.json`` (one ``GenerationRecord`` per generation) and ``scored.json`` (the
population and every architecture scored, with score, the predictor's estimate, parameters
and multiply-accumulates). ``callbacks/evolution.py`` writes them; ``report.py`` reads them.

A *row* of ``scored.json`` is what ``plots.py`` draws: ``arch`` (the architecture's JSON),
``architecture`` (its label), ``score``, ``predicted`` (None when the predictor did not
screen it), ``params``, ``flops``; plus ``born`` in the population, ``in_population`` in the
archive.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from lightning_metanas.evolution import EvolutionarySearch
from lightning_metanas.search_space import Architecture

BEST_ARCH = "best_arch.json"
HISTORY = "search_history.json"
SCORED = "scored.json"
Size = Callable[[Architecture], tuple[int, int]]  # (parameters, multiply-accumulates per image)


def _row(arch: Architecture, score: float, predicted: Optional[float], size: Size) -> dict:
    params, flops = size(arch)
    return {"arch": arch.to_dict(), "architecture": str(arch), "score": float(score),
            "predicted": None if predicted is None else float(predicted), "params": params, "flops": flops}


def scored_record(search: EvolutionarySearch, size: Size, **shape: Optional[int]) -> dict:
    """The content of ``scored.json``: the generation, the input ``shape`` (``ways``,
    ``image_size``, ``image_channels``), the best architecture, the population rows and the
    archive rows (every architecture scored, its latest score)."""
    alive = {m.arch for m in search.population}
    return {
        "generation": search.history[-1].generation,
        **shape,
        "best": search.best().arch.to_dict(),
        "population": [dict(_row(m.arch, m.score, m.predicted, size), born=m.born) for m in search.population],
        "archive": [dict(_row(arch, score, search.predicted.get(arch), size), in_population=arch in alive)
                    for arch, score in search.archive.items()],
    }


def write_search_files(directory: Path, search: EvolutionarySearch, scored: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    search.best().arch.save(directory / BEST_ARCH)
    history = [record.to_dict() for record in search.history]
    (directory / HISTORY).write_text(json.dumps(history, indent=1) + "\n")
    (directory / SCORED).write_text(json.dumps(scored, indent=1) + "\n")
