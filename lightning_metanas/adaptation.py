"""Adapting a meta-trained SuperNet to one new task: an architecture (given, or found by a
short search on the task), its weights fine-tuned from the meta-weights, and the result as a
saved model that classifies one image at a time. Plain PyTorch, no Trainer.

The task is a labelled image set with any number ``C`` of classes (``adapt.py`` reads it from
an image folder), split into train and held-out images; everything the search and the
fine-tuning see comes from the train split, the held-out images are touched once, at the end.

**Network for the task.** A copy of the SuperNet with the meta-weights (``init="meta"``; or
a freshly initialised one, ``init="random"``, for a no-meta-learning reference). When
``C != ways`` its head is replaced by a zero head of ``C`` rows (the "zero head" of Ye & Chao,
2022: every class starts from the same logit, so the label order does not matter);
``head="zero"`` zeroes it also when ``C == ways``.

**Architecture.** Given (``arch``: e.g. the meta-search's ``best_arch.json``), or searched with
the project's one search loop and scorer (``EvolutionarySearch.run``, ``scoring.Scorer`` with
the meta-search's size prior and cost budget) for ``scorings`` real scorings, each adapting a
candidate from the meta-weights on ``tasks_per_score`` partitions of the train split
(``score_shots`` support and ``score_queries`` query images per class). Warm start: the
initial population is the checkpoint's meta-population and the meta-trained predictor (never
refitted: a few dozen scorings cannot establish its rank quality) screens offspring; from
scratch: a random population and no predictor, same scorings and weights. Equal scores (easy
tasks score many candidates 1.0) go to the cheaper network.

**Fine-tuning and inference.** The architecture's weights are fine-tuned from the meta-weights
on the whole train split (``finetune.py``); then each layer's BatchNorm statistics are recorded
over the train images with the fine-tuned weights and fixed: the saved network
(``adapted_model.AdaptedModel``) classifies every image alone. The held-out accuracy is reported
both ways: ``inductive`` (each image alone, as the saved model runs) and ``transductive`` (the
held-out images normalised as one batch, the meta-test's protocol).

**Images per class.** A search needs 3 per class (2 to train on and to score candidates with,
1 held out); a given architecture needs 2 (1 to train on, 1 held out).

Why one module of ~380 lines: the task's settings, network, scoring partitions and search
driver are the steps of one orchestration (``adapt``); fine-tuning is ``finetune.py``'s, the
saved model ``adapted_model.py``'s, the search ``evolution.py``'s.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Optional

import torch
from torch import nn

from lightning_metanas import seeding
from lightning_metanas.adapted_model import AdaptedModel, Preprocessing
from lightning_metanas.costs import CostModel
from lightning_metanas.data.images import LabelledImages
from lightning_metanas.errors import SettingsError, require_int, require_positive
from lightning_metanas.evolution import EvolutionarySearch
from lightning_metanas.finetune import TaskLoss, finetune
from lightning_metanas.functional import record_statistics
from lightning_metanas.maml import TaskAdapter
from lightning_metanas.meta_config import MetaConfig
from lightning_metanas.predictor import PerformancePredictor
from lightning_metanas.scoring import Scorer, Tasks
from lightning_metanas.search_config import SearchConfig
from lightning_metanas.search_space import Architecture, SearchSpace
from lightning_metanas.standalone import StandaloneNet
from lightning_metanas.supernet import SuperNet
from lightning_metanas.suspects import (MarginTrace, SuspectConfig, flagged, layered_prototype_scores, loss_scores,
                                         margin_scores)

MIN_IMAGES_SEARCH = 3  # per class, when an architecture is searched on the task
MIN_IMAGES_GIVEN = 2  # per class, when the architecture is given


@dataclass
class TaskSearchConfig:
    """The search on the task (adapt.py's ``--search.*``).

    Args:
        on_task: search an architecture on the task's own images instead of adapting the
            checkpoint's (after a meta-search: its best, chosen across many tasks).
        scorings: real scorings (candidates adapted and scored on the task).
        warm_start: start from the meta-population, with the meta-predictor screening
            offspring; false: random initial population, no predictor, same scorings and weights.
        population_size: population of the task search (default: the checkpoint's search
            setting, capped by ``scorings``).
        offspring: architectures scored per generation after the first (default: the
            checkpoint's search setting).
        tasks_per_score: partitions of the train split into support/query a candidate is
            scored on (the meta-search's ``tasks_per_score``, on the task).
        score_shots: support images per class in each partition (at most all but one of a
            class's training images).
        score_queries: held-out query images per class in each partition (at most the rest).
    """

    on_task: bool = False
    scorings: int = 24
    warm_start: bool = True
    population_size: Optional[int] = None
    offspring: Optional[int] = None
    tasks_per_score: int = 4
    score_shots: int = 5
    score_queries: int = 5

    def __post_init__(self) -> None:
        minimums = {"scorings": 2, "population_size": 2, "offspring": 1, "tasks_per_score": 1, "score_shots": 1,
                    "score_queries": 1}
        for name, minimum in minimums.items():
            if getattr(self, name) is not None or name not in ("population_size", "offspring"):
                require_int(f"--search.{name}", getattr(self, name), minimum)
        for name in ("on_task", "warm_start"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"--search.{name} must be true or false, got {getattr(self, name)!r}")


@dataclass
class FinetuneConfig:
    """The final fine-tuning (adapt.py's ``--finetune.*``).

    The default is the inner loop's kind of step: plain SGD at the checkpoint's ``inner_lr`` on
    every train image at once, for 20 steps (``resolved`` fills the step size in). Chosen on
    Omniglot's validation classes (``bench/robust_adapt.py --split val``, Conv-4 and a 5-layer
    net, RESULTS.md "On site"): the checkpoint's own 3 meta-test steps under-fit (Conv-4 5-shot
    89.5% one image at a time vs 93.6% with 20), 20 steps were at least as good as 10 in every
    cell but two (-0.1), and the former default, 100 Adam steps at 0.01 on mini-batches of 32,
    walked away from the meta-weights (Conv-4 1-shot 65.8% vs 77.5% with 3 SGD steps).

    Args:
        steps: optimiser steps on the train split.
        lr: learning rate (default with ``sgd``: the checkpoint's ``inner_lr``; ``adam`` needs one).
        optimizer: ``sgd`` or ``adam``.
        batch_size: mini-batch size, capped by the train split (default: every train image).
        init: ``meta`` (from the meta-weights) or ``random`` (from a freshly initialised,
            seeded SuperNet: a reference without meta-learning).
        head: ``auto`` (keep the meta-learned head when the task has ``ways`` classes, else a
            zero head of the task's class count) or ``zero`` (always a zero head).
        balanced: class-balanced loss (``finetune.TaskLoss``), on by default: on a balanced task
            it is the plain loss exactly, and on validation classes it helped in every imbalanced
            or noisy setting measured (RESULTS.md, "On site").
        loss: ``ce``, ``smooth`` (label smoothing) or ``sce`` (symmetric cross-entropy).
        smoothing: label smoothing of ``loss=smooth``.
    """

    steps: int = 20
    lr: Optional[float] = None
    optimizer: Literal["sgd", "adam"] = "sgd"
    batch_size: Optional[int] = None
    init: Literal["meta", "random"] = "meta"
    head: Literal["auto", "zero"] = "auto"
    balanced: bool = True
    loss: Literal["ce", "smooth", "sce"] = "ce"
    smoothing: float = 0.1

    def __post_init__(self) -> None:
        require_int("--finetune.steps", self.steps, 0)
        if self.batch_size is not None:
            require_int("--finetune.batch_size", self.batch_size, 1)
        if self.lr is not None:
            require_positive("--finetune.lr", self.lr)
        for name, allowed in (("init", ("meta", "random")), ("head", ("auto", "zero")),
                              ("optimizer", ("sgd", "adam"))):
            if getattr(self, name) not in allowed:
                raise SettingsError(f"--finetune.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.optimizer == "adam" and self.lr is None:
            raise SettingsError("--finetune.optimizer adam needs --finetune.lr (e.g. 0.001); the default "
                                "learning rate is the checkpoint's inner SGD step size")
        if not isinstance(self.balanced, bool):
            raise SettingsError(f"--finetune.balanced must be true or false, got {self.balanced!r}")
        self.task_loss()  # checks loss and smoothing

    def resolved(self, meta: MetaConfig) -> "FinetuneConfig":
        """These settings with the step size filled from the checkpoint's inner loop (``meta``):
        what actually runs, and what ``--out`` records."""
        return replace(self, lr=meta.inner_lr if self.lr is None else self.lr)

    def task_loss(self) -> TaskLoss:
        return TaskLoss(self.loss, self.balanced, self.smoothing)


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
    model: AdaptedModel  # the network to save and deploy
    val_acc: float  # held-out accuracy, each image alone (inductive): what the saved model does
    val_acc_transductive: float  # held-out images normalised as one batch (the meta-test's protocol)
    searched: bool  # False: the architecture was given
    search: Optional[SearchOutcome]
    finetune_seconds: float
    head: str  # "meta" (the meta-learned head), "zero", or "random" (init="random")
    # per suspect score (suspects.SCORES), one value per train image, higher = more suspect
    suspect_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    suspects: list[int] = field(default_factory=list)  # train indices above the threshold, most suspect first
    dropped: bool = False  # the model was re-adapted without the suspects
    predictions: Optional[torch.Tensor] = None  # held-out predicted labels, each image alone
    predictions_transductive: Optional[torch.Tensor] = None  # held-out images as one batch
    finetune: Optional[FinetuneConfig] = None  # the fine-tuning that ran (defaults filled from the checkpoint)

    @property
    def arch(self) -> Architecture:
        return self.model.arch


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
            net = SuperNet(supernet.space, supernet.ways, supernet.in_channels, task_norm=supernet.task_norm,
                           last_norm=supernet.last_norm)
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
    base: SearchConfig, scorings: int, population_size: Optional[int] = None,
    offspring: Optional[int] = None,
) -> SearchConfig:
    """The meta-search's settings for a one-task search: population capped by the number of
    scorings, no re-scoring of survivors (the weights are fixed, so a score is final)."""
    population = max(2, min(population_size or base.population_size, scorings))
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
    scorings: int,
    seed: int = 0,
    meta_state: Optional[dict] = None,
    fits: Optional[Callable[[Architecture], bool]] = None,
) -> SearchOutcome:
    """At most ``scorings`` real scorings of ``EvolutionarySearch.run`` on the task (``scorer``):
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
    search.run(scorer, max_scorings=scorings)
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


# -- the whole adaptation ------------------------------------------------------------------
def task_scorer(adapter: TaskAdapter, supernet: SuperNet, tasks: Tasks, steps: int, size_prior: float) -> Scorer:
    """The meta-search's score on the task's partitions: the same scorer, steps and size prior,
    with parameters counted on the meta-SuperNet (the prior's unit was measured with its head)."""
    return Scorer(Scorer.on_tasks(adapter, tasks, steps).compute, supernet.num_parameters,
                  supernet.largest_num_parameters(), size_prior)


def check_images_per_class(data: LabelledImages, searched: bool) -> None:
    """Every class has the images this adaptation needs, else one line naming the class and
    the real minimum."""
    need = MIN_IMAGES_SEARCH if searched else MIN_IMAGES_GIVEN
    counts = torch.bincount(data.labels, minlength=data.num_classes).tolist()
    for name, count in zip(data.class_names, counts):
        if count < need:
            why = ("2 to fine-tune and score candidates on, 1 held out; without --search.on_task "
                   "2 suffice") if searched else "1 to fine-tune on, 1 held out"
            raise SettingsError(f"class {name!r} has {count} image(s); adapting needs at least {need} per class ({why})")


@torch.no_grad()
def held_out_predictions(arch: Architecture, params: list[torch.Tensor], model: AdaptedModel, adapter: TaskAdapter,
                         images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inductive, transductive) predicted labels of held-out ``images``: the saved model, each
    image alone; and the adapted subnet with the images normalised as one batch."""
    forward = adapter.subnet(arch)[0]
    transductive = forward(params, adapter.in_memory_layout(images)).argmax(-1)
    model.net.to(images.device)
    return model.logits(images).argmax(-1), transductive


def held_out_accuracies(net: SuperNet, arch: Architecture, params: list[torch.Tensor], model: AdaptedModel,
                        adapter: TaskAdapter, val: LabelledImages) -> tuple[float, float]:
    """(inductive, transductive) accuracy on the held-out images (``held_out_predictions``)."""
    inductive, transductive = held_out_predictions(arch, params, model, adapter, val.images)
    return float((inductive == val.labels).float().mean()), float((transductive == val.labels).float().mean())


@torch.no_grad()
def meta_features(net: SuperNet, adapter: TaskAdapter, arch: Architecture, images: torch.Tensor,
                  layers: int) -> list[torch.Tensor]:
    """The meta-weights' features of ``images`` (normalised as one batch) at the last ``layers``
    layers, before any fine-tuning: what the ``prototype`` suspect score compares."""
    return net.layer_features(adapter.in_memory_layout(images), arch)[-layers:]


def fit(adapter: TaskAdapter, net: SuperNet, arch: Architecture, train: LabelledImages, tuning: FinetuneConfig,
        preprocessing: Preprocessing, seed: int, trace: Optional[MarginTrace] = None
        ) -> tuple[list[torch.Tensor], AdaptedModel]:
    """Fine-tune ``arch`` from ``net``'s weights on ``train``, fix its BatchNorm statistics to the
    train images' and wrap it as the model to save: (fine-tuned parameters, model)."""
    batch_size = tuning.batch_size or len(train.labels)
    params = finetune(adapter, arch, train.images, train.labels, tuning.steps, tuning.lr, tuning.optimizer,
                      batch_size, seed, tuning.task_loss(), train.num_classes, trace)
    names = adapter.used(arch)[0]
    stats = record_statistics(adapter.threads.module(), arch, names, params, adapter.in_memory_layout(train.images))
    standalone = StandaloneNet.from_supernet(net, arch, train.images.shape[-1], params, stats)
    return params, AdaptedModel(standalone, list(train.class_names), preprocessing, {})


@torch.no_grad()
def suspect_scores(net: SuperNet, adapter: TaskAdapter, arch: Architecture, train: LabelledImages,
                   layers: int) -> dict[str, torch.Tensor]:
    """The suspect scores of the train images that need no fine-tuning (``prototype``, over the
    last ``layers`` layers: ``SuspectConfig.layers``)."""
    features = [f.cpu() for f in meta_features(net, adapter, arch, train.images, layers)]
    return {"prototype": layered_prototype_scores(features, train.labels.cpu(), train.num_classes)}


@torch.no_grad()
def fitted_scores(model: AdaptedModel, train: LabelledImages, trace: MarginTrace, kept: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    """The suspect scores from a fine-tuned ``model`` (``aum``, ``margin``, ``loss``) of the train
    images, on the CPU; ``trace`` followed the fine-tuning on the images ``kept`` (indices), the
    others' ``aum`` is NaN."""
    model.net.to(train.images.device)
    logits, labels = model.logits(train.images).cpu(), train.labels.cpu()
    aum = torch.full((len(labels),), float("nan"))
    aum[kept] = trace.scores()
    return {"aum": aum, "margin": margin_scores(logits, labels), "loss": loss_scores(logits, labels)}


def without(data: LabelledImages, drop: list[int]) -> tuple[LabelledImages, torch.Tensor]:
    """``data`` without the images ``drop``, and the indices of those kept."""
    keep = torch.ones(len(data.labels), dtype=torch.bool)
    keep[drop] = False
    index = torch.nonzero(keep).flatten()
    on = index.to(data.labels.device)
    return LabelledImages(data.images[on], data.labels[on], data.class_names), index


def adapt(
    supernet: SuperNet, meta: MetaConfig, train: LabelledImages, val: LabelledImages, preprocessing: Preprocessing,
    search: TaskSearchConfig = TaskSearchConfig(), tuning: FinetuneConfig = FinetuneConfig(),
    search_state: Optional[dict] = None, arch: Optional[Architecture] = None, seed: int = 0,
    steps: Optional[int] = None, suspects: SuspectConfig = SuspectConfig(),
) -> AdaptResult:
    """Adapt to the task ``(train, val)`` (see the module docstring): ``arch``, or the best of a
    search; ``search_state`` is the checkpoint's ``EvolutionarySearch.state_dict()`` (the
    search's settings, and its population and predictor for a warm start); ``steps``: the
    scoring's adaptation steps (default: the checkpoint's ``eval_inner_steps``). The train
    images whose ``suspects`` score exceeds its threshold are listed; ``suspects.drop``
    re-adapts from the meta-weights without them (``"auto"``, the default as in ``adapt.py``:
    when they are at least ``suspects.auto_share`` of the train images). One setting, so that
    the library and the command line drop the same images."""
    searched = arch is None
    tuning = tuning.resolved(meta)
    if searched and search.warm_start and not search_state:
        raise SettingsError(
            "the checkpoint holds no search state (it was not written by a run with a search) to "
            "warm-start from; use --search.warm_start false")
    if train.num_classes != val.num_classes:
        raise SettingsError("train and held-out images have different classes")
    base = SearchConfig.from_dict(search_state["config"]) if search_state else SearchConfig()
    net, head = task_network(supernet, train.num_classes, tuning.head, tuning.init, seed)
    device = net.head_weight.device
    train = LabelledImages(train.images.to(device), train.labels.to(device), train.class_names)
    val = LabelledImages(val.images.to(device), val.labels.to(device), val.class_names)
    adapter = TaskAdapter.from_config(net, meta)
    outcome = None
    if searched:
        tasks = scoring_tasks(train, search.tasks_per_score, search.score_shots, search.score_queries, seed)
        scorer = task_scorer(adapter, supernet, tasks, steps or meta.eval_inner_steps, base.size_prior)
        costs = CostModel(supernet.space, supernet.ways, supernet.in_channels, train.images.shape[-1], base.budget,
                          supernet=supernet)
        evolution = adaptation_evolution_config(base, search.scorings, search.population_size, search.offspring)
        outcome = search_architecture(scorer, supernet.space, evolution, search.scorings, seed,
                                      search_state if search.warm_start else None, fits=costs.fits)
        arch = outcome.best
    start = time.perf_counter()
    labels = train.labels.cpu()
    scores = suspect_scores(net, adapter, arch, train, suspects.layers)
    # a score known before fine-tuning: the suspects are dropped before the one fine-tuning
    listed = flagged(scores[suspects.score], labels, suspects.threshold).tolist() if suspects.score in scores else None
    dropped = listed is not None and suspects.drops(len(listed), len(labels))
    kept, index = without(train, listed if dropped else [])
    trace = MarginTrace(kept.labels.cpu())
    params, model = fit(adapter, net, arch, kept, tuning, preprocessing, seed, trace)
    scores |= fitted_scores(model, train, trace, index)
    if listed is None:
        listed = flagged(scores[suspects.score], labels, suspects.threshold).tolist()
        dropped = suspects.drops(len(listed), len(labels))
        if dropped:
            params, model = fit(adapter, net, arch, without(train, listed)[0], tuning, preprocessing, seed)
    finetune_seconds = time.perf_counter() - start
    inductive, transductive = held_out_predictions(arch, params, model, adapter, val.images)
    model.net.cpu()
    return AdaptResult(model, float((inductive == val.labels).float().mean()),
                       float((transductive == val.labels).float().mean()), searched, outcome, finetune_seconds, head,
                       scores, listed, dropped, inductive.cpu(), transductive.cpu(), tuning)
