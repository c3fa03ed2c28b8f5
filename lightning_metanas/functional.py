"""One subnet of the SuperNet as a function of the parameters it uses: what every inner loop
calls, so that parameters the subnet does not use never enter a graph.

``UsedParameters`` finds those parameters once per architecture (``SuperNet.parameters_of``
walks the whole SuperNet) and ``subnet_function`` calls the SuperNet with them through
``torch.func.functional_call``, for one task or, vectorised with ``torch.func.vmap``, for a
stack of tasks each with its own weights. ``channels_last`` is the memory layout the inner
loops give their images on CPU.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from lightning_metanas.ops import NormStatistics
from lightning_metanas.search_space import Architecture
from lightning_metanas.supernet import SuperNet

# (params, x[, stats_from]) -> logits; with ``stats_from`` (images, e.g. a task's support set),
# every layer normalises ``x`` with the statistics of ``stats_from`` instead of its own batch's.
SubnetFunction = Callable[..., torch.Tensor]
_CACHE_SIZE = 1024  # architectures whose parameter lookup is remembered


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


class UsedParameters:
    """The names and current tensors of the parameters an architecture uses, remembered per
    architecture (least recently used forgotten first). What is remembered is where each
    parameter lives (module and attribute), not the tensor: a parameter replaced since (a new
    head for a task) is what the next lookup returns. Safe to call from worker threads."""

    def __init__(self, supernet: SuperNet) -> None:
        self.supernet = supernet
        self._slots: dict[Architecture, list[tuple[str, nn.Module, str]]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"supernet": self.supernet}  # the lookups are rebuilt; a lock does not pickle

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["supernet"])

    def __call__(self, arch: Architecture) -> tuple[list[str], list[nn.Parameter]]:
        with self._lock:
            slots = self._slots.pop(arch, None)
            if slots is None:
                slots = []
                for name, _ in self.supernet.parameters_of(arch):
                    module, _, attr = name.rpartition(".")
                    slots.append((name, self.supernet.get_submodule(module), attr))
                if len(self._slots) >= _CACHE_SIZE:
                    self._slots.pop(next(iter(self._slots)))
            self._slots[arch] = slots  # (re)inserted last: most recently used
        return [n for n, _, _ in slots], [m._parameters[a] for _, m, a in slots]


def subnet_function(supernet: SuperNet, arch: Architecture, names: Sequence[str], tasks: bool = False) -> SubnetFunction:
    """``arch``'s logits as a function of the tensors standing for the parameters ``names``.

    ``functional_call`` swaps those tensors into ``supernet`` for the call, so concurrent
    callers each need their own structural copy of it (``parallel.TaskThreads.module``).
    ``tasks``: every parameter and the images carry a leading task axis (``[tasks, ...]``,
    ``[tasks, N, C, H, W]``) and each task runs with its own parameters, logits
    ``[tasks, N, ways]``: ``torch.func.vmap`` over tasks, which turns the convolutions into
    grouped ones and computes BatchNorm's batch statistics per task."""

    def call(params: Sequence[torch.Tensor], x: torch.Tensor, norm: Optional[NormStatistics]) -> torch.Tensor:
        # strict=False: the parameters the subnet does not use stay the module's own and are
        # never read. tie_weights=False: the SuperNet ties none, and looking for ties walks
        # every SuperNet parameter (measured: it tripled functional_call's cost).
        return functional_call(supernet, dict(zip(names, params)), (x, arch, norm), strict=False, tie_weights=False)

    def forward(params: Sequence[torch.Tensor], x: torch.Tensor, stats_from: Optional[torch.Tensor] = None) -> torch.Tensor:
        if stats_from is None:
            return call(params, x, None)
        norm = NormStatistics()
        call(params, stats_from, norm.record())
        return call(params, x, norm.apply())

    return vmap(forward) if tasks else forward


@torch.no_grad()
def record_statistics(supernet: SuperNet, arch: Architecture, names: Sequence[str], params: Sequence[torch.Tensor],
                      images: torch.Tensor) -> NormStatistics:
    """Each layer's BatchNorm statistics of ``images`` (a task's support set) through ``arch``
    with ``params``: what an adapted network normalises every later image with."""
    stats = NormStatistics()
    functional_call(supernet, dict(zip(names, params)), (images, arch, stats.record()), strict=False, tie_weights=False)
    return stats
