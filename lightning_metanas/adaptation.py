"""Adapting a meta-trained SuperNet to one new task: a short architecture search on the task,
then fine-tuning the chosen subnet from the meta-weights. Plain PyTorch, no Trainer.

The task is a labelled image set with any number ``C`` of classes (``adapt.py`` reads it from
an image folder), split into train and validation. Validation is touched once, at the very end,
to report the fine-tuned subnet's accuracy; everything the search sees comes from the train
split.

**Network for the task.** A copy of the SuperNet with the meta-weights (``init="meta"``; or
a freshly initialised one, ``init="random"``, for a no-meta-learning reference). The
SuperNet's head has ``ways`` rows; when ``C != ways`` it is replaced by a head of ``C`` rows
initialised to zero (the "zero head" of Ye & Chao, 2022, "How to train your MAML to excel in
few-shot classification": every class starts from the same logit, so the label order does not
matter and fine-tuning starts from an unbiased classifier on top of the meta-learned
features). ``head="zero"`` zeroes it also when ``C == ways``; by default the meta-learned head
is kept then.

**Score of a candidate** (one "real scoring" of the budget): the project's one scorer
(``scoring.Scorer``: ``score_steps`` SGD steps at the meta inner learning rate from the
meta-weights, then accuracy on a query set, times the meta-search's size prior), on
``score_tasks`` partitions of the *train* split into a support part (``score_shots`` images
per class) and a held-out query part (``score_queries`` per class). Every candidate sees the
same partitions, so scores compare. The weights never change during the search, so a score is
final: survivors are not re-scored. The meta-search's cost budget holds here too.

**Search.** ``EvolutionarySearch`` (the class the meta-search runs), with the checkpoint's
evolution settings (population capped by the budget) and exactly ``budget`` real scorings:

* warm start: the initial population is the meta-population of the checkpoint's search
  (best meta-score first; topped up from the meta-archive if a larger population is asked
  for), re-scored on this task; offspring are screened by the meta-trained performance
  predictor when the checkpoint's predictor was trusted (``ready``).
* from scratch: the same budget, seed, settings and meta-weights, but a random initial
  population and no predictor (offspring are drawn at random from the bred pool). So the
  comparison measures what the meta-search's *architecture knowledge* is worth on the new
  task, not the meta-weights (both runs use them).

In both modes the predictor is never refitted on the task's own scores: with a budget of a few
dozen scorings its held-out rank quality cannot be established, and an untrusted predictor
must not steer.

The architecture with the best task score (over everything scored) is then fine-tuned from the
meta-weights on the whole train split (``finetune_steps`` Adam or SGD steps on seeded
mini-batches) and measured on the validation split. BatchNorm uses the statistics of the batch
at hand, as everywhere in this project (the validation split is evaluated as one batch).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_metanas import seeding
from lightning_metanas.data.omniglot import LabelledImages
from lightning_metanas.errors import SettingsError, require_int, require_positive
from lightning_metanas.costs import CostModel
from lightning_metanas.evolution import EvolutionarySearch
from lightning_metanas.maml import Batch, TaskAdapter
from lightning_metanas.meta_config import MetaConfig
from lightning_metanas.predictor import PerformancePredictor
from lightning_metanas.scoring import Scorer, Tasks
from lightning_metanas.search_config import SearchConfig
from lightning_metanas.search_space import Architecture, SearchSpace
from lightning_metanas.supernet import SuperNet


@dataclass
class AdaptConfig:
    """Settings of one adaptation: each field is a flag of ``adapt.py`` (``--budget``, ...).

    Args:
        budget: real scorings of the search (architectures fine-tuned and scored on the task).
        warm_start: start from the meta-population, with the meta-predictor screening
            offspring; False: random initial population, no predictor, same budget and weights.
        population_size: population of the task search (default: the checkpoint's search
            setting, capped by ``budget``).
        offspring: architectures scored per generation after the first (default: the
            checkpoint's search setting).
        init: ``meta`` (fine-tune from the meta-weights) or ``random`` (from a freshly
            initialised SuperNet, seeded: a reference without meta-learning).
        head: ``auto`` (keep the meta-learned head when the task has ``ways`` classes, else
            a zero head of the task's class count) or ``zero`` (always a zero head).
        score_tasks: partitions of the train split into support/query a candidate is scored on.
        score_shots: support images per class in each partition (at most all but one of a
            class's training images).
        score_queries: held-out query images per class in each partition (at most the rest).
        score_steps: SGD steps at the meta inner learning rate before the query accuracy
            (default: the checkpoint's ``eval_inner_steps``).
        finetune_steps: optimiser steps of the final fine-tuning on the train split.
        lr: learning rate of the final fine-tuning.
        optimizer: ``adam`` or ``sgd`` for the final fine-tuning.
        batch_size: mini-batch size of the final fine-tuning (capped by the train split).
        seed: seed of the train/validation split, the search, the scoring partitions, the
            mini-batches and ``init=random``.
    """

    budget: int = 24
    warm_start: bool = True
    population_size: Optional[int] = None
    offspring: Optional[int] = None
    init: Literal["meta", "random"] = "meta"
    head: Literal["auto", "zero"] = "auto"
    score_tasks: int = 4
    score_shots: int = 5
    score_queries: int = 5
    score_steps: Optional[int] = None
    finetune_steps: int = 100
    lr: float = 0.01
    optimizer: Literal["adam", "sgd"] = "adam"
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        minimums = {"budget": 2, "population_size": 2, "offspring": 1, "score_tasks": 1, "score_shots": 1,
                    "score_queries": 1, "batch_size": 1, "score_steps": 1, "finetune_steps": 0}
        optional = ("population_size", "offspring", "score_steps")  # None: the checkpoint's setting
        for name, minimum in minimums.items():
            if name not in optional or getattr(self, name) is not None:
                require_int(f"--{name}", getattr(self, name), minimum)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise SettingsError(f"--seed must be an integer, got {self.seed!r}")
        require_positive("--lr", self.lr)
        for name, allowed in (("init", ("meta", "random")), ("head", ("auto", "zero")),
                              ("optimizer", ("adam", "sgd"))):
            if getattr(self, name) not in allowed:
                raise SettingsError(f"--{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.warm_start, bool):
            raise SettingsError(f"--warm_start must be true or false, got {self.warm_start!r}")


@dataclass
class SearchOutcome:
    best: Architecture
    best_score: float  # its score on the task (support/query partitions of the train split)
    scored: list[dict] = field(default_factory=list)  # every real scoring, in order
    generations: int = 0
    predictor_used: bool = False  # whether the (meta-)predictor screened any offspring
    seconds: float = 0.0


@dataclass
class AdaptResult:
    arch: Architecture
    val_acc: float
    search_score: float
    search_seconds: float
    finetune_seconds: float
    scorings: int
    generations: int
    predictor_used: bool
    head: str  # "meta" (the meta-learned head), "zero", or "random" (init="random")
    scored: list[dict]


# -- the network for the task ------------------------------------------------------------
def task_network(
    supernet: SuperNet, num_classes: int, head: str = "auto", init: str = "meta", seed: int = 0
) -> tuple[SuperNet, str]:
    """A copy of ``supernet`` (or a fresh, seeded one for ``init="random"``) whose head has
    ``num_classes`` rows: the meta-learned head if it already has that many and ``head`` is
    ``auto``, else zeros. Returns the network and which head it got (``meta``, ``zero``, or
    ``random`` for a fresh network's own head)."""
    if num_classes < 2:
        raise SettingsError(f"a task needs at least 2 classes, got {num_classes}")
    if init == "random":
        with seeding.torch_seeded(seed, "init"):
            net = SuperNet(supernet.space, supernet.ways, supernet.in_channels)
        net = net.to(supernet.head_weight.device)
    else:
        net = copy.deepcopy(supernet)
    if head == "auto" and num_classes == supernet.ways:
        return net, "meta" if init == "meta" else "random"
    like = net.head_weight
    net.head_weight = nn.Parameter(torch.zeros(num_classes, like.shape[1], dtype=like.dtype, device=like.device))
    net.head_bias = nn.Parameter(torch.zeros(num_classes, dtype=like.dtype, device=like.device))
    net.ways = num_classes
    return net, "zero"


# -- scoring on the task -----------------------------------------------------------------
def scoring_tasks(
    train: LabelledImages, tasks: int, shots: int, queries: int, seed: int = 0
) -> Tasks:
    """``tasks`` partitions of the train split, stacked like validation tasks: per class
    ``min(shots, n - 1)`` support images and ``min(queries, the rest)`` query images, drawn
    with a generator seeded by ``(seed, partition, class name)``. A class with one training
    image only ever serves as support."""
    members = [
        torch.nonzero(train.labels == c).flatten().tolist() for c in range(train.num_classes)
    ]
    sizes = []
    for name, idx in zip(train.class_names, members):
        if not idx:
            raise SettingsError(f"class {name!r} has no training images")
        s = min(shots, max(1, len(idx) - 1))
        sizes.append((s, min(queries, len(idx) - s)))
    if sum(q for _, q in sizes) == 0:
        raise SettingsError(
            "too few training images to score architectures: every class has 1 training "
            "image, so none is left to hold out; add images or lower --val_fraction"
        )
    out: list[list[torch.Tensor]] = [[], [], [], []]
    for t in range(tasks):
        support, query = [], []
        for name, idx, (s, q) in zip(train.class_names, members, sizes):
            drawn = seeding.rng(seed, "score", t, name).sample(idx, len(idx))
            support += drawn[:s]
            query += drawn[s : s + q]
        for i, index in enumerate((support, support, query, query)):
            source = train.images if i % 2 == 0 else train.labels
            out[i].append(source[torch.tensor(index, dtype=torch.long)])
    return tuple(torch.stack(parts) for parts in out)  # type: ignore[return-value]


class FrozenPredictor(PerformancePredictor):
    """A performance predictor that ``EvolutionarySearch.accept`` does not refit: the
    meta-predictor as trained across tasks (warm start), or an untrained one that never
    becomes ready (from scratch)."""

    def fit(self, archs: list[Architecture], scores: list[float]) -> Optional[float]:
        return self.tau


def adaptation_evolution_config(
    base: SearchConfig, budget: int, population_size: Optional[int] = None,
    offspring: Optional[int] = None,
) -> SearchConfig:
    """The meta-search's settings for a one-task search: population capped by the budget, no
    re-scoring of survivors (the weights are fixed, so a score is final)."""
    population = max(2, min(population_size or base.population_size, budget))
    offspring = offspring or base.offspring
    return replace(
        base,
        population_size=population,
        offspring=offspring,
        pool_size=max(base.pool_size, offspring),
        tournament_size=min(base.tournament_size, population),
        rescore_population=False,
        generations=None,  # the number of real scorings ends it
    )


def meta_population(state: dict, space: SearchSpace, size: int) -> list[Architecture]:
    """The checkpoint search's population, best meta-score first (stable order on ties),
    topped up from its archive (best first) when ``size`` is larger."""
    members = sorted(state.get("population", []), key=lambda m: -m["score"])
    archive = sorted(state.get("archive", []), key=lambda entry: -entry[1])
    archs: list[Architecture] = []
    for spec in [m["arch"] for m in members] + [a for a, _ in archive]:
        arch = space.validate(Architecture.from_dict(spec))
        if arch not in archs:
            archs.append(arch)
        if len(archs) == size:
            break
    return archs


def search_architecture(
    scorer: Scorer,
    space: SearchSpace,
    config: SearchConfig,
    budget: int,
    seed: int = 0,
    meta_state: Optional[dict] = None,
    fits: Optional[Callable[[Architecture], bool]] = None,
) -> SearchOutcome:
    """At most ``budget`` real scorings of ``EvolutionarySearch.run`` on the task (``scorer``):
    warm-started from ``meta_state`` (the checkpoint's ``EvolutionarySearch.state_dict()``:
    population, archive and predictor) when given, from a random population otherwise; only
    architectures that ``fits`` (the cost budget)."""
    start = time.perf_counter()
    search = EvolutionarySearch(space, config, seed=seed, fits=fits)
    search.predictor = FrozenPredictor(space, config.predictor, seed=seed)
    if meta_state is not None:
        initial = [a for a in meta_population(meta_state, space, config.population_size) if search.fits(a)]
        if not initial:
            raise SettingsError("the checkpoint's search has no population within its budget to warm-start from")
        while len(initial) < min(config.population_size, space.size()):  # a tiny meta-archive: fill up at random
            arch = search.sample()
            if arch not in initial:
                initial.append(arch)
        search.predictor.load_state_dict(meta_state["predictor"])
        search.predictor_tau = meta_state.get("predictor_tau")
        search.initial_population = lambda: initial  # the first generation scores these
    search.run(scorer, max_scorings=budget)
    scored = [{"arch": a.to_dict(), "score": s, "accuracy": search.accuracies[a],
               "generation": search.first_scored[a], "predicted": search.predicted.get(a)}
              for a, s in search.archive.items()]
    # equal scores (easy tasks score many candidates 1.0): the cheaper network
    best = max(scored, key=lambda entry: (entry["score"], -scorer.params(Architecture.of(entry["arch"]))))
    return SearchOutcome(
        best=Architecture.from_dict(best["arch"]),
        best_score=best["score"],
        scored=scored,
        generations=search.generation,
        predictor_used=any(record.predictor_used for record in search.history),
        seconds=time.perf_counter() - start,
    )


# -- fine-tuning and measuring -----------------------------------------------------------
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
    """Fine-tune copies of the parameters ``arch`` uses (the network is left as it is): a plain
    optimiser loop (Adam or SGD) over ``minibatches`` of the subnet's cross-entropy. Returns
    the fine-tuned parameters, in the order of ``adapter.subnet(arch)``."""
    forward, leaves = adapter.subnet(arch)
    params = [p.detach().clone().requires_grad_(True) for p in leaves]
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(params, lr=lr)
    with torch.enable_grad():
        for bx, by in minibatches(x, y, steps, batch_size, seed):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward(params, adapter.in_memory_layout(bx)), by).backward()
            opt.step()
    return [p.detach() for p in params]


@torch.no_grad()
def accuracy(
    adapter: TaskAdapter, arch: Architecture, params: list[torch.Tensor], x: torch.Tensor,
    y: torch.Tensor, chunk: int = 1024,
) -> float:
    """Share of ``x`` classified as ``y`` by ``arch`` with ``params`` (BatchNorm normalises
    with the statistics of each chunk of up to ``chunk`` images: one batch for small sets)."""
    forward = adapter.subnet(arch)[0]
    correct = 0
    for start in range(0, len(y), chunk):
        logits = forward(params, adapter.in_memory_layout(x[start : start + chunk]))
        correct += int((logits.argmax(-1) == y[start : start + chunk]).sum())
    return correct / len(y)


def adapt(
    supernet: SuperNet,
    meta: MetaConfig,
    train: LabelledImages,
    val: LabelledImages,
    config: AdaptConfig,
    search_state: Optional[dict] = None,
) -> AdaptResult:
    """Search an architecture for the task ``(train, val)`` and fine-tune it (see the module
    docstring). ``search_state`` is the checkpoint's ``EvolutionarySearch.state_dict()``:
    needed for a warm start, and the source of the evolution settings in both modes."""
    if config.warm_start and not search_state:
        raise SettingsError(
            "the checkpoint holds no search state (it was not written by a run with the "
            "EvolutionCallback) to warm-start from; use --warm_start false"
        )
    if train.num_classes != val.num_classes:
        raise SettingsError("train and validation splits have different classes")
    base = SearchConfig.from_dict(search_state["config"]) if search_state else SearchConfig()
    evolution = adaptation_evolution_config(base, config.budget, config.population_size, config.offspring)
    net, head = task_network(supernet, train.num_classes, config.head, config.init, config.seed)
    device = net.head_weight.device
    train = LabelledImages(train.images.to(device), train.labels.to(device), train.class_names)
    val = LabelledImages(val.images.to(device), val.labels.to(device), val.class_names)
    adapter = TaskAdapter.from_config(net, meta)
    tasks = scoring_tasks(train, config.score_tasks, config.score_shots, config.score_queries, config.seed)
    # the meta-search's score (its size prior; parameters counted on the meta-SuperNet, whose
    # head the prior's unit was measured with) and its cost budget
    scorer = Scorer.on_tasks(adapter, tasks, config.score_steps or meta.eval_inner_steps, base.size_prior)
    scorer.params, scorer.largest = supernet.num_parameters, supernet.largest_num_parameters()
    costs = CostModel(supernet.space, supernet.ways, supernet.in_channels, train.images.shape[-1], base.budget,
                      supernet=supernet)
    outcome = search_architecture(
        scorer, supernet.space, evolution, config.budget, config.seed,
        search_state if config.warm_start else None, fits=costs.fits,
    )
    start = time.perf_counter()
    params = finetune(
        adapter, outcome.best, train.images, train.labels, config.finetune_steps, config.lr,
        config.optimizer, config.batch_size, config.seed,
    )
    finetune_seconds = time.perf_counter() - start
    return AdaptResult(
        arch=outcome.best,
        val_acc=accuracy(adapter, outcome.best, params, val.images, val.labels),
        search_score=outcome.best_score,
        search_seconds=outcome.seconds,
        finetune_seconds=finetune_seconds,
        scorings=len(outcome.scored),
        generations=outcome.generations,
        predictor_used=outcome.predictor_used,
        head=head,
        scored=outcome.scored,
    )
