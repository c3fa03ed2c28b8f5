"""Real scoring of architectures: few-shot adaptation on a fixed set of validation tasks."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from lightning_metanas.maml import TaskAdapter, Tasks
from lightning_metanas.search_space import Architecture

__all__ = ["Tasks", "score_architectures", "size_weighted", "stack_tasks"]


def stack_tasks(tasks: Sequence[Sequence[torch.Tensor]]) -> Tasks:
    """Tasks drawn one by one -> one tuple of tensors with a leading task axis."""
    return tuple(torch.stack([t[i] for t in tasks]) for i in range(4))  # type: ignore[return-value]


def score_architectures(
    adapter: TaskAdapter,
    archs: Sequence[Architecture],
    tasks: Tasks,
    steps: int,
    progress: Optional[Callable[[int], None]] = None,
) -> list[float]:
    """Mean query accuracy of each architecture after ``steps`` adaptation steps on every
    task (``TaskAdapter.evaluate_tasks``: vectorised where the adapter is). Deterministic (no
    sampling), so a score computed on any DDP rank is the same."""
    scores = []
    for arch in archs:
        scores.append(float(adapter.evaluate_tasks(arch, tasks, steps).accuracy.mean()))
        if progress is not None:
            progress(1)
    return scores


def size_weighted(score: float, params: int, largest: int, strength: float) -> float:
    """``score * (params / largest) ** strength``: the search's score with a prior for size.

    A SuperNet's score over-rates small subnets and parameter-free operations (pooling, skip)
    against stand-alone training: they adapt well on shared weights trained for everyone, but
    learn less when trained alone. Against the ground truth of ``bench/ground_truth`` this
    discount lifts Kendall tau from 0.42-0.56 to 0.59-0.70 on every SuperNet measured, for
    strengths 0.1-0.2 (BENCHMARKS.md, "Ranking fidelity"). ``strength`` 0 leaves the score as
    it is; the factor is at most 1 (``largest``: the space's largest subnet)."""
    if strength == 0:
        return score
    return score * (params / largest) ** strength
