"""How well one ordering of architectures agrees with another: the statistics by which weight-
sharing NAS papers (SPOS, FairNAS, the NAS-Bench studies) judge a SuperNet against stand-alone
training, computed with torchmetrics so that every tau in the project is the same statistic."""
from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics.functional.regression import kendall_rank_corrcoef, spearman_corrcoef


def _tensor(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def kendall_tau(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Kendall's tau-b (ties allowed); 0 where either side has no order at all."""
    tau = float(kendall_rank_corrcoef(_tensor(scores), _tensor(truth)))
    return tau if tau == tau else 0.0


def rank_agreement(scores: Sequence[float], truth: Sequence[float], top: int = 5) -> dict:
    """Kendall tau and Spearman rho of ``scores`` against ``truth`` (higher is better on both),
    the rank in ``truth`` (1 = best) of the architecture ``scores`` puts first, and how many of
    the ``top`` best by ``scores`` are among the ``top`` best by ``truth``."""
    if len(scores) != len(truth) or len(scores) < 2:
        raise ValueError(f"need two equally long lists of at least 2 values, got {len(scores)} and {len(truth)}")
    rho = float(spearman_corrcoef(_tensor(scores), _tensor(truth)))
    by_truth = sorted(range(len(truth)), key=lambda i: -truth[i])
    by_score = sorted(range(len(scores)), key=lambda i: -scores[i])
    return {
        "kendall_tau": kendall_tau(scores, truth),
        "spearman_rho": rho if rho == rho else 0.0,
        "top1_ground_truth_rank": by_truth.index(by_score[0]) + 1,
        f"top{top}_overlap": len(set(by_truth[:top]) & set(by_score[:top])),
    }
