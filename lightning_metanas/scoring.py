"""Real scoring of architectures: few-shot adaptation on a fixed set of validation tasks."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from lightning_metanas.maml import TaskAdapter
from lightning_metanas.search_space import Architecture

Tasks = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # leading task axis


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
    task. Deterministic (no sampling), so a score computed on any DDP rank is the same."""
    support_x, support_y, query_x, query_y = tasks
    scores = []
    for arch in archs:
        accuracies = [
            adapter.evaluate(
                arch, (support_x[t], support_y[t]), (query_x[t], query_y[t]), steps
            ).accuracy
            for t in range(support_x.shape[0])
        ]
        scores.append(float(torch.stack(accuracies).mean()))
        if progress is not None:
            progress(1)
    return scores
