"""MAML over the subnets of a SuperNet: the inner loop, and the meta-gradient of a task.

``TaskAdapter`` plays the part of learn2learn's ``algorithms.MAML``: one object holding the
SuperNet and the inner learning rate, with a few verbs. ``adapt`` is the inner loop, the only
one in the project: meta-training (``meta_gradient``, ``meta_batch_gradient``), scoring and
evaluation (``evaluate``) all run it. Unlike learn2learn's ``clone()``, which copies and
differentiates every SuperNet parameter, it works on the parameters the subnet uses only
(``functional.py``); ``bench/l2l_reference.py`` holds the learn2learn version the tests
compare it with.

Meta-gradient modes (``MetaConfig.meta_gradient``):

* ``second_order``: the exact MAML meta-gradient, by autograd through all inner steps.
* ``first_order``: FOMAML, the query gradient at the adapted weights.
* ``finite_difference``: the second-order meta-gradient without a second-order graph
  (``fd_vjp``): the query gradient ``v`` is carried back through each inner step
  ``theta_{i+1} = theta_i - lr * grad L_s(theta_i)``, whose vector-Jacobian product is
  ``v - lr * H_i v``, with ``H_i v ~ (grad L_s(theta_i + eps v) - grad L_s(theta_i - eps v)) /
  2 eps`` and ``eps = fd_epsilon / ||v||`` (DARTS' approximation). Only first-order graphs are
  built: first-order memory. It is near second-order while ``theta +- eps v`` crosses no ReLU
  or max-pooling kink: on Conv-4/Omniglot in float32, ``fd_epsilon=1e-5`` measured a cosine of
  ~0.98 to the second-order meta-gradient, DARTS' 0.01 ~0.1 (BENCHMARKS.md).

Every per-task function is written once, for one task; the dispatcher (``parallel.schedule``,
used by ``meta_batch_gradient`` and ``evaluate_tasks_norms``) decides how a call's tasks run:

* one task at a time in the calling thread (``workers=1``, or on CUDA without vectorisation);
* on CPU worker threads, a task at a time per thread (``parallel.TaskThreads``): the CPU
  default, measured fastest there;
* vectorised: the tasks that share an architecture as one stack along a leading task axis,
  ``torch.func.vmap`` of the subnet's forward pass (``functional.subnet_function``), each task
  with its own copy of the weights and its own BatchNorm statistics: the CUDA default. The
  functions see the stack through a ``TaskAxis`` (the one place that knows whether a leading
  task axis is there): the loss is the sum of the tasks' mean losses, so one
  ``autograd.grad`` gives every task its own gradient, as ``vmap(grad(...))`` would.

On CPU, images are put in channels-last memory layout before the forward passes (measured
faster there; ``MetaConfig.channels_last`` decides per device), except the support passes of
``second_order``, whose double backward is slower on channels-last maps. The finite
differences run in IEEE float32 whatever the TF32 settings (``precision.ieee_float32``), and
without a host synchronisation per inner step.

Why one module of ~380 lines: the inner loop and the three meta-gradients share the subnet
function, the task axis and the dispatcher; the scheduling itself is ``parallel.py``'s and the
settings are ``meta_config.py``'s.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from lightning_metanas.errors import SettingsError, require_int, require_positive
from lightning_metanas.functional import SubnetFunction, UsedParameters, channels_last, subnet_function
from lightning_metanas.meta_config import META_GRADIENTS, MetaConfig, MetaGradient, Norm
from lightning_metanas.parallel import TaskThreads, Unit, schedule
from lightning_metanas.precision import ieee_float32
from lightning_metanas.search_space import Architecture
from lightning_metanas.supernet import SuperNet

Batch = tuple[torch.Tensor, torch.Tensor]  # images, labels (with a leading task axis in a stack)
Tasks = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # support x, y, query x, y; task axis first
Grads = list[Optional[torch.Tensor]]  # None where the subnet never reads the parameter


@dataclass
class TaskResult:
    """Per task: scalars for one task, ``[tasks]`` for a stack of tasks."""

    loss: torch.Tensor  # query loss after adaptation (differentiable for meta_loss)
    accuracy: torch.Tensor  # query accuracy after adaptation (detached)


@dataclass
class TaskGradient:
    """One task's meta-gradient, or the summed meta-gradients of a stack of tasks that share an
    architecture, computed explicitly (no graph is left behind)."""

    loss: torch.Tensor  # query loss after adaptation (detached; [tasks] for a stack)
    accuracy: torch.Tensor  # query accuracy after adaptation (detached; [tasks] for a stack)
    params: list[torch.nn.Parameter]  # the SuperNet parameters the architecture uses
    grads: Grads  # d loss / d param (for a stack: summed over its tasks)


@dataclass
class MetaBatchGradient:
    """The meta-gradients of a meta-batch's tasks, summed (no graph is left behind)."""

    losses: torch.Tensor  # [tasks] query losses after adaptation (detached)
    accuracies: torch.Tensor  # [tasks] query accuracies after adaptation (detached)
    grads: dict[torch.nn.Parameter, torch.Tensor]  # parameter -> sum over tasks; used ones only


