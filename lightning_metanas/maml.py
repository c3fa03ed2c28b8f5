"""Few-shot adaptation of one subnet and its meta-gradient: the only module that talks to
learn2learn.

Everything else in the project asks this seam for "the query loss after adapting ``arch`` on
this support set" (``meta_loss``), for "the meta-gradient of that loss" (``meta_gradient``) or
for "the accuracy after adaptation" (``evaluate``) and never sees how the adaptation is done.

Two implementations of the same inner loop live here:

* learn2learn's ``MAML`` (``TaskAdapter.adapt``: ``clone()`` + ``adapt()``), the documented
  reference. It clones *every* SuperNet parameter for every task and differentiates through
  all of them, although a subnet uses a small fraction.
* a functional one (``torch.func.functional_call``) over only the parameters the architecture
  uses (``SuperNet.parameters_of``), which the hot paths (meta-training, evaluation) take:
  no module is cloned, and parameters the subnet does not use never enter a graph. It is
  tested to give the same adapted weights and meta-gradients as learn2learn's.

Meta-gradient modes (``MetaConfig.meta_gradient``):

* ``second_order``: the exact MAML meta-gradient, by autograd through all inner steps
  (``create_graph=True``).
* ``first_order``: FOMAML, the query gradient at the adapted weights.
* ``finite_difference``: the second-order meta-gradient without a second-order graph. The
  query gradient ``v`` is carried back through the inner SGD steps
  ``theta_{i+1} = theta_i - lr * grad L_s(theta_i)``, whose vector-Jacobian product is
  ``v - lr * H_i v``, with the Hessian-vector product approximated by central differences of
  support gradients, ``H_i v ~ (grad L_s(theta_i + eps v) - grad L_s(theta_i - eps v)) / 2 eps``
  and ``eps = fd_epsilon / ||v||`` (the approximation DARTS uses for its architecture
  gradient). Only first-order graphs are ever built, one at a time: memory stays at
  first-order level. The gradient is near second-order only while the segments
  ``theta +- eps v`` cross no ReLU or max-pooling kink (there the gradient jumps, and the
  difference picks up ``jump / 2 eps``): on Conv-4/Omniglot in float32, ``fd_epsilon=1e-5``
  measured a cosine of ~0.98 to the second-order meta-gradient (hence the default), DARTS'
  0.01 ~0.1 (BENCHMARKS.md).

Tasks run in parallel on CPU (``TaskAdapter.meta_batch_gradient``): a few worker threads, each
with one intra-op thread and its own structural copy of the SuperNet (sharing the parameter
tensors), instead of one task at a time with torch's intra-op threads. The per-task tensors
of few-shot learning (5 images) are too small for intra-op parallelism to pay, and when the
cores are shared, OpenMP's barriers stall; see BENCHMARKS.md for what each measured.
"""
from __future__ import annotations

import copy
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence

import learn2learn as l2l
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lightning_metanas.errors import SettingsError
from lightning_metanas.search_space import Architecture
from lightning_metanas.supernet import SuperNet

MetaGradient = Literal["first_order", "second_order", "finite_difference"]
META_GRADIENTS: tuple[str, ...] = ("first_order", "second_order", "finite_difference")


