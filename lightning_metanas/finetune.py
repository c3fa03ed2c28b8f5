"""Fine-tuning a subnet's weights on a task's images: a plain optimiser loop on seeded
mini-batches, for adapt.py's final network (the inner loop of meta-learning is ``maml.py``'s)."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from lightning_metanas import seeding
from lightning_metanas.maml import Batch, TaskAdapter
from lightning_metanas.search_space import Architecture


def minibatches(x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
    """``steps`` mini-batches of ``min(batch_size, len(y))`` images drawn from seeded
    permutations of ``(x, y)``, one permutation after the other."""
    generator = seeding.torch_generator(seed, "minibatches")
    size = min(batch_size, len(y))
    stream = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(stream) < size:
            stream = torch.cat([stream, torch.randperm(len(y), generator=generator)])
        index, stream = stream[:size], stream[size:]
        yield x[index], y[index]


def finetune(
    adapter: TaskAdapter, arch: Architecture, x: torch.Tensor, y: torch.Tensor, steps: int,
    lr: float, optimizer: str = "adam", batch_size: int = 32, seed: int = 0,
) -> list[torch.Tensor]:
    """Fine-tune copies of the parameters ``arch`` uses (the network is left as it is) with
    ``optimizer`` (Adam or SGD) on the cross-entropy of ``minibatches``. Returns the fine-tuned
    parameters, in the order of ``adapter.subnet(arch)``."""
    forward, leaves = adapter.subnet(arch)
    params = [p.detach().clone().requires_grad_(True) for p in leaves]
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(params, lr=lr)
    with torch.enable_grad():
        for bx, by in minibatches(x, y, steps, batch_size, seed):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward(params, adapter.in_memory_layout(bx)), by).backward()
            opt.step()
    return [p.detach() for p in params]
