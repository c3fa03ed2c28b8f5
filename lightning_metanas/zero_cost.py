"""Zero-cost rules: what a user can pick with no training at all, the baseline a search must beat.

A rule ranks architectures by a number computed without training: their size (parameters,
FLOPs), their depth then size, or a training-free proxy computed on a few tasks at
initialisation (``naswot``, Mellor et al. 2021: how differently a network's ReLUs fire across
a task's images). Size rules rank the *whole* space in seconds (``costs.SpaceCosts``), so
"the rule's best architecture within a budget" is exact, not a sample: ``best_in_budget``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from lightning_metanas.costs import CostModel, SpaceCosts
from lightning_metanas.search_space import Architecture

# name -> key per architecture of a SpaceCosts table (higher ranks first); ties: enumeration order
SIZE_RULES: dict[str, Callable[[SpaceCosts], np.ndarray]] = {
    "params": lambda t: t.params.astype(np.float64),
    "flops": lambda t: t.flops.astype(np.float64),
    "depth_params": lambda t: t.depth * 1e12 + t.params,
    "depth_flops": lambda t: t.depth * 1e12 + t.flops,
}


def size_key(rule: str, params: float, flops: float, depth: int) -> float:
    """The key of ``SIZE_RULES[rule]`` for one architecture's costs."""
    return {"params": params, "flops": flops, "depth_params": depth * 1e12 + params,
            "depth_flops": depth * 1e12 + flops}[rule]


def best_in_budget(rule: str, table: SpaceCosts, costs: CostModel,
                   latency_estimate: Optional[np.ndarray] = None, limit: int = 500) -> Optional[Architecture]:
    """The architecture the size ``rule`` ranks first among all of the space's architectures
    within ``costs.budget``. Parameter and FLOP bounds are applied exactly to the whole table;
    a latency bound is checked by measurement (``costs.fits``), in rule order, on at most
    ``limit`` candidates that ``latency_estimate`` (per architecture of ``table``, e.g. a
    ``latency.LayerLatencyModel`` enumerated with ``table.additive``, which reads ~30% low)
    does not already put over it."""
    budget = costs.budget
    mask = np.ones(len(table), dtype=bool)
    if budget.max_params is not None:
        mask &= table.params <= budget.max_params
    if budget.max_flops is not None:
        mask &= table.flops <= budget.max_flops
    bound = costs.latency_bound()
    if bound is not None and latency_estimate is not None:
        mask &= latency_estimate * 1.1 <= bound
    return table.first(costs.fits, key=SIZE_RULES[rule](table), mask=mask, limit=limit)


@torch.no_grad()
def naswot(arch: Architecture, tasks: Sequence[torch.Tensor], ways: int, seed: int = 0) -> float:
    """NASWOT (Mellor et al. 2021) of ``arch`` at initialisation: per batch of images in
    ``tasks`` (e.g. each few-shot task's support and query images), ``log|K|`` of the kernel
    ``K[i, j] = N_A - d_H(c_i, c_j)`` of the images' binary ReLU codes ``c`` (``N_A`` units,
    ``d_H`` the Hamming distance), averaged over the batches. A network whose units already
    tell the images apart scores high. The network is a ``StandaloneNet`` initialised from
    ``seed``, BatchNorm on each batch's statistics (as the SuperNet's ops normalise)."""
    from lightning_metanas import seeding
    from lightning_metanas.standalone import StandaloneNet

    images = tasks[0]
    with seeding.torch_seeded(seed, "naswot", str(arch)):
        net = StandaloneNet(arch, images.shape[1], images.shape[-1], ways)
        for layer in net.layers:  # the SuperNet's initialisation (xavier), not PyTorch's default
            for module in layer.transform.modules():
                if isinstance(module, torch.nn.Conv2d):
                    torch.nn.init.xavier_uniform_(module.weight)
    net.train()
    scores = []
    for batch in tasks:
        codes, x = [], batch
        for layer in net.layers:
            pre = layer.norm(layer.transform(x))
            codes.append((pre > 0).flatten(1).double())
            x = layer.pool(torch.relu(pre))
        c = torch.cat(codes, dim=1)
        kernel = c @ c.t() + (1 - c) @ (1 - c).t()
        sign, logdet = torch.linalg.slogdet(kernel)
        scores.append(float(logdet) if float(sign) > 0 else float("-inf"))
    return sum(scores) / len(scores)