@dataclass
class MetaConfig:
    """How the SuperNet's weights are meta-learned.

    Args:
        inner_lr: SGD step size of the per-task adaptation.
        inner_steps: adaptation steps per task during meta-training.
        eval_inner_steps: adaptation steps per task at validation and meta-test.
        meta_lr: Adam learning rate of the outer (meta) update.
        meta_gradient: ``first_order`` (FOMAML), ``second_order`` (exact MAML gradient
            through the inner steps) or ``finite_difference`` (the second-order gradient with
            its Hessian-vector products approximated by central differences of gradients:
            close to ``second_order``, at the memory of ``first_order``).
        fd_epsilon: scale of the finite-difference step: the parameters move by
            ``eps = fd_epsilon / ||v||`` along the vector ``v`` whose Hessian product is
            approximated, i.e. by a distance of ``fd_epsilon`` (``finite_difference`` only).
            Smaller crosses fewer ReLU/max-pool kinks but loses float precision: on
            Conv-4/Omniglot (float32) 1e-5 agreed with ``second_order`` far better than
            DARTS' 0.01 (see BENCHMARKS.md).
    """

    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int = 3
    meta_lr: float = 0.003
    meta_gradient: MetaGradient = "first_order"
    fd_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        # SettingsError: a user's mistake, printed by the entry points as one line.
        for name in ("inner_lr", "meta_lr", "fd_epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 < value < float("inf")
            ):
                raise SettingsError(
                    f"model.meta.{name} must be a finite number > 0, got {value!r}"
                )
        for name in ("inner_steps", "eval_inner_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(f"model.meta.{name} must be an integer >= 1, got {value!r}")
        if self.meta_gradient not in META_GRADIENTS:
            raise SettingsError(
                f"model.meta.meta_gradient must be one of {list(META_GRADIENTS)}, "
                f"got {self.meta_gradient!r}"
            )


@dataclass
class TaskResult:
    loss: torch.Tensor  # query loss after adaptation (differentiable for meta-training)
    accuracy: torch.Tensor  # query accuracy after adaptation (a detached scalar)


@dataclass
class TaskGradient:
    """One task's meta-gradient, computed explicitly (no graph is left behind)."""

    loss: torch.Tensor  # query loss after adaptation (detached scalar)
    accuracy: torch.Tensor  # query accuracy after adaptation (detached scalar)
    params: list[torch.nn.Parameter]  # the SuperNet parameters the architecture uses
    grads: list[Optional[torch.Tensor]]  # d loss / d param; None where the subnet never reads it


@dataclass
class MetaBatchGradient:
    """The meta-gradients of a meta-batch's tasks, summed (no graph is left behind)."""

    losses: torch.Tensor  # [tasks] query losses after adaptation (detached)
    accuracies: torch.Tensor  # [tasks] query accuracies after adaptation (detached)
    grads: dict[torch.nn.Parameter, torch.Tensor]  # parameter -> sum over tasks; used ones only


Grads = list[Optional[torch.Tensor]]
_USED_CACHE_SIZE = 1024  # architectures whose used-parameter lookup is cached


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A batch of images ``[N, C, H, W]`` in channels-last memory layout (same values).

    On CPU, oneDNN convolutions then produce channels-last maps, on which max pooling runs
    ~10x and batch norm ~2x faster than on NCHW maps (measured: ``bench/meta_step.py
    --variants``). With one channel NCHW and NHWC strides are both valid, and
    ``Tensor.contiguous(memory_format=...)`` keeps the NCHW ones, so the layout is built
    explicitly.
    """
    if x.dim() != 4:
        return x
    n, c, h, w = x.shape
    out = torch.empty((n, h, w, c), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
    return out.copy_(x)


class _TaskThreads:
    """Worker threads for per-task work on CPU.

    Each worker runs with one intra-op thread (set in the worker itself: torch's setting is
    per thread; the process-wide default is restored afterwards) and, because
    ``functional_call`` swaps tensors on the module it is given, calls its own structural copy
    of the SuperNet, whose parameters are the SuperNet's own tensors (nothing is copied).
    """

    def __init__(self, supernet: SuperNet, workers: int) -> None:
        self.pid, self.workers, self.supernet = os.getpid(), workers, supernet
        self.local = threading.local()
        ready = threading.Barrier(workers + 1)

        def init() -> None:
            self.local.worker = True
            torch.set_num_threads(1)
            torch.get_num_threads()  # settle this thread's intra-op settings now
            ready.wait(timeout=120)

        default = torch.get_num_threads()
        self.executor = ThreadPoolExecutor(workers, "metanas-task", initializer=init)
        for _ in range(workers):  # each blocks in init until all exist: `workers` threads
            self.executor.submit(int)
        ready.wait(timeout=120)
        torch.set_num_threads(default)

    def in_worker(self) -> bool:
        return getattr(self.local, "worker", False)

    def module(self) -> SuperNet:
        net = getattr(self.local, "supernet", None)
        if net is None:
            shared = itertools.chain(self.supernet.parameters(), self.supernet.buffers())
            net = copy.deepcopy(self.supernet, {id(t): t for t in shared})
            self.local.supernet = net
        return net


class TaskAdapter:
    """Adapts a subnet to one task and measures it on the query set.

    Holds the learn2learn wrapper as a plain attribute (not a registered submodule) so the
    SuperNet's parameters appear once in the LightningModule's state dict.

    Args:
        supernet: the weight-sharing network.
        inner_lr: SGD step size of the adaptation.
        fd_epsilon: finite-difference scale (``eps = fd_epsilon / ||v||``).
        workers: threads that ``meta_batch_gradient`` spreads a meta-batch's tasks over, on
            CPU; ``None``: as many as torch's intra-op threads; 1: one task after the other
            in the calling thread.

    Memory layout: where it is measured faster (``bench/meta_step.py --variants``), images
    are put in channels-last layout before the forward passes. Only the second-order support
    passes stay NCHW: their double-backward (batch-norm's above all) is slower on
    channels-last maps.
    """

    def __init__(
        self,
        supernet: SuperNet,
        inner_lr: float,
        fd_epsilon: float = 1e-5,
        workers: Optional[int] = None,
    ) -> None:
        if not fd_epsilon > 0:
            raise ValueError(f"fd_epsilon must be > 0, got {fd_epsilon}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1 or None, got {workers}")
        self.supernet = supernet
        self.inner_lr = inner_lr
        self.fd_epsilon = fd_epsilon
        self.workers = workers
        self._threads: Optional[_TaskThreads] = None
        self._used_slots: dict[Architecture, list[tuple[str, torch.nn.Module, str]]] = {}
        self._lock = threading.Lock()
        # allow_unused: the subnet leaves most SuperNet paths unused; their gradient is None
        # and learn2learn must skip them rather than fail.
        self.maml = l2l.algorithms.MAML(supernet, lr=inner_lr, allow_unused=True)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_threads"] = None  # threads are per process; rebuilt on first use
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- learn2learn reference ---------------------------------------------------------------
    def adapt(
        self, arch: Architecture, x: torch.Tensor, y: torch.Tensor, steps: int, create_graph: bool
    ) -> l2l.algorithms.MAML:
        """learn2learn's ``clone()``/``adapt()``: a whole adapted SuperNet, usable as
        ``learner(x, arch)``. The reference the functional path is tested against; the hot
        paths use the functional path (no clone of unused parameters)."""
        learner = self.maml.clone()
        for _ in range(steps):
            loss = F.cross_entropy(learner(x, arch), y)
            learner.adapt(loss, first_order=not create_graph)
        return learner

    # -- functional inner loop ---------------------------------------------------------------
    def _forward(self, arch: Architecture, names: Sequence[str]) -> Callable:
        threads = self._threads
        in_worker = threads is not None and threads.in_worker()
        supernet = threads.module() if in_worker else self.supernet

        def forward(params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            # strict=False: the parameters the subnet does not use stay the module's own and
            # are never read. tie_weights=False: the SuperNet ties none, and looking for ties
            # walks every SuperNet parameter (measured: it tripled functional_call's cost).
            params = dict(zip(names, params))
            return functional_call(supernet, params, (x, arch), strict=False, tie_weights=False)

        return forward

    def _used(self, arch: Architecture) -> tuple[list[str], list[torch.nn.Parameter]]:
        with self._lock:  # worker threads share the cache
            slots = self._used_slots.pop(arch, None)
            if slots is None:  # parameters_of walks the whole SuperNet: cache (LRU) per arch
                slots = []
                for name, _ in self.supernet.parameters_of(arch):
                    module, _, attr = name.rpartition(".")
                    slots.append((name, self.supernet.get_submodule(module), attr))
                if len(self._used_slots) >= _USED_CACHE_SIZE:
                    self._used_slots.pop(next(iter(self._used_slots)))
            self._used_slots[arch] = slots  # (re)inserted last: most recently used
        # read the parameters now (not cached): whatever replaced them is what is used
        return [n for n, _, _ in slots], [m._parameters[a] for _, m, a in slots]

    def _sgd_step(
        self, params: Sequence[torch.Tensor], grads: Grads, detach: bool
    ) -> list[torch.Tensor]:
        lr = self.inner_lr
        return [
            p if g is None else p - lr * (g.detach() if detach else g)
            for p, g in zip(params, grads)
        ]

    def meta_loss(
        self,
        arch: Architecture,
        support: tuple[torch.Tensor, torch.Tensor],
        query: tuple[torch.Tensor, torch.Tensor],
        steps: int,
        second_order: bool,
    ) -> TaskResult:
        """The query loss after ``steps`` inner steps, differentiable w.r.t. the SuperNet (its
        gradient is the first- or second-order meta-gradient)."""
        names, leaves = self._used(arch)
        forward = self._forward(arch, names)
        xs, ys = support
        if not second_order:
            xs = channels_last(xs)
        params: list[torch.Tensor] = list(leaves)
        for _ in range(steps):
            loss = F.cross_entropy(forward(params, xs), ys)
            grads = torch.autograd.grad(
                loss, params, create_graph=second_order, allow_unused=True
            )
            params = self._sgd_step(params, grads, detach=not second_order)
        logits = forward(params, channels_last(query[0]))
        loss = F.cross_entropy(logits, query[1])
        return TaskResult(loss, _accuracy(logits, query[1]))

    def meta_batch_gradient(
        self,
        archs: Sequence[Architecture],
        batch: Sequence[torch.Tensor],
        steps: int,
        mode: MetaGradient,
        fd_epsilon: Optional[float] = None,
    ) -> MetaBatchGradient:
        """``meta_gradient`` of every task of a meta-batch ``(support_x, support_y, query_x,
        query_y)`` (leading task axis; task ``t`` adapts ``archs[t]``), summed.

        On CPU the tasks are spread over worker threads (see ``workers``). Whichever thread
        finishes a task adds it to the sum once all earlier tasks are in, so the sum is taken
        in task order (the same floating-point result as one thread's) while at most a few
        tasks' gradients wait in memory, and this thread computes nothing meanwhile."""
        support_x, support_y, query_x, query_y = batch
        n = len(archs)
        losses: list[Optional[torch.Tensor]] = [None] * n
        accuracies: list[Optional[torch.Tensor]] = [None] * n
        total: dict[torch.nn.Parameter, torch.Tensor] = {}
        pending: dict[int, TaskGradient] = {}
        lock = threading.Lock()
        next_task = [0]

        def add(t: int, result: TaskGradient) -> None:
            losses[t], accuracies[t] = result.loss, result.accuracy
            for p, g in zip(result.params, result.grads):
                if g is not None:
                    if p in total:
                        total[p].add_(g)
                    else:
                        total[p] = g.clone()

        def task(t: int) -> None:
            result = self.meta_gradient(
                archs[t], (support_x[t], support_y[t]), (query_x[t], query_y[t]),
                steps, mode, fd_epsilon,
            )
            with lock:
                pending[t] = result
                while next_task[0] in pending:
                    add(next_task[0], pending.pop(next_task[0]))
                    next_task[0] += 1

        threads = self._task_threads(n, support_x.device)
        if threads is None:
            for t in range(n):
                task(t)
        else:
            for future in [threads.executor.submit(task, t) for t in range(n)]:
                future.result()
        return MetaBatchGradient(torch.stack(losses), torch.stack(accuracies), total)

    def _task_threads(self, tasks: int, device: torch.device) -> Optional[_TaskThreads]:
        workers = torch.get_num_threads() if self.workers is None else self.workers
        if workers < 2 or tasks < 2 or device.type != "cpu":
            return None
        threads = self._threads
        if threads is None or threads.pid != os.getpid() or threads.workers != workers:
            if threads is not None and threads.pid == os.getpid():
                threads.executor.shutdown(wait=False)
            self._threads = threads = _TaskThreads(self.supernet, workers)
        return threads

    def meta_gradient(
        self,
        arch: Architecture,
        support: tuple[torch.Tensor, torch.Tensor],
        query: tuple[torch.Tensor, torch.Tensor],
        steps: int,
        mode: MetaGradient,
        fd_epsilon: Optional[float] = None,
    ) -> TaskGradient:
        """The task's query loss after ``steps`` inner steps and its meta-gradient w.r.t. the
        parameters ``arch`` uses, computed here and now: the task's graphs are freed on
        return, so a meta-batch never holds more than one graph per thread.
        ``fd_epsilon`` overrides the adapter's for ``finite_difference``."""
        names, leaves = self._used(arch)
        forward = self._forward(arch, names)
        if mode == "second_order":
            with torch.enable_grad():
                result = self.meta_loss(arch, support, query, steps, second_order=True)
                grads = torch.autograd.grad(result.loss, leaves, allow_unused=True)
            return TaskGradient(result.loss.detach(), result.accuracy, leaves, list(grads))
        if mode not in ("first_order", "finite_difference"):
            raise ValueError(f"unknown meta-gradient mode {mode!r}; one of {list(META_GRADIENTS)}")

        xs, ys = channels_last(support[0]), support[1]
        reached = [False] * len(leaves)  # whether any gradient ever reached the parameter

        def support_grad(theta: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            theta = [t.detach().requires_grad_() for t in theta]
            loss = F.cross_entropy(forward(theta, xs), ys)
            grads = torch.autograd.grad(loss, theta, allow_unused=True)
            out = []
            for i, (t, g) in enumerate(zip(theta, grads)):
                reached[i] |= g is not None
                out.append(torch.zeros_like(t) if g is None else g)
            return out

        with torch.enable_grad():
            thetas = [[p.detach() for p in leaves]]
            for _ in range(steps):
                grads = support_grad(thetas[-1])
                thetas.append([t - self.inner_lr * g for t, g in zip(thetas[-1], grads)])
            adapted = [t.requires_grad_() for t in thetas[-1]]
            logits = forward(adapted, channels_last(query[0]))
            loss = F.cross_entropy(logits, query[1])
            query_grads = torch.autograd.grad(loss, adapted, allow_unused=True)
        for i, g in enumerate(query_grads):
            reached[i] |= g is not None
        v = [torch.zeros_like(t) if g is None else g for t, g in zip(adapted, query_grads)]
        if mode == "finite_difference":
            fd_epsilon = self.fd_epsilon if fd_epsilon is None else fd_epsilon
            if not fd_epsilon > 0:
                raise ValueError(f"fd_epsilon must be > 0, got {fd_epsilon}")
            for theta in reversed(thetas[:-1]):
                v = self._fd_vjp_of_sgd_step(theta, v, support_grad, fd_epsilon)
        grads_out: Grads = [g if r else None for g, r in zip(v, reached)]
        return TaskGradient(loss.detach(), _accuracy(logits, query[1]), leaves, grads_out)

    def _fd_vjp_of_sgd_step(
        self,
        theta: Sequence[torch.Tensor],
        v: Sequence[torch.Tensor],
        support_grad: Callable[[Sequence[torch.Tensor]], list[torch.Tensor]],
        fd_epsilon: float,
    ) -> list[torch.Tensor]:
        """``(I - lr H) v`` for the SGD step taken at ``theta``, with ``H v`` by central
        differences of support gradients at ``theta +- eps v``, ``eps = fd_epsilon / ||v||``."""
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in v]))
        if not torch.isfinite(norm) or norm == 0:
            return list(v)
        eps = fd_epsilon / float(norm)
        plus = support_grad([t + eps * d for t, d in zip(theta, v)])
        minus = support_grad([t - eps * d for t, d in zip(theta, v)])
        scale = self.inner_lr / (2 * eps)
        return [d - scale * (gp - gm) for d, gp, gm in zip(v, plus, minus)]

    @torch.enable_grad()  # adaptation needs gradients even inside validation / test loops
    def evaluate(
        self,
        arch: Architecture,
        support: tuple[torch.Tensor, torch.Tensor],
        query: tuple[torch.Tensor, torch.Tensor],
        steps: int,
    ) -> TaskResult:
        """Query loss and accuracy after ``steps`` inner steps (nothing differentiable)."""
        names, leaves = self._used(arch)
        forward = self._forward(arch, names)
        xs, ys = channels_last(support[0]), support[1]
        params = [p.detach() for p in leaves]
        for _ in range(steps):
            params = [p.requires_grad_() for p in params]
            loss = F.cross_entropy(forward(params, xs), ys)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            params = [p.detach() for p in self._sgd_step(params, grads, detach=True)]
        with torch.no_grad():
            logits = forward(params, channels_last(query[0]))
            loss = F.cross_entropy(logits, query[1])
        return TaskResult(loss, _accuracy(logits, query[1]))


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).float().mean().detach()
