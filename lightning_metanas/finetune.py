"""Fine-tuning a subnet's weights on a task's images: a plain optimiser loop on seeded
mini-batches, for adapt.py's final network (the inner loop of meta-learning is ``maml.py``'s).

On-site folders are imbalanced (a few images of a defect among many good ones) and some of
their labels are wrong, so the loss is a choice (``TaskLoss``): class-balanced weights make
every class weigh the same whatever its count (on a balanced task they are all 1 and the loss
is the plain one, exactly), and label smoothing or symmetric cross-entropy are the known robust
losses the benchmark compares (``bench/robust_adapt.py``). ``finetune`` can also report every
image's margin at every step it is seen, from the logits the step computes anyway: their mean
over the run (the "area under the margin" of Pleiss et al., 2020) is one of the suspect-label
scores of ``suspects.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Optional

import torch
import torch.nn.functional as F

from lightning_metanas import seeding
from lightning_metanas.errors import SettingsError
from lightning_metanas.maml import Batch, TaskAdapter
from lightning_metanas.search_space import Architecture

LOSSES = ("ce", "smooth", "sce")
# (indices into the train images, their logits at this step): a step's observer
StepObserver = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class TaskLoss:
    """The fine-tuning loss.

    Args:
        kind: ``ce`` (cross-entropy), ``smooth`` (cross-entropy against labels smoothed by
            ``smoothing``) or ``sce`` (symmetric cross-entropy, Wang et al. 2019: cross-entropy
            plus the reverse cross-entropy, whose ``log 0`` is clipped to -4 as in the paper).
        balanced: weigh each image by ``N / (C * n_c)`` for its class's count ``n_c``, so each
            class contributes the same to the loss.
        smoothing: the share of the label's mass spread over the other classes (``smooth``).
    """

    kind: Literal["ce", "smooth", "sce"] = "ce"
    balanced: bool = False
    smoothing: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in LOSSES:
            raise SettingsError(f"--finetune.loss must be one of {list(LOSSES)}, got {self.kind!r}")
        if not 0.0 <= self.smoothing < 1.0:
            raise SettingsError(f"--finetune.smoothing must be in [0, 1), got {self.smoothing!r}")

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The loss of a batch; ``weights`` per class (``class_weights``) give each image its
        class's weight, normalised by the batch's total weight (``F.cross_entropy``'s rule)."""
        smoothing = self.smoothing if self.kind == "smooth" else 0.0
        per_image = F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)
        if self.kind == "sce":  # reverse cross-entropy: -sum_k p_k log q_k = 4 (1 - p_y)
            per_image = per_image + 4.0 * (1 - torch.softmax(logits, -1).gather(-1, y[:, None])[:, 0])
        w = torch.ones_like(per_image) if weights is None else weights[y].to(per_image.dtype)
        return (w * per_image).sum() / w.sum()


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``N / (C * n_c)`` per class ``c`` of labels ``y``: 1 for every class of a balanced task;
    a class without images gets 0 (it has nothing to weigh)."""
    counts = torch.bincount(y, minlength=num_classes).double()
    return torch.where(counts > 0, len(y) / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts)).float()


def minibatch_indices(n: int, steps: int, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """``steps`` index batches of ``min(batch_size, n)`` drawn from seeded permutations of
    ``range(n)``, one permutation after the other."""
    generator = seeding.torch_generator(seed, "minibatches")
    size = min(batch_size, n)
    stream = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(stream) < size:
            stream = torch.cat([stream, torch.randperm(n, generator=generator)])
        index, stream = stream[:size], stream[size:]
        yield index


def minibatches(x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
    """``steps`` mini-batches ``(x[index], y[index])`` of ``minibatch_indices``."""
    for index in minibatch_indices(len(y), steps, batch_size, seed):
        yield x[index], y[index]


def finetune(
    adapter: TaskAdapter, arch: Architecture, x: torch.Tensor, y: torch.Tensor, steps: int,
    lr: float, optimizer: str = "adam", batch_size: int = 32, seed: int = 0,
    loss: TaskLoss = TaskLoss(), num_classes: Optional[int] = None, observe: Optional[StepObserver] = None,
) -> list[torch.Tensor]:
    """Fine-tune copies of the parameters ``arch`` uses (the network is left as it is) with
    ``optimizer`` (Adam or SGD) on ``loss`` over ``minibatches``; ``num_classes`` (default: the
    head's rows) sets the balanced weights. ``observe(index, logits)`` sees each step's batch
    before the step. Returns the fine-tuned parameters, in the order of ``adapter.subnet(arch)``."""
    forward, leaves = adapter.subnet(arch)
    params = [p.detach().clone().requires_grad_(True) for p in leaves]
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(params, lr=lr)
    classes = num_classes or adapter.supernet.head_weight.shape[0]
    weights = class_weights(y.cpu(), classes).to(x.device) if loss.balanced else None
    with torch.enable_grad():
        for index in minibatch_indices(len(y), steps, batch_size, seed):
            opt.zero_grad(set_to_none=True)
            index = index.to(x.device)
            logits = forward(params, adapter.in_memory_layout(x[index]))
            if observe is not None:
                observe(index, logits.detach())
            loss(logits, y[index], weights).backward()
            opt.step()
    return [p.detach() for p in params]
