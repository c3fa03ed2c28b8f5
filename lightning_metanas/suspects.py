"""Which training images of a task are probably filed under the wrong class.

An image is suspect when the evidence disagrees with its label. Fine-tuning to zero training
loss hides that evidence in the final network (it memorises a wrong label as well as a right
one), so the scores here look where it is still visible:

* ``prototype``: in the meta-learned feature space, before any fine-tuning, how much closer
  the image lies to another class's mean than to the mean of its own class without it
  (leave-one-out); an image alone in its class has no own mean and is never suspect;
* ``aum``: minus the area under the margin (Pleiss et al., 2020), the image's mean margin over
  the fine-tuning steps: a wrong label is learnt last;
* ``margin`` and ``loss``: the final network's margin and cross-entropy (for comparison).

Every score is "higher = more suspect"; ``bench/robust_adapt.py`` measures them on Omniglot's
validation classes and chooses the default and its threshold there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn.functional as F

from lightning_metanas.errors import SettingsError

SCORES = ("prototype", "aum", "margin", "loss")


@dataclass
class SuspectConfig:
    """How adapt.py ranks suspect labels (``--suspects.*``).

    Args:
        score: one of ``prototype``, ``aum``, ``margin``, ``loss`` (module docstring).
        threshold: an image whose score exceeds it is listed as a suspect. 0.22 (with
            ``layers`` 2) was chosen on Omniglot's validation classes
            (``bench/robust_adapt_threshold.py --layers 1 2 3`` ->
            ``bench/robust_adapt/layers_val.json``: the largest worst-network precision-recall
            minimum at 20% label noise, 5-way 5-shot, 200 tasks, four networks: 0.78, against
            0.74 for the last layer alone at its best threshold, 0.23; the last layer alone was the
            default before, with 0.24 chosen on two of the networks, ``threshold_val.json``).
        drop: adapt again from the meta-weights without the suspects (adapt.py's
            ``--drop_suspects``): ``true``, ``false``, or ``auto`` (the default): only when at
            least ``auto_share`` of the training images are suspects, i.e. when the folder looks
            mislabelled rather than holding a few odd drawings. Always dropping cost clean
            5-shot tasks 0.64 points and imbalanced ones 1.92 on validation classes (good images
            lost); ``auto`` costs them at most 0.12 and keeps most of the gain at 20% and 40%
            label noise (``bench/robust_adapt_auto.py`` -> ``bench/robust_adapt/auto_val.json``).
        layers: the ``prototype`` score averaged over the last ``layers`` layers' features. 2
            became the default by a rule fixed before its validation run (no clean or
            imbalanced validation setting more than 0.25 points below the one-layer default, the
            noisy ones at least as good on the mean): clean and imbalanced -0.12 to +0.08, 20% and
            40% wrong labels 82.45 vs 81.34 (``bench/robust_adapt.py --split val``, RESULTS.md
            "On site").
        auto_share: the share of suspects at which ``auto`` drops them; 0.1 was chosen on
            validation classes by a rule fixed first (the best mean accuracy over clean,
            noisy and imbalanced tasks among the shares that cost no clean or imbalanced
            setting more than 0.25 points; the median clean 5-shot task lists 0 to 4% of its
            images, one with 20% noise 20%).
    """

    score: Literal["prototype", "aum", "margin", "loss"] = "prototype"
    threshold: float = 0.22
    drop: Union[bool, Literal["auto"]] = "auto"
    auto_share: float = 0.1
    layers: int = 2

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise SettingsError(f"--suspects.score must be one of {list(SCORES)}, got {self.score!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise SettingsError(f"--suspects.threshold must be a number, got {self.threshold!r}")
        if not isinstance(self.drop, bool) and self.drop != "auto":
            raise SettingsError(f"--drop_suspects must be true, false or auto, got {self.drop!r}")
        if isinstance(self.auto_share, bool) or not isinstance(self.auto_share, (int, float)) \
                or not 0 <= self.auto_share <= 1:
            raise SettingsError(f"--suspects.auto_share must be a share in [0, 1], got {self.auto_share!r}")
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 1:
            raise SettingsError(f"--suspects.layers must be a whole number of layers, 1 or more, got {self.layers!r}")

    def drops(self, listed: int, images: int) -> bool:
        """Whether to adapt again without ``listed`` suspects of ``images`` training images."""
        if not listed or self.drop is False:
            return False
        return self.drop is True or listed / images >= self.auto_share


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The labelled class's logit minus the largest other logit, per image."""
    own = logits.gather(-1, labels[:, None])[:, 0]
    other = logits.scatter(-1, labels[:, None], float("-inf")).amax(-1)
    return own - other


