"""Real scoring of architectures: few-shot adaptation on a fixed set of validation tasks.

``Scorer`` is the one scorer of the project: the across-task search (its callback), the search
inside ``adapt.py`` and the benches all score through it, so a score means the same everywhere:
the mean query accuracy after the evaluation's adaptation steps on the same tasks, times the
size prior, remembered per architecture until the weights change.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from lightning_metanas.maml import TaskAdapter, Tasks
from lightning_metanas.search_space import Architecture

__all__ = ["Scorer", "Tasks", "first_tasks", "score_architectures", "size_weighted", "stack_tasks"]


def stack_tasks(tasks: Sequence[Sequence[torch.Tensor]]) -> Tasks:
    """Tasks drawn one by one -> one tuple of tensors with a leading task axis."""
    return tuple(torch.stack([t[i] for t in tasks]) for i in range(4))  # type: ignore[return-value]


def first_tasks(dataset, count: int, queries: Optional[int] = None, setting: str = "search.score_queries") -> Tasks:
    """The first ``count`` tasks of a split's task dataset (``EpisodicTaskDataset``), with
    ``queries`` query images per class (``None``: the data's): the scoring tasks, the same
    for every candidate and every generation, on every rank."""
    if queries is not None:
        dataset = dataset.variant(queries=queries, num_tasks=count, setting=setting)
    return stack_tasks([dataset[i] for i in range(min(count, len(dataset)))])


def score_architectures(
    adapter: TaskAdapter,
    archs: Sequence[Architecture],
    tasks: Tasks,
    steps: int,
    progress: Optional[Callable[[int], None]] = None,
) -> list[float]:
    """Mean query accuracy of each architecture after ``steps`` adaptation steps on every
    task (``TaskAdapter.evaluate_tasks``: vectorised where the adapter is). Deterministic (no
    sampling), so a score computed on any DDP rank is the same."""
    scores = []
    for arch in archs:
        scores.append(float(adapter.evaluate_tasks(arch, tasks, steps).accuracy.mean()))
        if progress is not None:
            progress(1)
    return scores


def size_weighted(score: float, params: int, largest: int, strength: float) -> float:
    """``score * (params / largest) ** strength``: the search's score with a prior for size.

    A SuperNet's score over-rates small subnets and parameter-free operations (pooling, skip)
    against stand-alone training: they adapt well on shared weights trained for everyone, but
    learn less when trained alone. ``strength`` 0 leaves the score as it is; the factor is at
    most 1 (``largest``: the space's largest subnet). How much it helps, measured against the
    stand-alone ground truth, is in RESULTS.md ("Ranking fidelity")."""
    if strength == 0:
        return score
    return score * (params / largest) ** strength


class Scorer:
    """Scores architectures on fixed tasks: ``scorer(archs)`` returns their scores.

    Args:
        compute: raw accuracies of a list of architectures (e.g. ``score_architectures`` on
            fixed tasks, or a DDP-sharded version of it); called only for architectures not
            scored since the last ``reset``.
        params: an architecture's parameter count, for the size prior.
        largest: the space's largest subnet's parameter count (the prior's unit).
        size_prior: the prior's strength (``size_weighted``; 0: the raw accuracy).

    ``accuracies`` holds every raw accuracy measured since the last ``reset`` (call it when the
    weights change) and ``real_scorings`` how many the last call measured.
    """

    def __init__(self, compute: Callable[[list[Architecture]], Sequence[float]],
                 params: Callable[[Architecture], int], largest: int, size_prior: float = 0.0) -> None:
        self.compute, self.params, self.largest, self.size_prior = compute, params, largest, size_prior
        self.accuracies: dict[Architecture, float] = {}
        self.real_scorings = 0

    @classmethod
    def on_tasks(cls, adapter: TaskAdapter, tasks: Tasks, steps: int, size_prior: float = 0.0) -> "Scorer":
        """The plain scorer: ``score_architectures`` of ``adapter``'s SuperNet on ``tasks``."""
        net = adapter.supernet
        return cls(lambda archs: score_architectures(adapter, archs, tasks, steps), net.num_parameters,
                   net.largest_num_parameters(), size_prior)

    def __call__(self, archs: Sequence[Architecture]) -> list[float]:
        fresh = [a for a in dict.fromkeys(archs) if a not in self.accuracies]
        if fresh:
            self.accuracies.update(zip(fresh, (float(v) for v in self.compute(fresh))))
        self.real_scorings = len(fresh)
        return [self.score(a) for a in archs]

    def score(self, arch: Architecture, accuracy: Optional[float] = None) -> float:
        """``arch``'s score from its raw accuracy (default: the one measured)."""
        accuracy = self.accuracies[arch] if accuracy is None else accuracy
        return size_weighted(accuracy, self.params(arch), self.largest, self.size_prior)

    def reset(self) -> None:
        self.accuracies = {}
