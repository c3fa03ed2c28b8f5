"""What an architecture costs to run: the adapted network's forward time for one image.

A deployed few-shot classifier answers one image at a time, on whatever CPU the site has; the
figure that matters there is the wall time of one forward pass of the standalone network
(``standalone.StandaloneNet``: plain convolutions, BatchNorm with fixed statistics) on one
thread, warm. ``latency_ms`` measures exactly that, as the median of repeated runs (the median
shrugs off the odd pre-emption on a shared machine). The ground-truth bench and the search's
``max_latency_ms`` budget call this same function, so a budget means the same number in both.

A measurement is only as quiet as the machine: time nothing while other work shares the cores.
Figures are per CPU model (``cpu_model``), never portable between machines.
"""
from __future__ import annotations

import platform
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from lightning_metanas.search_space import Architecture
from lightning_metanas.standalone import StandaloneNet

_LOCK = threading.Lock()  # one measurement at a time in a process: they would share the core


@contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op threads set to 1 for the block (and restored)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latency_ms(
    arch: Architecture, in_channels: int = 1, image_size: int = 28, ways: int = 5,
    repeats: int = 50, warmup: int = 10,
) -> float:
    """Median wall time in milliseconds of one forward pass of one image through ``arch`` as
    a standalone network, on one CPU thread, after ``warmup`` passes, over ``repeats``."""
    # channels-last: what oneDNN runs fastest on CPU (Conv-4 0.38 ms against 0.72 ms in NCHW,
    # one image, one thread, measured here)
    net = StandaloneNet(arch, in_channels, image_size, ways).to(memory_format=torch.channels_last)
    x = torch.randn(1, in_channels, image_size, image_size).contiguous(memory_format=torch.channels_last)
    return median_ms(net, x, warmup, repeats)


def median_ms(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median wall time in milliseconds of ``module(x)`` on one thread, after ``warmup`` calls."""
    times = []
    with _LOCK, one_thread(), torch.inference_mode():
        for _ in range(warmup):
            module(x)
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def layer_latency_ms(op: str, c_in: int, c_out: int, size: int, pool: bool, repeats: int = 30) -> float:
    """``latency_ms`` of one standalone layer on a ``c_in`` x ``size``² input: the entries of
    ``LayerLatencyModel``."""
    from lightning_metanas.standalone import StandaloneLayer

    layer = StandaloneLayer(op, c_in, c_out, pool).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, c_in, size, size).contiguous(memory_format=torch.channels_last)
    return median_ms(layer, x, 5, repeats)


class LayerLatencyModel:
    """An estimate of ``latency_ms`` as the sum of its layers' measured times (once-for-all's
    latency lookup table): a few hundred layer timings predict any of the space's millions of
    architectures, to screen a whole-space ranking before the few candidates left are measured
    whole. Never a budget's last word: that is ``latency_ms``."""

    def __init__(self, space, in_channels: int = 1, image_size: int = 28) -> None:
        from lightning_metanas.ops import pooled_size

        self.table: dict[tuple[int, str, int, int], float] = {}
        size = image_size
        for i in range(space.max_depth):
            inputs = [in_channels] if i == 0 else list(space.widths)
            for op in space.ops:
                for c_in in inputs:
                    for c_out in space.widths:
                        self.table[(i, op, c_in, c_out)] = layer_latency_ms(op, c_in, c_out, size, size >= 2)
            size = pooled_size(size)
        self.in_channels = in_channels

    def layer(self, i: int, op: str, c_in: int, c_out: int, size: int = 0) -> float:
        return self.table[(i, op, c_in, c_out)]

    def __call__(self, arch: Architecture) -> float:
        total, c_in = 0.0, self.in_channels
        for i, (op, width) in enumerate(zip(arch.ops, arch.widths)):
            total += self.layer(i, op, c_in, width)
            c_in = width
        return total


class LatencyTable:
    """``latency_ms`` remembered per architecture within a process (a search asks for the same
    architecture many times; one measurement each is what the budget is checked against)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, ways: int = 5, repeats: int = 50) -> None:
        self.in_channels, self.image_size, self.ways, self.repeats = in_channels, image_size, ways, repeats
        self.measured: dict[Architecture, float] = {}

    def __call__(self, arch: Architecture) -> float:
        if arch not in self.measured:
            self.measured[arch] = latency_ms(arch, self.in_channels, self.image_size, self.ways, self.repeats)
        return self.measured[arch]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), which every timing and accuracy record names:
    machines of one kind differ in CPU from day to day, and figures move with it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
