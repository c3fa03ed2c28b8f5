"""MAML over the subnets of a SuperNet: the inner loop, and the meta-gradient of a task.

``TaskAdapter`` plays the part of learn2learn's ``algorithms.MAML``: one object holding the
SuperNet and the inner learning rate, with a few verbs. ``adapt`` is the inner loop, the only
one in the project: meta-training (``meta_gradient``, ``meta_batch_gradient``), scoring and
evaluation (``evaluate``) and the fine-tuning of ``adaptation.py`` all run it. Unlike
learn2learn's ``clone()``, which copies and differentiates every SuperNet parameter, it works
on the parameters the subnet uses only (``functional.py``); ``tests/maml_reference.py`` holds
the learn2learn version the tests compare it with.

Meta-gradient modes (``MetaConfig.meta_gradient``):

* ``second_order``: the exact MAML meta-gradient, by autograd through all inner steps.
* ``first_order``: FOMAML, the query gradient at the adapted weights.
* ``finite_difference``: the second-order meta-gradient without a second-order graph. The
  query gradient ``v`` is carried back through each inner step
  ``theta_{i+1} = theta_i - lr * grad L_s(theta_i)``, whose vector-Jacobian product is
  ``v - lr * H_i v``, with ``H_i v ~ (grad L_s(theta_i + eps v) - grad L_s(theta_i - eps v)) /
  2 eps`` and ``eps = fd_epsilon / ||v||`` (DARTS' approximation). Only first-order graphs are
  built: first-order memory. It is near second-order while ``theta +- eps v`` crosses no ReLU
  or max-pooling kink: on Conv-4/Omniglot in float32, ``fd_epsilon=1e-5`` measured a cosine of
  ~0.98 to the second-order meta-gradient, DARTS' 0.01 ~0.1 (BENCHMARKS.md).

Images are put in channels-last layout before the forward passes (faster on CPU), except the
support passes of ``second_order``, whose double backward is slower on channels-last maps.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from lightning_metanas.errors import SettingsError, require_int, require_positive
from lightning_metanas.functional import SubnetFunction, UsedParameters, channels_last, subnet_function
from lightning_metanas.parallel import TaskThreads
from lightning_metanas.search_space import Architecture
from lightning_metanas.supernet import SuperNet

MetaGradient = Literal["first_order", "second_order", "finite_difference"]
META_GRADIENTS: tuple[str, ...] = ("first_order", "second_order", "finite_difference")
Batch = tuple[torch.Tensor, torch.Tensor]  # images, labels
Grads = list[Optional[torch.Tensor]]  # None where the subnet never reads the parameter
Update = Callable[[list[torch.Tensor], Grads], list[torch.Tensor]]


@dataclass
class MetaConfig:
    """How the SuperNet's weights are meta-learned.

    Args:
        inner_lr: SGD step size of the per-task adaptation.
        inner_steps: adaptation steps per task during meta-training.
        eval_inner_steps: adaptation steps per task at validation and meta-test.
        meta_lr: Adam learning rate of the outer (meta) update.
        meta_gradient: ``first_order`` (FOMAML), ``second_order`` (exact MAML gradient
            through the inner steps) or ``finite_difference`` (close to ``second_order``, at
            the memory of ``first_order``; see this module's docstring).
        fd_epsilon: distance the parameters move along ``v`` for a finite difference. Smaller
            crosses fewer ReLU/max-pool kinks but loses float precision (BENCHMARKS.md).
    """

    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int = 3
    meta_lr: float = 0.003
    meta_gradient: MetaGradient = "first_order"
    fd_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("inner_lr", "meta_lr", "fd_epsilon"):
            require_positive(f"model.meta.{name}", getattr(self, name))
        for name in ("inner_steps", "eval_inner_steps"):
            require_int(f"model.meta.{name}", getattr(self, name))
        if self.meta_gradient not in META_GRADIENTS:
            raise SettingsError(
                f"model.meta.meta_gradient must be one of {list(META_GRADIENTS)}, got {self.meta_gradient!r}"
            )


@dataclass
class TaskResult:
    loss: torch.Tensor  # query loss after adaptation (differentiable for meta_loss)
    accuracy: torch.Tensor  # query accuracy after adaptation (a detached scalar)


@dataclass
class TaskGradient:
    """One task's meta-gradient, computed explicitly (no graph is left behind)."""

    loss: torch.Tensor  # query loss after adaptation (detached scalar)
    accuracy: torch.Tensor  # query accuracy after adaptation (detached scalar)
    params: list[torch.nn.Parameter]  # the SuperNet parameters the architecture uses
    grads: Grads  # d loss / d param


@dataclass
class MetaBatchGradient:
    """The meta-gradients of a meta-batch's tasks, summed (no graph is left behind)."""

    losses: torch.Tensor  # [tasks] query losses after adaptation (detached)
    accuracies: torch.Tensor  # [tasks] query accuracies after adaptation (detached)
    grads: dict[torch.nn.Parameter, torch.Tensor]  # parameter -> sum over tasks; used ones only


class TaskAdapter:
    """Adapts a subnet of ``supernet`` to a task and measures it on the task's query set.

    Args:
        supernet: the weight-sharing network.
        inner_lr: SGD step size of the adaptation.
        fd_epsilon: finite-difference scale (``eps = fd_epsilon / ||v||``).
        workers: threads ``meta_batch_gradient`` spreads a meta-batch's tasks over on CPU
            (``parallel.TaskThreads``); ``None``: torch's intra-op thread count.
    """

    def __init__(self, supernet: SuperNet, inner_lr: float, fd_epsilon: float = 1e-5, workers: Optional[int] = None) -> None:
        self.supernet, self.inner_lr = supernet, inner_lr
        self.fd_epsilon = require_positive("fd_epsilon", fd_epsilon)
        self.used = UsedParameters(supernet)
        self.threads = TaskThreads(supernet, workers)

    def subnet(self, arch: Architecture) -> tuple[SubnetFunction, list[torch.nn.Parameter]]:
        """``arch`` as a function of its parameters, and those parameters (read now)."""
        names, params = self.used(arch)
        return subnet_function(self.threads.module(), arch, names), params

    def sgd(self, params: list[torch.Tensor], grads: Grads) -> list[torch.Tensor]:
        """One inner SGD step (a parameter without a gradient stays as it is)."""
        return [p if g is None else p - self.inner_lr * g for p, g in zip(params, grads)]

    @torch.enable_grad()  # adaptation needs gradients, also inside validation and test loops
    def adapt(
        self, arch: Architecture, batches: Iterable[Batch], params: Optional[list[torch.Tensor]] = None,
        update: Optional[Update] = None, second_order: bool = False,
    ) -> list[list[torch.Tensor]]:
        """The inner loop: from ``params`` (default: ``arch``'s parameters), one step of
        ``update`` (default: ``sgd``) per batch on the gradient of its cross-entropy. Returns
        the path ``[theta_0, ..., theta_n]``. ``second_order``: the steps stay differentiable
        w.r.t. the SuperNet; otherwise each gradient is taken at detached parameters."""
        forward, leaves = self.subnet(arch)
        path = [list(params) if params is not None else list(leaves) if second_order else [p.detach() for p in leaves]]
        for x, y in batches:
            path.append((update or self.sgd)(path[-1], self._gradient(forward, path[-1], x, y, second_order)))
        return path

    @staticmethod
    def _gradient(forward: SubnetFunction, theta: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor, create_graph: bool = False) -> Grads:
        if not create_graph:
            theta = [t.detach().requires_grad_() for t in theta]
        loss = F.cross_entropy(forward(theta, x), y)
        return list(torch.autograd.grad(loss, theta, create_graph=create_graph, allow_unused=True))

    def meta_loss(self, arch: Architecture, support: Batch, query: Batch, steps: int) -> TaskResult:
        """The query loss after ``steps`` inner steps, differentiable w.r.t. the SuperNet
        through them: its gradient is the second-order meta-gradient."""
        adapted = self.adapt(arch, itertools.repeat(support, steps), second_order=True)[-1]
        logits = self.subnet(arch)[0](adapted, channels_last(query[0]))
        return TaskResult(F.cross_entropy(logits, query[1]), _accuracy(logits, query[1]))

    @torch.enable_grad()
    def meta_gradient(
        self, arch: Architecture, support: Batch, query: Batch, steps: int, mode: MetaGradient,
        fd_epsilon: Optional[float] = None,
    ) -> TaskGradient:
        """The task's query loss after ``steps`` inner steps and its meta-gradient w.r.t. the
        parameters ``arch`` uses, computed here and now: the task's graphs are freed on
        return, so a meta-batch never holds more than one graph per thread.
        ``fd_epsilon`` overrides the adapter's for ``finite_difference``."""
        forward, leaves = self.subnet(arch)
        if mode == "second_order":
            result = self.meta_loss(arch, support, query, steps)
            grads = torch.autograd.grad(result.loss, leaves, allow_unused=True)
            return TaskGradient(result.loss.detach(), result.accuracy, leaves, list(grads))
        if mode not in META_GRADIENTS:
            raise SettingsError(f"unknown meta-gradient mode {mode!r}; one of {list(META_GRADIENTS)}")
        support = (channels_last(support[0]), support[1])
        path = self.adapt(arch, itertools.repeat(support, steps))
        adapted = [t.detach().requires_grad_() for t in path[-1]]
        logits = forward(adapted, channels_last(query[0]))
        loss = F.cross_entropy(logits, query[1])
        grads: Grads = list(torch.autograd.grad(loss, adapted, allow_unused=True))
        if mode == "finite_difference":  # carry v back through the inner steps, last first
            epsilon = require_positive("fd_epsilon", self.fd_epsilon if fd_epsilon is None else fd_epsilon)
            v = [torch.zeros_like(t) if g is None else g for t, g in zip(adapted, grads)]
            for theta in reversed(path[:-1]):
                v = self._fd_vjp(forward, theta, v, support, epsilon)
            grads = [None if g is None else d for g, d in zip(grads, v)]
        return TaskGradient(loss.detach(), _accuracy(logits, query[1]), leaves, grads)

    def _fd_vjp(self, forward: SubnetFunction, theta: list[torch.Tensor], v: list[torch.Tensor], support: Batch, fd_epsilon: float) -> list[torch.Tensor]:
        """``(I - lr H) v`` for the SGD step taken at ``theta``, with ``H v`` by central
        differences of support gradients at ``theta +- eps v``, ``eps = fd_epsilon / ||v||``."""
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in v]))
        if not torch.isfinite(norm) or norm == 0:
            return list(v)
        eps = fd_epsilon / float(norm)

        def grad_at(point: list[torch.Tensor]) -> list[torch.Tensor]:
            grads = self._gradient(forward, point, *support)
            return [torch.zeros_like(t) if g is None else g for t, g in zip(point, grads)]

        plus = grad_at([t + eps * d for t, d in zip(theta, v)])
        minus = grad_at([t - eps * d for t, d in zip(theta, v)])
        scale = self.inner_lr / (2 * eps)
        return [d - scale * (gp - gm) for d, gp, gm in zip(v, plus, minus)]

    def meta_batch_gradient(
        self, archs: Sequence[Architecture], batch: Sequence[torch.Tensor], steps: int, mode: MetaGradient,
        fd_epsilon: Optional[float] = None,
    ) -> MetaBatchGradient:
        """``meta_gradient`` of every task of a meta-batch ``(support_x, support_y, query_x,
        query_y)`` (leading task axis; task ``t`` adapts ``archs[t]``), summed in task order
        (on worker threads on CPU: ``parallel.TaskThreads.fold_in_order``)."""
        support_x, support_y, query_x, query_y = batch
        losses: list[Optional[torch.Tensor]] = [None] * len(archs)
        accuracies = list(losses)
        total: dict[torch.nn.Parameter, torch.Tensor] = {}

        def work(t: int) -> TaskGradient:
            return self.meta_gradient(archs[t], (support_x[t], support_y[t]), (query_x[t], query_y[t]), steps, mode, fd_epsilon)

        def fold(t: int, result: TaskGradient) -> None:
            losses[t], accuracies[t] = result.loss, result.accuracy
            for p, g in zip(result.params, result.grads):
                if g is not None:
                    if p in total:
                        total[p].add_(g)
                    else:
                        total[p] = g.clone()

        self.threads.fold_in_order(work, len(archs), fold, support_x.device)
        return MetaBatchGradient(torch.stack(losses), torch.stack(accuracies), total)

    @torch.enable_grad()
    def evaluate(self, arch: Architecture, support: Batch, query: Batch, steps: int) -> TaskResult:
        """Query loss and accuracy after ``steps`` inner steps (nothing differentiable)."""
        forward, _ = self.subnet(arch)
        adapted = self.adapt(arch, itertools.repeat((channels_last(support[0]), support[1]), steps))[-1]
        with torch.no_grad():
            logits = forward(adapted, channels_last(query[0]))
            loss = F.cross_entropy(logits, query[1])
        return TaskResult(loss, _accuracy(logits, query[1]))


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).float().mean().detach()
