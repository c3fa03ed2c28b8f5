"""Few-shot adaptation of one subnet: the only module that talks to learn2learn's MAML.

Everything else in the project asks this seam for "the query loss after adapting ``arch`` on
this support set" and never sees ``clone()``/``adapt()``, so a change of learn2learn (or a
move to a functional implementation) touches this file alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import learn2learn as l2l
import torch
import torch.nn.functional as F

from lightning_metanas.search_space import Architecture
from lightning_metanas.supernet import SuperNet

MetaGradient = Literal["first_order", "second_order"]


@dataclass
class MetaConfig:
    """How the SuperNet's weights are meta-learned.

    Args:
        inner_lr: SGD step size of the per-task adaptation.
        inner_steps: adaptation steps per task during meta-training.
        eval_inner_steps: adaptation steps per task at validation and meta-test.
        meta_lr: Adam learning rate of the outer (meta) update.
        meta_gradient: ``first_order`` (FOMAML) or ``second_order`` (exact MAML gradient
            through the inner steps).
    """

    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int = 3
    meta_lr: float = 0.003
    meta_gradient: MetaGradient = "first_order"

    def __post_init__(self) -> None:
        for name in ("inner_lr", "meta_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"model.meta.{name} must be > 0, got {getattr(self, name)}")
        for name in ("inner_steps", "eval_inner_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.meta.{name} must be an integer >= 1, got {value}")
        if self.meta_gradient not in ("first_order", "second_order"):
            raise ValueError(
                f"model.meta.meta_gradient must be one of ['first_order', 'second_order'], "
                f"got {self.meta_gradient!r}"
            )


@dataclass
class TaskResult:
    loss: torch.Tensor  # query loss after adaptation (differentiable for meta-training)
    accuracy: torch.Tensor  # query accuracy after adaptation (a detached scalar)


class TaskAdapter:
    """Adapts a subnet to one task with learn2learn's MAML and measures it on the query set.

    Holds the MAML wrapper as a plain attribute (not a registered submodule) so the SuperNet's
    parameters appear once in the LightningModule's state dict.
    """

    def __init__(self, supernet: SuperNet, inner_lr: float) -> None:
        self.supernet = supernet
        # allow_unused: the subnet leaves most SuperNet paths unused; their gradient is None
        # and learn2learn must skip them rather than fail.
        self.maml = l2l.algorithms.MAML(supernet, lr=inner_lr, allow_unused=True)

    def adapt(
        self, arch: Architecture, x: torch.Tensor, y: torch.Tensor, steps: int, create_graph: bool
    ) -> l2l.algorithms.MAML:
        learner = self.maml.clone()
        for _ in range(steps):
            loss = F.cross_entropy(learner(x, arch), y)
            learner.adapt(loss, first_order=not create_graph)
        return learner

    def meta_loss(
        self,
        arch: Architecture,
        support: tuple[torch.Tensor, torch.Tensor],
        query: tuple[torch.Tensor, torch.Tensor],
        steps: int,
        second_order: bool,
    ) -> TaskResult:
        """The query loss after ``steps`` inner steps, differentiable w.r.t. the SuperNet."""
        learner = self.adapt(arch, *support, steps=steps, create_graph=second_order)
        logits = learner(query[0], arch)
        loss = F.cross_entropy(logits, query[1])
        return TaskResult(loss, (logits.argmax(-1) == query[1]).float().mean().detach())

    @torch.enable_grad()  # adaptation needs gradients even inside validation / test loops
    def evaluate(
        self,
        arch: Architecture,
        support: tuple[torch.Tensor, torch.Tensor],
        query: tuple[torch.Tensor, torch.Tensor],
        steps: int,
    ) -> TaskResult:
        learner = self.adapt(arch, *support, steps=steps, create_graph=False)
        with torch.no_grad():
            logits = learner(query[0], arch)
            loss = F.cross_entropy(logits, query[1])
        return TaskResult(loss, (logits.argmax(-1) == query[1]).float().mean())
