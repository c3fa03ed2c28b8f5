"""How well one ordering of architectures agrees with another: the statistics by which weight-
sharing NAS papers (SPOS, FairNAS, the NAS-Bench studies) judge a SuperNet against stand-alone
training, computed with torchmetrics; the tau is ``metrics.kendall_tau``, the one every part of
the project reports."""
from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics.functional.regression import spearman_corrcoef

from lightning_metanas.metrics import kendall_tau


def _tensor(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


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
