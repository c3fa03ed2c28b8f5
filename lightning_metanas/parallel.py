"""How the tasks of a call are scheduled: which run together as one vectorised stack
(``schedule``), and, on CPU, worker threads that run them with results folded in task order.

The per-task tensors of few-shot learning (5 images) are too small for torch's intra-op
parallelism to pay, and when the cores are shared OpenMP's barriers stall; a few worker
threads with one intra-op thread each, one task at a time per thread, are faster
(BENCHMARKS.md). Results are folded in task order whichever thread finishes first, so a sum is
the same floating-point number as one thread's.
"""
from __future__ import annotations

import copy
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar

import torch

from lightning_metanas.search_space import Architecture
from lightning_metanas.supernet import SuperNet

T = TypeVar("T")


@dataclass(frozen=True)
class Unit:
    """Tasks that run as one: a single task (``tasks`` of one index), or a stack of tasks that
    share ``arch`` and run vectorised along a leading task axis."""

    arch: Architecture
    tasks: tuple[int, ...]

    @property
    def stacked(self) -> bool:
        return len(self.tasks) > 1

    def take(self, batch: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """This unit's part of a batch with a leading task axis: one task's tensors (no task
        axis), or the stack's (a view when the tasks are consecutive)."""
        if not self.stacked:
            return [t[self.tasks[0]] for t in batch]
        first = self.tasks[0]
        if self.tasks == tuple(range(first, first + len(self.tasks))):
            return [t[first : first + len(self.tasks)] for t in batch]
        where = torch.tensor(self.tasks, device=batch[0].device)
        return [t.index_select(0, where) for t in batch]


def schedule(archs: Sequence[Architecture], vectorized: bool, max_stack: int) -> list[Unit]:
    """The units of a call whose task ``t`` adapts ``archs[t]``: one task each, in task order;
    or, ``vectorized``, the tasks that share an architecture (in order of first appearance) in
    stacks of at most ``max_stack`` (a stack of one runs as a single task)."""
    if not vectorized:
        return [Unit(arch, (t,)) for t, arch in enumerate(archs)]
    groups: dict[Architecture, list[int]] = {}
    for t, arch in enumerate(archs):
        groups.setdefault(arch, []).append(t)
    return [Unit(arch, tuple(index[i : i + max_stack])) for arch, index in groups.items()
            for i in range(0, len(index), max_stack)]


class _Pool:
    """One process's worker threads, each set to one intra-op thread (torch's setting is per
    thread; the process-wide default is restored once they exist)."""

    def __init__(self, workers: int) -> None:
        self.pid, self.workers = os.getpid(), workers
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


class TaskThreads:
    """Worker threads for per-task work on a SuperNet, started on first use (and again in a
    process forked or spawned since).

    Args:
        supernet: the network the tasks call; each worker calls its own structural copy of it
            (``module``), whose parameters are the SuperNet's own tensors.
        workers: threads; ``None``: as many as torch's intra-op threads; 1: every task in the
            calling thread.
    """

    def __init__(self, supernet: SuperNet, workers: Optional[int] = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1 or None, got {workers}")
        self.supernet, self.workers = supernet, workers
        self._pool: Optional[_Pool] = None

    def __getstate__(self) -> dict:
        return {"supernet": self.supernet, "workers": self.workers, "_pool": None}  # threads are per process

    @property
    def started(self) -> bool:
        """Whether this process's worker threads exist (they start on first use)."""
        return self._pool is not None and self._pool.pid == os.getpid()

    def module(self) -> SuperNet:
        """The SuperNet this thread may hand to ``functional_call``, which swaps tensors on
        the module it is given: the SuperNet itself outside the workers, a copy sharing its
        tensors inside each."""
        pool = self._pool
        if pool is None or not getattr(pool.local, "worker", False):
            return self.supernet
        net = getattr(pool.local, "supernet", None)
        if net is None:
            shared = itertools.chain(self.supernet.parameters(), self.supernet.buffers())
            net = pool.local.supernet = copy.deepcopy(self.supernet, {id(t): t for t in shared})
        return net

    def fold_in_order(self, work: Callable[[int], T], tasks: int, fold: Callable[[int, T], None], device: torch.device) -> None:
        """``fold(t, work(t))`` for every task ``t``, in task order. On CPU with two or more
        workers the work runs on the threads, and whichever finishes a task folds it once all
        earlier tasks are in: at most a few results wait in memory and this thread computes
        nothing meanwhile."""
        pool = self._start(tasks, device)
        if pool is None:
            for t in range(tasks):
                fold(t, work(t))
            return
        lock, pending, next_task = threading.Lock(), {}, [0]

        def run(t: int) -> None:
            result = work(t)
            with lock:
                pending[t] = result
                while next_task[0] in pending:
                    fold(next_task[0], pending.pop(next_task[0]))
                    next_task[0] += 1

        for future in [pool.executor.submit(run, t) for t in range(tasks)]:
            future.result()

    def _start(self, tasks: int, device: torch.device) -> Optional[_Pool]:
        workers = torch.get_num_threads() if self.workers is None else self.workers
        if workers < 2 or tasks < 2 or device.type != "cpu":
            return None
        pool = self._pool
        if pool is None or pool.pid != os.getpid() or pool.workers != workers:
            if pool is not None and pool.pid == os.getpid():
                pool.executor.shutdown(wait=False)
            self._pool = pool = _Pool(workers)
        return pool
