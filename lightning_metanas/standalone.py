"""One architecture of the SuperNet as a plain ``nn.Module``: no SuperNet, no functional calls.

What a user deploys, exports (TorchScript, ONNX) or fine-tunes elsewhere, and what the cost
model times (``latency.py``): real ``nn.Conv2d`` layers of the architecture's own sizes, each
followed by an ``nn.BatchNorm2d`` in eval mode whose running statistics are the ones inference
uses (the adapted task's support statistics, ``ops.NormStatistics``), so the network's output
for an image never depends on the rest of its batch. The layer structure, including where the
2x2 pooling stops, is fixed at construction from the input size, so tracing and exporting see
no data-dependent branch.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_metanas.ops import BN_EPS, OWN_NORMS, NormStatistics, batch_moments, blend_normalize, instance_moments, pooled_size
from lightning_metanas.search_space import Architecture
from lightning_metanas.supernet import SuperNet


class StandaloneTaskNorm(nn.BatchNorm2d):
    """TaskNorm-I with its task statistics fixed: ``running_mean`` / ``running_var`` (recorded
    on the adapted task's support images, ``count`` of them) blended with each image's own,
    ``alpha = sigmoid(blend[0] * count + blend[1])``, as ``ops.blend_normalize`` does in the
    SuperNet. Without running statistics (``export.batch_statistics``) the batch is the task."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=BN_EPS)
        self.register_buffer("blend", torch.zeros(2))
        self.register_buffer("count", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        instance = instance_moments(x)
        if self.running_mean is None:
            (mean, var), n = batch_moments(instance), x.shape[0]
        else:
            mean, var, n = self.running_mean, self.running_var, self.count
        alpha = torch.sigmoid(self.blend[0] * n + self.blend[1])
        return blend_normalize(x, mean, var, alpha, self.weight, self.bias, instance)


class StandaloneLayer(nn.Module):
    """``op -> BatchNorm (or TaskNorm-I, or layer norm) -> ReLU [-> 2x2 max pool]``, as one layer
    of ``SuperNet.features``. ``own_norm="layer"``: normalised with each image's own statistics
    (``ops.own_normalize``, GroupNorm with one group), so the layer holds no task statistics."""

    def __init__(self, op: str, c_in: int, c_out: int, pool: bool, task_norm: bool = False,
                 own_norm: Optional[str] = None) -> None:
        super().__init__()
        self.transform = _transform(op, c_in, c_out)
        if own_norm == "layer":  # ops.OWN_NORMS
            self.norm: nn.Module = nn.GroupNorm(1, c_out, eps=BN_EPS)
        elif own_norm is not None:
            raise ValueError(f"own_norm must be one of {list(OWN_NORMS)} or None, got {own_norm!r}")
        else:
            self.norm = StandaloneTaskNorm(c_out) if task_norm else nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.transform(x))))