class TaskAxis:
    """Whether the tensors a per-task function sees carry a leading task axis (a vectorised
    stack of ``tasks`` tasks) or not (``tasks=None``, one task): every difference between the
    two is a method here, so the functions themselves are written once."""

    def __init__(self, tasks: Optional[int] = None) -> None:
        self.tasks = tasks

    @property
    def stacked(self) -> bool:
        return self.tasks is not None

    def start(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The adaptation's starting point: a view per task of a stack (the first step writes
        new tensors)."""
        return [p.expand(self.tasks, *p.shape) for p in params] if self.stacked else list(params)

    def norm(self, v: Sequence[torch.Tensor]) -> torch.Tensor:
        """The norm of ``v`` (per task of a stack: ``[tasks]``)."""
        if not self.stacked:
            return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in v]))
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.flatten(1), dim=1) for t in v]), dim=0)

    def per_task(self, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A per-task scalar (or ``[tasks]``) shaped to multiply ``like``, in its dtype."""
        value = value.view(-1, *[1] * (like.dim() - 1)) if self.stacked else value
        return value if value.dtype == torch.bool else value.to(like.dtype)

    def reduce(self, grads: Grads) -> Grads:
        """Gradients of a stack summed over its tasks (one task's as they are)."""
        return [None if g is None else g.sum(0) for g in grads] if self.stacked else grads

    def losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, the mean over a task's examples; ``[tasks]`` for a stack."""
        if not self.stacked:
            return F.cross_entropy(logits, labels)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape).mean(-1)

    def total(self, loss: torch.Tensor) -> torch.Tensor:
        """What to differentiate: the stack's tasks are independent, so the gradient of the sum
        of their losses gives each task its own gradient."""
        return loss.sum() if self.stacked else loss


ONE_TASK = TaskAxis()


def gradient(forward: SubnetFunction, theta: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             create_graph: bool = False, axis: TaskAxis = ONE_TASK) -> Grads:
    """The gradient of ``x``'s cross-entropy at ``theta`` (detached unless ``create_graph``;
    each task of a stack gets its own)."""
    if not create_graph:
        theta = [t.detach().requires_grad_() for t in theta]
    loss = axis.total(axis.losses(forward(theta, x), y))
    return list(torch.autograd.grad(loss, theta, create_graph=create_graph, allow_unused=True))


def fd_vjp(forward: SubnetFunction, theta: list[torch.Tensor], v: list[torch.Tensor], support: Batch,
           inner_lr: float, fd_epsilon: float, axis: TaskAxis = ONE_TASK) -> list[torch.Tensor]:
    """``(I - lr H) v`` for the SGD step taken at ``theta``, with ``H v`` by central
    differences of support gradients at ``theta +- eps v``, ``eps = fd_epsilon / ||v||`` (per
    task of a stack). ``v`` passes unchanged where ``||v||`` is zero or not finite. Everything
    stays on the device: no host synchronisation."""
    norm = axis.norm(v)
    ok = torch.isfinite(norm) & (norm > 0)
    # in float64, as Python's float arithmetic on float(norm) was: the same numbers
    eps = fd_epsilon / torch.where(ok, norm, torch.ones_like(norm)).double()
    scale = inner_lr / (2 * eps)

    def grad_at(point: list[torch.Tensor]) -> list[torch.Tensor]:
        grads = gradient(forward, point, *support, axis=axis)
        return [torch.zeros_like(t) if g is None else g for t, g in zip(point, grads)]

    plus = grad_at([t + axis.per_task(eps, d) * d for t, d in zip(theta, v)])
    minus = grad_at([t - axis.per_task(eps, d) * d for t, d in zip(theta, v)])
    return [
        torch.where(axis.per_task(ok, d), d - axis.per_task(scale, d) * (gp - gm), d)
        for d, gp, gm in zip(v, plus, minus)
    ]


