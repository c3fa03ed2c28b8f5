"""The statistics the project reports: few-shot accuracy the way papers report it (mean over
tasks with a 95% confidence interval), and the predictor's rank quality (Kendall's tau)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.functional.regression import kendall_rank_corrcoef


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


def kendall_tau(predicted: Sequence[float] | torch.Tensor, measured: Sequence[float] | torch.Tensor) -> Optional[float]:
    """Kendall's rank correlation (tau-b, torchmetrics') of paired values: the rank quality the
    performance predictor is trusted by, the figure the plots and the report show, and the
    SuperNet's agreement with stand-alone training (``ranking.py``). None with fewer than two
    pairs; 0.0 when one side is constant (no rank information). Tensors are taken as they
    are (the predictor's float32), numbers in float64 (so that no two values merge)."""
    if len(predicted) < 2:
        return None
    tau = float(kendall_rank_corrcoef(_values(predicted), _values(measured)))
    return tau if tau == tau else 0.0


def _values(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.tensor([float(v) for v in values], dtype=torch.float64)
