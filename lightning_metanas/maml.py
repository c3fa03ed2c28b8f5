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

Three ways to run the one inner loop over a meta-batch (``meta_batch_gradient``), and over the
tasks of an evaluation or a scoring (``evaluate_tasks``):

* task after task (``workers=1``, or on CUDA without vectorisation);
* on CPU worker threads, a task at a time per thread (``parallel.TaskThreads``): the CPU
  default, measured fastest there;
* vectorised: the tasks that share an architecture as one batch along a leading task axis,
  ``torch.func.vmap`` of the subnet's forward pass over tasks (``functional.subnet_function``),
  each task with its own copy of the weights and its own BatchNorm statistics: the CUDA
  default (``MetaConfig.vectorize``). The loss is the sum of the tasks' mean losses, so one
  ``autograd.grad`` gives every task its own gradient, the gradient that
  ``vmap(grad(functional_call))`` would.

The same ``adapt``, ``meta_gradient`` and ``evaluate`` serve a single task and a stack of tasks
(images ``[tasks, N, C, H, W]``); only their bookkeeping differs. Training draws an
architecture per task unless ``MetaNASModule``'s ``tasks_per_arch`` groups them.

On CPU, images are put in channels-last layout before the forward passes (measured faster
there; ``MetaConfig.channels_last`` decides per device), except the support passes of
``second_order``, whose double backward is slower on channels-last maps. The finite
differences run in IEEE float32 whatever the TF32 settings (``precision.ieee_float32``), and
without a host synchronisation per inner step.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from lightning_metanas.errors import SettingsError, require_int, require_positive
from lightning_metanas.functional import SubnetFunction, UsedParameters, channels_last, subnet_function
from lightning_metanas.parallel import TaskThreads
from lightning_metanas.precision import ieee_float32
from lightning_metanas.search_space import Architecture
from lightning_metanas.supernet import SuperNet

