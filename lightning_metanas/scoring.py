"""Real scoring of architectures: few-shot adaptation on a fixed set of validation tasks."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from lightning_metanas.maml import TaskAdapter, Tasks
from lightning_metanas.search_space import Architecture

__all__ = ["Tasks", "score_architectures", "stack_tasks"]


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