class TaskAdapter:
    """Adapts a subnet of ``supernet`` to a task and measures it on the task's query set.

    Args:
        supernet: the weight-sharing network.
        inner_lr: SGD step size of the adaptation.
        fd_epsilon: finite-difference scale (``eps = fd_epsilon / ||v||``).
        workers: threads ``meta_batch_gradient`` spreads a meta-batch's tasks over on CPU
            (``parallel.TaskThreads``); ``None``: torch's intra-op thread count.
        vectorize, max_vectorized_tasks, channels_last, norm: as in ``MetaConfig``.
        ieee_finite_differences: run the finite differences in IEEE float32 whatever the TF32
            settings (off only to measure what TF32 does to them: ``bench/meta_step.py``).
    """

    def __init__(
        self, supernet: SuperNet, inner_lr: float, fd_epsilon: float = 1e-5, workers: Optional[int] = None,
        vectorize: Optional[bool] = None, max_vectorized_tasks: int = 64, channels_last: Optional[bool] = None,
        norm: Norm = "transductive", ieee_finite_differences: bool = True,
    ) -> None:
        self.supernet, self.inner_lr, self.norm = supernet, inner_lr, norm
        self.ieee_finite_differences = ieee_finite_differences
        self.fd_epsilon = require_positive("fd_epsilon", fd_epsilon)
        self.vectorize, self.channels_last = vectorize, channels_last
        self.max_vectorized_tasks = require_int("max_vectorized_tasks", max_vectorized_tasks, 1)
        self.used = UsedParameters(supernet)
        self.threads = TaskThreads(supernet, workers)

    @classmethod
    def from_config(cls, supernet: SuperNet, meta: MetaConfig, **kwargs) -> "TaskAdapter":
        return cls(
            supernet, meta.inner_lr, meta.fd_epsilon, vectorize=meta.vectorize,
            max_vectorized_tasks=meta.max_vectorized_tasks, channels_last=meta.channels_last,
            norm=meta.norm, workers=meta.workers, **kwargs,
        )

    def vectorized(self, device: torch.device) -> bool:
        """Whether tasks sharing an architecture run as one vectorised batch on ``device``."""
        return device.type == "cuda" if self.vectorize is None else self.vectorize

    def in_memory_layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory layout chosen for its device (same values)."""
        wanted = x.device.type == "cpu" if self.channels_last is None else self.channels_last
        return channels_last(x) if wanted else x

    def subnet(self, arch: Architecture, axis: TaskAxis = ONE_TASK) -> tuple[SubnetFunction, list[torch.nn.Parameter]]:
        """``arch`` as a function of its parameters, and those parameters (read now); over a
        stack's leading task axis when ``axis`` has one."""
        names, params = self.used(arch)
        return subnet_function(self.threads.module(), arch, names, tasks=axis.stacked), params

    def sgd(self, params: list[torch.Tensor], grads: Grads) -> list[torch.Tensor]:
        """One inner SGD step (a parameter without a gradient stays as it is)."""
        return [p if g is None else p - self.inner_lr * g for p, g in zip(params, grads)]

    # -- the per-task functions ------------------------------------------------------------
    @torch.enable_grad()  # adaptation needs gradients, also inside validation and test loops
    def adapt(self, arch: Architecture, batches: Iterable[Batch], second_order: bool = False,
              axis: TaskAxis = ONE_TASK) -> list[list[torch.Tensor]]:
        """The inner loop: from ``arch``'s parameters, one SGD step per batch on the gradient
        of its cross-entropy. Returns the path ``[theta_0, ..., theta_n]``. ``second_order``:
        the steps stay differentiable w.r.t. the SuperNet; otherwise each gradient is taken at
        detached parameters."""
        forward, leaves = self.subnet(arch, axis)
        path = [axis.start(list(leaves) if second_order else [p.detach() for p in leaves])]
        for x, y in batches:
            path.append(self.sgd(path[-1], gradient(forward, path[-1], x, y, second_order, axis)))
        return path

    def _query_inputs(self, query_x: torch.Tensor, support_x: torch.Tensor, norm: Optional[Norm] = None) -> tuple[torch.Tensor, ...]:
        """The query images, and under ``support`` normalisation the support images whose
        statistics normalise them (``functional.subnet_function``'s ``stats_from``)."""
        if (norm or self.norm) == "support":
            return self.in_memory_layout(query_x), self.in_memory_layout(support_x)
        return (self.in_memory_layout(query_x),)

    def meta_loss(self, arch: Architecture, support: Batch, query: Batch, steps: int, axis: TaskAxis = ONE_TASK) -> TaskResult:
        """The query loss after ``steps`` inner steps, differentiable w.r.t. the SuperNet
        through them: its gradient is the second-order meta-gradient (for a stack of tasks,
        ``loss`` is per task and the gradient of its sum is the sum of theirs)."""
        adapted = self.adapt(arch, itertools.repeat(support, steps), second_order=True, axis=axis)[-1]
        logits = self.subnet(arch, axis)[0](adapted, *self._query_inputs(query[0], support[0]))
        return TaskResult(axis.losses(logits, query[1]), _accuracy(logits, query[1]))

    @torch.enable_grad()
    def meta_gradient(
        self, arch: Architecture, support: Batch, query: Batch, steps: int, mode: MetaGradient,
        fd_epsilon: Optional[float] = None, axis: TaskAxis = ONE_TASK,
    ) -> TaskGradient:
        """The task's query loss after ``steps`` inner steps and its meta-gradient w.r.t. the
        parameters ``arch`` uses, computed here and now: the task's graphs are freed on
        return, so a meta-batch never holds more than one graph per thread.
        ``fd_epsilon`` overrides the adapter's for ``finite_difference``. For a stack of tasks
        sharing ``arch`` (``axis``): loss and accuracy per task, gradients summed."""
        forward, leaves = self.subnet(arch, axis)
        if mode == "second_order":
            result = self.meta_loss(arch, support, query, steps, axis)
            grads = torch.autograd.grad(axis.total(result.loss), leaves, allow_unused=True)
            return TaskGradient(result.loss.detach(), result.accuracy, leaves, list(grads))
        if mode not in META_GRADIENTS:
            raise SettingsError(f"unknown meta-gradient mode {mode!r}; one of {list(META_GRADIENTS)}")
        support = (self.in_memory_layout(support[0]), support[1])
        path = self.adapt(arch, itertools.repeat(support, steps), axis=axis)
        adapted = [t.detach().requires_grad_() for t in path[-1]]
        logits = forward(adapted, *self._query_inputs(query[0], support[0]))
        loss = axis.losses(logits, query[1])
        grads: Grads = list(torch.autograd.grad(axis.total(loss), adapted, allow_unused=True))
        if mode == "finite_difference":  # carry v back through the inner steps, last first
            epsilon = require_positive("fd_epsilon", self.fd_epsilon if fd_epsilon is None else fd_epsilon)
            v = [torch.zeros_like(t) if g is None else g for t, g in zip(adapted, grads)]
            # a TF32 convolution would not resolve theta +- eps v
            with ieee_float32() if self.ieee_finite_differences else contextlib.nullcontext():
                for theta in reversed(path[:-1]):
                    v = fd_vjp(forward, theta, v, support, self.inner_lr, epsilon, axis)
            grads = [None if g is None else d for g, d in zip(grads, v)]
        return TaskGradient(loss.detach(), _accuracy(logits, query[1]), leaves, axis.reduce(grads))

    @torch.enable_grad()
    def evaluate_norms(self, arch: Architecture, support: Batch, query: Batch, steps: int,
                       norms: Sequence[Norm], axis: TaskAxis = ONE_TASK) -> dict[str, TaskResult]:
        """Query loss and accuracy after ``steps`` inner steps (nothing differentiable) under
        each of ``norms``, from one adaptation (the inner loop's support passes are the same
        under every norm): the cost of classifying images alone is measured on exactly the
        same adapted weights."""
        forward, _ = self.subnet(arch, axis)
        adapted = self.adapt(arch, itertools.repeat((self.in_memory_layout(support[0]), support[1]), steps), axis=axis)[-1]
        results = {}
        with torch.no_grad():
            for norm in norms:
                logits = forward(adapted, *self._query_inputs(query[0], support[0], norm))
                results[norm] = TaskResult(axis.losses(logits, query[1]), _accuracy(logits, query[1]))
        return results

    def evaluate(self, arch: Architecture, support: Batch, query: Batch, steps: int, norm: Optional[Norm] = None) -> TaskResult:
        """``evaluate_norms`` under one norm (default: the adapter's)."""
        norm = norm or self.norm
        return self.evaluate_norms(arch, support, query, steps, (norm,))[norm]

    # -- the dispatcher --------------------------------------------------------------------
    def task_schedule(self, archs: Sequence[Architecture], device: torch.device) -> list[Unit]:
        """How the tasks of a call run (``parallel.schedule``)."""
        return schedule(archs, self.vectorized(device), self.max_vectorized_tasks)

    @staticmethod
    def axis(unit: Unit) -> TaskAxis:
        return TaskAxis(len(unit.tasks)) if unit.stacked else ONE_TASK

    def meta_batch_gradient(
        self, archs: Sequence[Architecture], batch: Sequence[torch.Tensor], steps: int, mode: MetaGradient,
        fd_epsilon: Optional[float] = None,
    ) -> MetaBatchGradient:
        """``meta_gradient`` of every task of a meta-batch ``(support_x, support_y, query_x,
        query_y)`` (leading task axis; task ``t`` adapts ``archs[t]``), summed in the order of
        the units: task order, on worker threads on CPU (``parallel.TaskThreads.fold_in_order``),
        or, vectorised, one stack of tasks per architecture."""
        losses: list[Optional[torch.Tensor]] = [None] * len(archs)
        accuracies = list(losses)
        total: dict[torch.nn.Parameter, torch.Tensor] = {}
        units = self.task_schedule(archs, batch[0].device)

        def work(u: int) -> TaskGradient:
            support_x, support_y, query_x, query_y = units[u].take(batch)
            return self.meta_gradient(units[u].arch, (support_x, support_y), (query_x, query_y), steps, mode,
                                      fd_epsilon, self.axis(units[u]))

        def fold(u: int, result: TaskGradient) -> None:
            loss, accuracy = result.loss.reshape(-1), result.accuracy.reshape(-1)
            for j, t in enumerate(units[u].tasks):
                losses[t], accuracies[t] = loss[j], accuracy[j]
            for p, g in zip(result.params, result.grads):
                if g is not None:
                    if p in total:
                        total[p].add_(g)
                    else:
                        total[p] = g.clone()

        self.threads.fold_in_order(work, len(units), fold, batch[0].device)
        return MetaBatchGradient(torch.stack(losses), torch.stack(accuracies), total)

    def evaluate_tasks(self, arch: Architecture, tasks: Sequence[torch.Tensor], steps: int,
                       norm: Optional[Norm] = None) -> TaskResult:
        """``evaluate`` on every task of ``(support_x, support_y, query_x, query_y)`` (leading
        task axis), all with ``arch``: per-task losses and accuracies ``[tasks]``."""
        norm = norm or self.norm
        return self.evaluate_tasks_norms(arch, tasks, steps, (norm,))[norm]

    def evaluate_tasks_norms(self, arch: Architecture, tasks: Sequence[torch.Tensor], steps: int,
                             norms: Sequence[Norm]) -> dict[str, TaskResult]:
        """``evaluate_tasks`` under each of ``norms`` from one adaptation per task, task by task
        or vectorised in stacks."""
        results: dict[str, list[TaskResult]] = {norm: [] for norm in norms}
        for unit in self.task_schedule([arch] * tasks[0].shape[0], tasks[0].device):
            support_x, support_y, query_x, query_y = unit.take(tasks)
            for norm, result in self.evaluate_norms(arch, (support_x, support_y), (query_x, query_y), steps, norms,
                                                    self.axis(unit)).items():
                results[norm].append(result)
        return {
            norm: TaskResult(*(torch.cat([getattr(r, f).reshape(-1) for r in rs]) for f in ("loss", "accuracy")))
            for norm, rs in results.items()
        }


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).float().mean(-1).detach()
