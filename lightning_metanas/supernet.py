"""The weight-sharing SuperNet: every architecture of a search space in one module."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_metanas.ops import OPERATIONS, OWN_NORMS, NormStatistics, downsample, pooled_size
from lightning_metanas.search_space import Architecture, SearchSpace


class SuperNet(nn.Module):
    """``forward(x, arch)`` runs the one subnet that ``arch`` names.

    Layer ``i`` of every architecture uses the ops of slot ``i`` (so shallower subnets share
    the first slots of deeper ones); each layer is ``op -> BatchNorm -> ReLU -> 2x2 max
    pool``, then global average pooling and a linear head sliced to the last layer's width.
    With every op ``conv3x3`` at width 64 and depth 4 this is exactly Conv-4, the MAML
    baseline. Parameters of paths that ``arch`` does not use get no gradient (``None``),
    which is why learn2learn's MAML must be built with ``allow_unused=True``.
    """

    def __init__(self, space: SearchSpace, ways: int, in_channels: int = 1, task_norm: bool = False,
                 last_norm: str = "task") -> None:
        """``task_norm``: every op normalises as TaskNorm-I (``ops.blend_normalize``), with two
        more parameters per op. ``last_norm``: ``task`` (the last layer of a subnet normalises
        as the others), ``layer`` (with the image's own statistics alone,
        ``ops.own_normalize``: meta.last_norm). Which slot is last depends on the subnet's depth,
        so it is decided per pass, not per op."""
        super().__init__()
        if last_norm != "task" and last_norm not in OWN_NORMS:
            raise ValueError(f"last_norm must be one of {['task', *OWN_NORMS]}, got {last_norm!r}")
        self.space, self.ways, self.in_channels, self.task_norm = space, ways, in_channels, task_norm
        self.last_norm = last_norm
        self.slots = nn.ModuleList()
        for i in range(space.max_depth):
            max_in = in_channels if i == 0 else space.max_width
            self.slots.append(
                nn.ModuleDict({op: OPERATIONS[op](max_in, space.max_width) for op in space.ops})
            )
            if task_norm:
                for op in self.slots[-1].values():
                    op.use_task_norm()
        self.head_weight = nn.Parameter(torch.empty(ways, space.max_width))
        self.head_bias = nn.Parameter(torch.zeros(ways))
        nn.init.xavier_uniform_(self.head_weight)

    def _layer_maps(self, x: torch.Tensor, arch: Architecture, norm: Optional[NormStatistics]):
        last = len(arch.ops) - 1 if self.last_norm != "task" else -1
        for i, (slot, op, width) in enumerate(zip(self.slots, arch.ops, arch.widths)):
            x = downsample(F.relu(slot[op](x, width, norm, self.last_norm if i == last else None)))
            yield x

    def features(self, x: torch.Tensor, arch: Architecture, norm: Optional[NormStatistics] = None) -> torch.Tensor:
        for x in self._layer_maps(x, arch, norm):
            pass
        return x.mean(dim=(-2, -1))

    def layer_features(self, x: torch.Tensor, arch: Architecture, norm: Optional[NormStatistics] = None
                       ) -> list[torch.Tensor]:
        """Every layer's output averaged over space, first layer first (the last one is
        ``features``): the suspect score compares images in more than the last layer's space."""
        return [m.mean(dim=(-2, -1)) for m in self._layer_maps(x, arch, norm)]

    def forward(self, x: torch.Tensor, arch: Architecture, norm: Optional[NormStatistics] = None) -> torch.Tensor:
        """``norm``: record or apply BatchNorm statistics (``ops.NormStatistics``); ``None``:
        every layer normalises with the batch's own."""
        h = self.features(x, arch, norm)
        return F.linear(h, self.head_weight[:, : h.shape[1]], self.head_bias)

    def parameters_of(self, arch: Architecture) -> list[tuple[str, nn.Parameter]]:
        """The named parameters that ``arch`` uses (whole tensors, not the width slices)."""
        used = [f"slots.{i}.{op}." for i, op in enumerate(arch.ops)]
        return [
            (name, p)
            for name, p in self.named_parameters()
            if name.startswith("head_") or any(name.startswith(u) for u in used)
        ]

    def layer_parameters(self, i: int, op: str, c_in: int, width: int) -> int:
        """Parameters of layer ``i`` run as ``op`` from ``c_in`` to ``width`` channels alone
        (the slices it reads): the unit ``num_parameters`` and the cost tables add up."""
        count = 0
        for name, p in self.slots[i][op].named_parameters():
            if name.startswith("bn_"):
                count += width
            elif name == "norm_blend":
                count += p.numel()
            elif name == "depthwise":
                count += c_in * p.shape[2] * p.shape[3]
            elif name == "projection" and c_in == width:
                pass
            else:
                count += width * c_in * p.shape[2] * p.shape[3]
        return count

    def head_parameters(self, c_in: int) -> int:
        return self.ways * c_in + self.ways

    def num_parameters(self, arch: Architecture) -> int:
        """Parameters of the stand-alone subnet (the slices ``arch`` reads)."""
        count, c_in = 0, self.in_channels
        for i, (op, width) in enumerate(zip(arch.ops, arch.widths)):
            count += self.layer_parameters(i, op, c_in, width)
            c_in = width
        return count + self.head_parameters(c_in)

    def largest_architecture(self) -> Architecture:
        """The largest single-op subnet of the space: every layer the widest of one op (the one
        with most parameters), at the greatest depth. In the default space 5 x conv5x5@64, the
        largest subnet of all, and the "take the largest" baseline."""
        depth, width = self.space.max_depth, self.space.max_width
        return max((Architecture((op,) * depth, (width,) * depth) for op in self.space.ops), key=self.num_parameters)

    def largest_num_parameters(self) -> int:
        """Parameters of ``largest_architecture``: the unit of ``search.size_prior``."""
        return self.num_parameters(self.largest_architecture())

    def flops(self, arch: Architecture, image_size: int) -> int:
        """Multiply-accumulates of one forward pass of one image through the subnet."""
        total, c_in, size = 0, self.in_channels, image_size
        for i, (op, width) in enumerate(zip(arch.ops, arch.widths)):
            total += self.slots[i][op].flops(c_in, width, size, size)
            c_in, size = width, pooled_size(size)
        return total + c_in * self.ways