def margin_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -margins(logits, labels)


def loss_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def prototype_scores(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per image, with ``own`` the squared distance of its (L2-normalised) features to its
    class's mean without it and ``other`` that to the nearest other class's mean:
    ``(own - other) / (own + other)``, in [-1, 1], positive when nearer another class than its
    own; ``-inf`` for an image alone in its class. Divided by the sum so that one threshold
    fits networks whose feature spaces are spread differently (on validation classes the best
    threshold of the plain difference was 0.03 for Conv-4 and 0.2 for a 5-layer net; of this
    ratio, 0.25 and 0.2)."""
    f = F.normalize(features.double(), dim=-1)
    counts = torch.bincount(labels, minlength=num_classes).double()
    sums = torch.zeros(num_classes, f.shape[1], dtype=f.dtype).index_add_(0, labels, f)
    means = sums / counts.clamp(min=1)[:, None]
    distances = torch.cdist(f, means).square()
    distances[:, counts == 0] = float("inf")  # a class without images has no mean
    rest = counts[labels] - 1
    own_mean = (sums[labels] - f) / rest.clamp(min=1)[:, None]
    own = (f - own_mean).square().sum(-1)
    other = distances.scatter(-1, labels[:, None], float("inf")).amin(-1)
    ratio = torch.where(other.isinf(), -torch.ones_like(own), (own - other) / (own + other).clamp(min=1e-12))
    return torch.where(rest > 0, ratio, torch.full_like(own, float("-inf"))).float()


def layered_prototype_scores(features: list[torch.Tensor], labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``prototype_scores`` in each layer's feature space, averaged: one layer's view of which
    class an image resembles is noisy on a handful of images, and on validation classes the
    average over the last two layers separated wrong labels better than the last layer alone
    (``SuspectConfig.layers``)."""
    return torch.stack([prototype_scores(f, labels, num_classes) for f in features]).mean(0)


class MarginTrace:
    """The mean margin of each of ``n`` images over the fine-tuning steps that saw it: pass
    as ``finetune(observe=...)``; ``scores()`` is the ``aum`` suspect score."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels
        self.total = torch.zeros(len(labels), dtype=torch.float64)
        self.seen = torch.zeros(len(labels), dtype=torch.float64)

    def __call__(self, index: torch.Tensor, logits: torch.Tensor) -> None:
        index = index.cpu()
        self.total.index_add_(0, index, margins(logits.cpu().double(), self.labels[index]))
        self.seen.index_add_(0, index, torch.ones(len(index), dtype=torch.float64))

    def scores(self) -> torch.Tensor:
        return (-self.total / self.seen.clamp(min=1)).float()


def flagged(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """The images whose score exceeds ``threshold``, most suspect first, keeping in every class
    its least suspect image (a class is never emptied: its one example may be right)."""
    out = []
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        order = members[scores[members].argsort(descending=True)]
        out += [int(i) for i in order[:-1] if scores[i] > threshold]
    return torch.tensor(sorted(out, key=lambda i: -float(scores[i])), dtype=torch.long)


def precision_recall(flags: torch.Tensor, wrong: torch.Tensor) -> tuple[int, int, int]:
    """(images flagged and wrong, flagged, wrong) for index tensor ``flags`` and boolean mask
    ``wrong``: pooled over tasks, precision is the first over the second, recall over the third."""
    hits = int(wrong[flags].sum()) if len(flags) else 0
    return hits, len(flags), int(wrong.sum())


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """The probability that a random positive scores above a random negative (ties count
    half): how well ``scores`` rank ``positive`` first, whatever the threshold."""
    pos, neg = scores[positive].double(), scores[~positive].double()
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    return float(greater.mean())
