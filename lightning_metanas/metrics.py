"""Few-shot accuracy the way papers report it: mean over tasks with a 95% confidence interval."""
from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class TaskAccuracy(Metric):
    """Mean per-task accuracy and the half-width of its 95% normal confidence interval.

    Keeps only sums (count, sum, sum of squares), so it is cheap and reduces across DDP ranks
    by addition: every rank's tasks count once.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("squares", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, accuracies: torch.Tensor) -> None:
        acc = accuracies.detach().to(torch.float64).flatten()
        self.count += acc.numel()
        self.total += acc.sum()
        self.squares += (acc * acc).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1)
        mean = self.total / n
        var = (self.squares / n - mean * mean).clamp(min=0) * n / (n - 1).clamp(min=1)
        ci95 = 1.96 * torch.sqrt(var / n)
        return {"acc": mean.float(), "acc_ci95": ci95.float(), "tasks": self.count.float()}


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """The same statistic for a plain list (used where no Metric object is around)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return mean, 1.96 * math.sqrt(var / n)