MetaGradient = Literal["first_order", "second_order", "finite_difference"]
Norm = Literal["transductive", "support"]
NORMS: tuple[str, ...] = ("transductive", "support")
META_GRADIENTS: tuple[str, ...] = ("first_order", "second_order", "finite_difference")
Batch = tuple[torch.Tensor, torch.Tensor]  # images, labels (either with a leading task axis)
Tasks = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # support x, y, query x, y; task axis first
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
        vectorize: run the tasks that share an architecture as one vectorised batch
            (``torch.func.vmap`` over tasks); ``None``: on CUDA yes, on CPU no (worker threads
            measured faster there, BENCHMARKS.md). Training tasks share architectures when
            ``model.tasks_per_arch`` > 1 or the architecture is fixed.
        max_vectorized_tasks: at most this many tasks in one vectorised batch; larger groups
            run in chunks (bounds memory: activations grow with tasks x images).
        channels_last: images in channels-last memory layout; ``None``: on CPU yes (measured
            faster), on CUDA no (``bench/device_check.sh`` measures both).
        norm: the BatchNorm statistics a query image is normalised with, in meta-training and
            evaluation: ``transductive`` (the query batch's own, MAML's protocol: a prediction
            depends on the rest of the batch) or ``support`` (the adapted task's support
            images', so each query image is classified alone, as a deployed model is; the
            support passes of the inner loop are the same in both).
    """

    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int = 3
    meta_lr: float = 0.003
    meta_gradient: MetaGradient = "first_order"
    fd_epsilon: float = 1e-5
    vectorize: Optional[bool] = None
    max_vectorized_tasks: int = 64
    channels_last: Optional[bool] = None
    norm: Norm = "transductive"

    def __post_init__(self) -> None:
        for name in ("inner_lr", "meta_lr", "fd_epsilon"):
            require_positive(f"model.meta.{name}", getattr(self, name))
        for name in ("inner_steps", "eval_inner_steps"):
            require_int(f"model.meta.{name}", getattr(self, name))
        require_int("model.meta.max_vectorized_tasks", self.max_vectorized_tasks, 1)
        for name in ("vectorize", "channels_last"):
            if getattr(self, name) not in (None, True, False):
                raise SettingsError(f"model.meta.{name} must be true, false or null, got {getattr(self, name)!r}")
        if self.meta_gradient not in META_GRADIENTS:
            raise SettingsError(
                f"model.meta.meta_gradient must be one of {list(META_GRADIENTS)}, got {self.meta_gradient!r}"
            )
        if self.norm not in NORMS:
            raise SettingsError(f"model.meta.norm must be one of {list(NORMS)}, got {self.norm!r}")


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


class TaskAdapter:
    """Adapts a subnet of ``supernet`` to a task and measures it on the task's query set.

    Args:
        supernet: the weight-sharing network.
        inner_lr: SGD step size of the adaptation.
        fd_epsilon: finite-difference scale (``eps = fd_epsilon / ||v||``).
        workers: threads ``meta_batch_gradient`` spreads a meta-batch's tasks over on CPU
            (``parallel.TaskThreads``); ``None``: torch's intra-op thread count.
        vectorize, max_vectorized_tasks, channels_last, norm: as in ``MetaConfig``.
    """

    def __init__(
        self, supernet: SuperNet, inner_lr: float, fd_epsilon: float = 1e-5, workers: Optional[int] = None,
        vectorize: Optional[bool] = None, max_vectorized_tasks: int = 64, channels_last: Optional[bool] = None,
        norm: Norm = "transductive",
    ) -> None:
        self.supernet, self.inner_lr, self.norm = supernet, inner_lr, norm
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
            norm=meta.norm, **kwargs,
        )

    def vectorized(self, device: torch.device) -> bool:
        """Whether tasks sharing an architecture run as one vectorised batch on ``device``."""
        return device.type == "cuda" if self.vectorize is None else self.vectorize

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory layout chosen for its device (same values)."""
        wanted = x.device.type == "cpu" if self.channels_last is None else self.channels_last
        return channels_last(x) if wanted else x

    def subnet(self, arch: Architecture, tasks: Optional[int] = None) -> tuple[SubnetFunction, list[torch.nn.Parameter]]:
        """``arch`` as a function of its parameters, and those parameters (read now).
        ``tasks``: the function takes parameters and images with a leading task axis."""
        names, params = self.used(arch)
        return subnet_function(self.threads.module(), arch, names, tasks=tasks is not None), params

    def sgd(self, params: list[torch.Tensor], grads: Grads) -> list[torch.Tensor]:
        """One inner SGD step (a parameter without a gradient stays as it is)."""
        return [p if g is None else p - self.inner_lr * g for p, g in zip(params, grads)]

    @torch.enable_grad()  # adaptation needs gradients, also inside validation and test loops
    def adapt(
        self, arch: Architecture, batches: Iterable[Batch], params: Optional[list[torch.Tensor]] = None,
        update: Optional[Update] = None, second_order: bool = False, tasks: Optional[int] = None,
    ) -> list[list[torch.Tensor]]:
        """The inner loop: from ``params`` (default: ``arch``'s parameters), one step of
        ``update`` (default: ``sgd``) per batch on the gradient of its cross-entropy. Returns
        the path ``[theta_0, ..., theta_n]``. ``second_order``: the steps stay differentiable
        w.r.t. the SuperNet; otherwise each gradient is taken at detached parameters.
        ``tasks``: the batches stack that many tasks along a leading axis and each task adapts
        its own copy of the parameters (vectorised): the path's tensors are ``[tasks, ...]``."""
        forward, leaves = self.subnet(arch, tasks)
        if params is None:
            params = list(leaves) if second_order else [p.detach() for p in leaves]
            if tasks is not None:  # a view per task; the first step writes new tensors
                params = [p.expand(tasks, *p.shape) for p in params]
        path = [list(params)]
        for x, y in batches:
            path.append((update or self.sgd)(path[-1], self._gradient(forward, path[-1], x, y, second_order)))
        return path

    @staticmethod
    def _gradient(forward: SubnetFunction, theta: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor, create_graph: bool = False) -> Grads:
        if not create_graph:
            theta = [t.detach().requires_grad_() for t in theta]
        loss = _losses(forward(theta, x), y)
        loss = loss.sum() if loss.dim() else loss  # tasks are independent: each gets its own gradient
        return list(torch.autograd.grad(loss, theta, create_graph=create_graph, allow_unused=True))

    def meta_loss(self, arch: Architecture, support: Batch, query: Batch, steps: int) -> TaskResult:
        """The query loss after ``steps`` inner steps, differentiable w.r.t. the SuperNet
        through them: its gradient is the second-order meta-gradient (for a stack of tasks,
        ``loss`` is per task and the gradient of its sum is the sum of theirs)."""
        tasks = _tasks(support[0])
        adapted = self.adapt(arch, itertools.repeat(support, steps), second_order=True, tasks=tasks)[-1]
        logits = self.subnet(arch, tasks)[0](adapted, *self._query_inputs(query[0], support[0]))
        return TaskResult(_losses(logits, query[1]), _accuracy(logits, query[1]))

    @torch.enable_grad()
    def meta_gradient(
        self, arch: Architecture, support: Batch, query: Batch, steps: int, mode: MetaGradient,
        fd_epsilon: Optional[float] = None,
    ) -> TaskGradient:
        """The task's query loss after ``steps`` inner steps and its meta-gradient w.r.t. the
        parameters ``arch`` uses, computed here and now: the task's graphs are freed on
        return, so a meta-batch never holds more than one graph per thread.
        ``fd_epsilon`` overrides the adapter's for ``finite_difference``. With a leading task
        axis on ``support`` and ``query`` (tasks sharing ``arch``), the tasks run vectorised:
        loss and accuracy per task, gradients summed over the tasks."""
        tasks = _tasks(support[0])
        forward, leaves = self.subnet(arch, tasks)
        if mode == "second_order":
            result = self.meta_loss(arch, support, query, steps)
            loss = result.loss.sum() if tasks is not None else result.loss
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            return TaskGradient(result.loss.detach(), result.accuracy, leaves, list(grads))
        if mode not in META_GRADIENTS:
            raise SettingsError(f"unknown meta-gradient mode {mode!r}; one of {list(META_GRADIENTS)}")
        support = (self.images(support[0]), support[1])
        path = self.adapt(arch, itertools.repeat(support, steps), tasks=tasks)
        adapted = [t.detach().requires_grad_() for t in path[-1]]
        logits = forward(adapted, *self._query_inputs(query[0], support[0]))
        loss = _losses(logits, query[1])
        grads: Grads = list(torch.autograd.grad(loss.sum() if tasks is not None else loss, adapted, allow_unused=True))
        if mode == "finite_difference":  # carry v back through the inner steps, last first
            epsilon = require_positive("fd_epsilon", self.fd_epsilon if fd_epsilon is None else fd_epsilon)
            v = [torch.zeros_like(t) if g is None else g for t, g in zip(adapted, grads)]
            with ieee_float32():  # a TF32 convolution would not resolve theta +- eps v
                for theta in reversed(path[:-1]):
                    v = self._fd_vjp(forward, theta, v, support, epsilon)
            grads = [None if g is None else d for g, d in zip(grads, v)]
        if tasks is not None:
            grads = [None if g is None else g.sum(0) for g in grads]
        return TaskGradient(loss.detach(), _accuracy(logits, query[1]), leaves, grads)

    def _fd_vjp(self, forward: SubnetFunction, theta: list[torch.Tensor], v: list[torch.Tensor], support: Batch, fd_epsilon: float) -> list[torch.Tensor]:
        """``(I - lr H) v`` for the SGD step taken at ``theta``, with ``H v`` by central
        differences of support gradients at ``theta +- eps v``, ``eps = fd_epsilon / ||v||``
        (per task for a stack of tasks). ``v`` passes unchanged where ``||v||`` is zero or
        not finite. Everything stays on the device: no host synchronisation."""
        tasks = _tasks(support[0])
        if tasks is None:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in v]))
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.flatten(1), dim=1) for t in v]), dim=0)
        ok = torch.isfinite(norm) & (norm > 0)
        # in float64, as Python's float arithmetic on float(norm) was: the same numbers
        eps = fd_epsilon / torch.where(ok, norm, torch.ones_like(norm)).double()
        scale = self.inner_lr / (2 * eps)

        def per_task(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            value = value if tasks is None else value.view(-1, *[1] * (like.dim() - 1))
            return value if value.dtype == torch.bool else value.to(like.dtype)

        def grad_at(point: list[torch.Tensor]) -> list[torch.Tensor]:
            grads = self._gradient(forward, point, *support)
            return [torch.zeros_like(t) if g is None else g for t, g in zip(point, grads)]

        plus = grad_at([t + per_task(eps, d) * d for t, d in zip(theta, v)])
        minus = grad_at([t - per_task(eps, d) * d for t, d in zip(theta, v)])
        return [
            torch.where(per_task(ok, d), d - per_task(scale, d) * (gp - gm), d)
            for d, gp, gm in zip(v, plus, minus)
        ]

    def meta_batch_gradient(
        self, archs: Sequence[Architecture], batch: Sequence[torch.Tensor], steps: int, mode: MetaGradient,
        fd_epsilon: Optional[float] = None,
    ) -> MetaBatchGradient:
        """``meta_gradient`` of every task of a meta-batch ``(support_x, support_y, query_x,
        query_y)`` (leading task axis; task ``t`` adapts ``archs[t]``), summed in the order of
        ``units``: task order, on worker threads on CPU (``parallel.TaskThreads.fold_in_order``),
        or, vectorised, one stack of tasks per architecture."""
        losses: list[Optional[torch.Tensor]] = [None] * len(archs)
        accuracies = list(losses)
        total: dict[torch.nn.Parameter, torch.Tensor] = {}
        units = self.units(archs, batch[0].device)

        def work(u: int) -> TaskGradient:
            arch, index = units[u]
            support_x, support_y, query_x, query_y = _take(batch, index)
            return self.meta_gradient(arch, (support_x, support_y), (query_x, query_y), steps, mode, fd_epsilon)

        def fold(u: int, result: TaskGradient) -> None:
            index = units[u][1]
            if isinstance(index, int):
                losses[index], accuracies[index] = result.loss, result.accuracy
            else:
                for j, t in enumerate(index):
                    losses[t], accuracies[t] = result.loss[j], result.accuracy[j]
            for p, g in zip(result.params, result.grads):
                if g is not None:
                    if p in total:
                        total[p].add_(g)
                    else:
                        total[p] = g.clone()

        self.threads.fold_in_order(work, len(units), fold, batch[0].device)
        return MetaBatchGradient(torch.stack(losses), torch.stack(accuracies), total)

    def units(self, archs: Sequence[Architecture], device: torch.device) -> list[tuple[Architecture, Union[int, list[int]]]]:
        """How the tasks of a call run: one task per unit (its index), or, vectorised on
        ``device``, the tasks that share an architecture (in order of first appearance), in
        stacks of at most ``max_vectorized_tasks`` (a stack of one runs as a single task)."""
        if not self.vectorized(device):
            return list(zip(archs, range(len(archs))))
        groups: dict[Architecture, list[int]] = {}
        for t, arch in enumerate(archs):
            groups.setdefault(arch, []).append(t)
        size = self.max_vectorized_tasks
        stacks = [(arch, index[i : i + size]) for arch, index in groups.items() for i in range(0, len(index), size)]
        return [(arch, index[0] if len(index) == 1 else index) for arch, index in stacks]

    def _query_inputs(self, query_x: torch.Tensor, support_x: torch.Tensor, norm: Optional[Norm] = None) -> tuple[torch.Tensor, ...]:
        """The query images, and under ``support`` normalisation the support images whose
        statistics normalise them (``functional.subnet_function``'s ``stats_from``)."""
        if (norm or self.norm) == "support":
            return self.images(query_x), self.images(support_x)
        return (self.images(query_x),)

    @torch.enable_grad()
    def evaluate(self, arch: Architecture, support: Batch, query: Batch, steps: int, norm: Optional[Norm] = None) -> TaskResult:
        """Query loss and accuracy after ``steps`` inner steps (nothing differentiable); per
        task for a stack of tasks (vectorised). ``norm`` overrides the adapter's."""
        return self.evaluate_norms(arch, support, query, steps, (norm or self.norm,))[norm or self.norm]

    @torch.enable_grad()
    def evaluate_norms(self, arch: Architecture, support: Batch, query: Batch, steps: int,
                       norms: Sequence[Norm]) -> dict[str, TaskResult]:
        """``evaluate`` under each of ``norms`` from one adaptation (the inner loop's support
        passes are the same under every norm): the cost of classifying images alone is then
        measured on exactly the same adapted weights."""
        tasks = _tasks(support[0])
        forward, _ = self.subnet(arch, tasks)
        adapted = self.adapt(arch, itertools.repeat((self.images(support[0]), support[1]), steps), tasks=tasks)[-1]
        results = {}
        with torch.no_grad():
            for norm in norms:
                logits = forward(adapted, *self._query_inputs(query[0], support[0], norm))
                results[norm] = TaskResult(_losses(logits, query[1]), _accuracy(logits, query[1]))
        return results

    def evaluate_tasks(self, arch: Architecture, tasks: Sequence[torch.Tensor], steps: int,
                       norm: Optional[Norm] = None) -> TaskResult:
        """``evaluate`` on every task of ``(support_x, support_y, query_x, query_y)`` (leading
        task axis), all with ``arch``: per-task losses and accuracies ``[tasks]``."""
        norm = norm or self.norm
        return self.evaluate_tasks_norms(arch, tasks, steps, (norm,))[norm]

    def evaluate_tasks_norms(self, arch: Architecture, tasks: Sequence[torch.Tensor], steps: int,
                             norms: Sequence[Norm]) -> dict[str, TaskResult]:
        """``evaluate_tasks`` under each of ``norms`` from one adaptation per task. Task by
        task, or vectorised in stacks (``units``)."""
        units = self.units([arch] * tasks[0].shape[0], tasks[0].device)
        results: dict[str, list[TaskResult]] = {norm: [] for norm in norms}
        for _, index in units:
            support_x, support_y, query_x, query_y = _take(tasks, index)
            for norm, result in self.evaluate_norms(arch, (support_x, support_y), (query_x, query_y), steps, norms).items():
                results[norm].append(result)
        return {
            norm: TaskResult(*(torch.cat([getattr(r, f).reshape(-1) for r in rs]) for f in ("loss", "accuracy")))
            for norm, rs in results.items()
        }


def _tasks(images: torch.Tensor) -> Optional[int]:
    """How many tasks a stack of images ``[tasks, N, C, H, W]`` holds; None for one task's
    ``[N, C, H, W]``."""
    return images.shape[0] if images.dim() == 5 else None


def _take(batch: Sequence[torch.Tensor], index: Union[int, list[int]]) -> list[torch.Tensor]:
    """One task of a batch (an index), or a stack of its tasks (a list of indices)."""
    if isinstance(index, int):
        return [t[index] for t in batch]
    if index == list(range(index[0], index[0] + len(index))):
        return [t[index[0] : index[0] + len(index)] for t in batch]  # a view, no copy
    where = torch.tensor(index, device=batch[0].device)
    return [t.index_select(0, where) for t in batch]


def _losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, the mean over a task's examples; ``[tasks]`` for a stack of tasks."""
    if labels.dim() == 1:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape).mean(-1)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).float().mean(-1).detach()