class StandaloneNet(nn.Module):
    """``arch`` for ``in_channels`` x ``image_size`` x ``image_size`` images and ``ways``
    classes. Built with fresh weights; ``from_supernet`` copies a SuperNet's (or adapted) ones.
    ``task_norm``: TaskNorm-I layers (``StandaloneTaskNorm``) where a plain one has BatchNorm.
    ``last_norm="layer"``: the last layer normalises each image alone (``meta.last_norm``)."""

    def __init__(self, arch: Architecture, in_channels: int, image_size: int, ways: int, task_norm: bool = False,
                 last_norm: str = "task") -> None:
        super().__init__()
        if last_norm not in ("task", *OWN_NORMS):
            raise ValueError(f"last_norm must be one of {['task', *OWN_NORMS]}, got {last_norm!r}")
        self.arch, self.in_channels, self.image_size, self.ways = arch, in_channels, image_size, ways
        self.task_norm, self.last_norm = task_norm, last_norm
        layers, c_in, size = [], in_channels, image_size
        for i, (op, width) in enumerate(zip(arch.ops, arch.widths)):
            own = last_norm if last_norm != "task" and i == len(arch.ops) - 1 else None
            layers.append(StandaloneLayer(op, c_in, width, pool=size >= 2, task_norm=task_norm, own_norm=own))
            c_in, size = width, pooled_size(size)
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, ways)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x).mean(dim=(-2, -1)))

    @classmethod
    def from_supernet(
        cls, supernet: SuperNet, arch: Architecture, image_size: int,
        params: Optional[Sequence[torch.Tensor]] = None, stats: Optional[NormStatistics] = None,
    ) -> "StandaloneNet":
        """The subnet ``arch`` of ``supernet`` with its weight slices copied out: the SuperNet's
        own parameters, or ``params`` in the order of ``supernet.parameters_of(arch)`` (adapted
        weights); BatchNorm statistics from ``stats`` (recorded on support images), else
        mean 0 and variance 1 until ``set_statistics`` is called."""
        net = cls(arch, supernet.in_channels, image_size, supernet.ways, task_norm=supernet.task_norm,
                  last_norm=supernet.last_norm)
        named = supernet.parameters_of(arch)
        tensors = dict(zip((n for n, _ in named), params if params is not None else (p for _, p in named)))
        c_in = supernet.in_channels
        with torch.no_grad():
            for i, (layer, op, width) in enumerate(zip(net.layers, arch.ops, arch.widths)):
                prefix = f"slots.{i}.{op}."
                _copy_transform(layer.transform, op, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, c_in, width)
                layer.norm.weight.copy_(tensors[prefix + "bn_weight"][:width])
                layer.norm.bias.copy_(tensors[prefix + "bn_bias"][:width])
                if isinstance(layer.norm, StandaloneTaskNorm):
                    layer.norm.blend.copy_(tensors[prefix + "norm_blend"])
                c_in = width
            net.head.weight.copy_(tensors["head_weight"][:, :c_in])
            net.head.bias.copy_(tensors["head_bias"])
        if stats is not None:
            net.set_statistics(stats)
        return net

    def task_norm_layers(self) -> list[StandaloneLayer]:
        """The layers that normalise with a task's statistics (all but a layer-normalised last one)."""
        return [layer for layer in self.layers if isinstance(layer.norm, nn.BatchNorm2d)]

    def set_statistics(self, stats: NormStatistics) -> None:
        """Every BatchNorm's running mean and variance from ``stats`` (one pair per layer that
        takes a task's statistics)."""
        layers = self.task_norm_layers()
        if len(stats.means) != len(layers):
            raise ValueError(f"statistics of {len(stats.means)} layers for a network with {len(layers)} that take them")
        with torch.no_grad():
            for layer, mean, var, n in zip(layers, stats.means, stats.variances, stats.counts):
                layer.norm.running_mean.copy_(mean.detach().reshape(-1))
                layer.norm.running_var.copy_(var.detach().reshape(-1))
                if self.task_norm:
                    layer.norm.count.fill_(n)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _transform(op: str, c_in: int, c_out: int) -> nn.Module:
    if op in ("conv3x3", "conv5x5", "dil_conv3x3"):
        kernel, dilation = (5, 1) if op == "conv5x5" else (3, 2 if op == "dil_conv3x3" else 1)
        pad = dilation * (kernel - 1) // 2
        return nn.Conv2d(c_in, c_out, kernel, padding=pad, dilation=dilation, bias=False)
    if op == "sep_conv3x3":
        return nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
        )
    pools = {
        "max_pool3x3": lambda: nn.MaxPool2d(3, stride=1, padding=1),
        "avg_pool3x3": lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
        "skip": nn.Identity,
    }
    if op not in pools:  # ops.OPERATIONS gained an op: it needs its standalone form here
        raise NotImplementedError(f"no standalone form of operation {op!r}")
    pool = pools[op]()
    if c_in == c_out:
        return pool
    return nn.Sequential(pool, nn.Conv2d(c_in, c_out, 1, bias=False))


def _copy_transform(module: nn.Module, op: str, tensors: dict[str, torch.Tensor], c_in: int, c_out: int) -> None:
    """The slices ``ops.py``'s shared op reads for ``c_in -> c_out``, into ``module``."""
    if isinstance(module, nn.Conv2d):  # Conv
        module.weight.copy_(tensors["weight"][:c_out, :c_in])
    elif op == "sep_conv3x3":
        module[0].weight.copy_(tensors["depthwise"][:c_in])
        module[1].weight.copy_(tensors["pointwise"][:c_out, :c_in])
    elif isinstance(module, nn.Sequential):  # a pool with its 1x1 projection
        module[1].weight.copy_(tensors["projection"][:c_out, :c_in])

