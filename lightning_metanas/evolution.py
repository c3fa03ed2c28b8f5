"""Evolutionary search over architecture encodings: plain Python, no Trainer.

One generation is ``propose()`` (breed a pool of offspring by crossover and mutation, let the
predictor, once trusted, pick the most promising), scoring by the caller (few-shot adaptation,
possibly sharded over DDP ranks), and ``accept()`` (archive every score, select survivors,
retrain the predictor when due). Keeping the scoring outside makes the algorithm testable with
any score function, and lets the callback decide where and when scores are computed.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, Optional

from lightning_metanas.errors import SettingsError, require_int
from lightning_metanas.predictor import PerformancePredictor, PredictorConfig
from lightning_metanas.search_space import Architecture, SearchSpace


class EvolutionSettingsError(SettingsError):
    """A search setting that cannot work, named as its flag (``search.<field>``) with the
    allowed values."""


@dataclass
class EvolutionConfig:
    """Settings of the evolutionary search: each field is the flag ``--search.<field>`` of
    train.py (and a key of its config's ``search:`` section).

    Args:
        population_size: architectures alive at once (the meta-train step samples them).
        offspring: new architectures scored for real per generation.
        pool_size: offspring bred per generation before the predictor screens them down to
            ``offspring`` (equal to ``offspring``: no screening).
        selection: ``aging`` (regularised evolution: the oldest die) or ``tournament``
            ((mu + lambda): the lowest-scoring die).
        tournament_size: candidates compared when picking each parent.
        crossover_prob: chance a child comes from crossover of two parents (then mutated).
        mutation_prob: per-gene mutation probability.
        tasks_per_score: validation tasks each candidate adapts to; the same tasks for every
            candidate of a run, so scores compare.
        score_queries: query images per class in each scoring task (``None``: as many as the
            data's ``queries``). Scoring costs forward passes, not meta-training budget, and
            more queries lower the noise of a score (``bench/ranking.py`` measures it).
        size_prior: strength of the prior for larger subnets: an architecture's score is its
            mean query accuracy times (its parameters / the space's largest subnet's) to this
            power (``scoring.size_weighted``; 0: accuracy alone). Every score the search keeps,
            logs and plots is this one.
        warmup_epochs: epochs the SuperNet is meta-trained under ``model.sampling`` before
            the first generation, so that the first scores rank architectures on trained
            weights rather than on the initialisation.
        rescore_population: re-score the survivors each generation on the same tasks, so that
            selection compares everyone under the current shared weights.
        uniform_share: share of meta-train tasks that get a uniformly sampled architecture
            rather than a population member, so the SuperNet keeps covering the space.
        generations_per_epoch: generations run at the end of each training epoch.
        generations: stop evolving after this many generations; the remaining epochs
            meta-train the best architecture alone (the final training of a searched network,
            inside the same run and meta-training budget). ``None``: evolve until the end.
        strategy: ``evolution`` (crossover and mutation of the population, screened by the
            predictor) or ``random`` (fresh uniform samples, no predictor: the random-search
            baseline with the same scoring, selection and budget).
        predictor: the performance predictor's settings.
        seed: seed of the search's own random choices (the same on every DDP rank).
    """

    population_size: int = 10
    offspring: int = 6
    pool_size: int = 24
    selection: Literal["aging", "tournament"] = "aging"
    tournament_size: int = 3
    crossover_prob: float = 0.5
    mutation_prob: float = 0.2
    tasks_per_score: int = 20
    score_queries: Optional[int] = None
    size_prior: float = 0.0
    warmup_epochs: int = 0
    rescore_population: bool = True
    uniform_share: float = 0.25
    generations_per_epoch: int = 1
    generations: Optional[int] = None
    strategy: Literal["evolution", "random"] = "evolution"
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.predictor, dict):  # from a checkpoint: skip settings since retired
            known = PredictorConfig.__dataclass_fields__
            self.predictor = PredictorConfig(**{k: v for k, v in self.predictor.items() if k in known})

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise EvolutionSettingsError(f"search.{message}")

        minimums = {"population_size": 2, "offspring": 1, "tasks_per_score": 1, "generations_per_epoch": 1,
                    "warmup_epochs": 0}
        for name, minimum in minimums.items():
            require_int(f"search.{name}", getattr(self, name), minimum, EvolutionSettingsError)
        need(
            self.pool_size >= self.offspring,
            f"pool_size ({self.pool_size}) must be >= offspring ({self.offspring})",
        )
        need(
            self.selection in ("aging", "tournament"),
            f"selection must be one of ['aging', 'tournament'], got {self.selection!r}",
        )
        need(
            2 <= self.tournament_size <= self.population_size,
            f"tournament_size must be between 2 and population_size ({self.population_size}), "
            f"got {self.tournament_size}",
        )
        for name in ("crossover_prob", "mutation_prob", "uniform_share"):
            value = getattr(self, name)
            need(0.0 <= value <= 1.0, f"{name} must be in [0, 1], got {value}")
        need(
            self.score_queries is None or self.score_queries >= 1,
            f"score_queries must be >= 1 or null (the data's queries), got {self.score_queries}",
        )
        need(self.size_prior >= 0.0, f"size_prior must be >= 0 (0: no prior), got {self.size_prior}")
        need(
            self.generations is None or self.generations >= 1,
            f"generations must be >= 1 or null (evolve until the end), got {self.generations}",
        )
        need(
            self.strategy in ("evolution", "random"),
            f"strategy must be one of ['evolution', 'random'], got {self.strategy!r}",
        )


@dataclass
class Member:
    arch: Architecture
    score: float
    born: int  # generation
    predicted: Optional[float] = None


@dataclass
class GenerationRecord:
    """What one generation did: ``accept`` returns it, the search keeps it in ``history``, and
    the callbacks log it and save it (``search_history.json``) as it is."""

    generation: int
    best_arch: Architecture
    best_score: float
    mean_score: float
    diversity: float
    real_scorings: int
    predictor_used: bool  # the predictor was trusted when this generation's offspring were proposed
    predictor_tau: Optional[float]  # its rank quality after this generation's refit

    def to_dict(self) -> dict:
        """Plain JSON (and checkpoint) form; ``from_dict`` reads it back."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"best_arch": self.best_arch.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationRecord":
        # predictor_used: absent from the histories of checkpoints written before it was recorded
        return cls(**{**data, "best_arch": Architecture.from_dict(data["best_arch"]),
                      "predictor_used": data.get("predictor_used", False)})


class EvolutionarySearch:
    """Population, archive and predictor, with the moves of one generation."""

    def __init__(self, space: SearchSpace, config: EvolutionConfig, seed: Optional[int] = None) -> None:
        self.space, self.config = space, config
        seed = config.seed if seed is None else seed
        self.rng = random.Random(seed)
        self.population: list[Member] = []  # oldest first
        self.archive: dict[Architecture, float] = {}  # every architecture scored, latest score
        self.predicted: dict[Architecture, float] = {}
        self.generation = 0
        self.history: list[GenerationRecord] = []
        self.predictor = PerformancePredictor(space, config.predictor, seed=seed)
        self.predictor_tau: Optional[float] = None

    # -- proposals -----------------------------------------------------------------------
    def initial_population(self) -> list[Architecture]:
        """Distinct random architectures to fill the first population."""
        wanted = min(self.config.population_size, self.space.size())
        archs: list[Architecture] = []
        while len(archs) < wanted:
            arch = self.space.sample(self.rng)
            if arch not in archs:
                archs.append(arch)
        return archs

    def _parent(self) -> Architecture:
        contenders = self.rng.sample(
            self.population, min(self.config.tournament_size, len(self.population))
        )
        return max(contenders, key=lambda m: m.score).arch

    def _unseen(self, n: int, draw) -> list[Architecture]:
        """Up to ``n`` distinct draws not in the population nor already scored."""
        taken = {m.arch for m in self.population} | set(self.archive)
        found: list[Architecture] = []
        for _ in range(50 * n):
            if len(found) == n:
                break
            arch = draw()
            if arch not in taken and arch not in found:
                found.append(arch)
        return found

    def _child(self) -> Architecture:
        if self.rng.random() < self.config.crossover_prob:
            child = self.space.crossover(self._parent(), self._parent(), self.rng)
            return self.space.mutate(child, self.rng, self.config.mutation_prob)
        return self.space.mutate(self._parent(), self.rng, self.config.mutation_prob)

    def breed(self, n: int) -> list[Architecture]:
        """Up to ``n`` distinct children by crossover and mutation, none seen before."""
        return self._unseen(n, self._child)

    def fresh(self, n: int) -> list[Architecture]:
        """Up to ``n`` distinct uniform samples, none seen before (the random strategy)."""
        return self._unseen(n, lambda: self.space.sample(self.rng))

    @property
    def finished(self) -> bool:
        """True once the configured number of generations has run."""
        return self.config.generations is not None and self.generation >= self.config.generations

    def propose(self) -> list[Architecture]:
        """The architectures to score this generation: the first population, or offspring
        screened by the predictor once it is trusted (random picks from the pool before);
        under the ``random`` strategy, fresh uniform samples."""
        if not self.population:
            return self.initial_population()
        if self.config.strategy == "random":
            return self.fresh(self.config.offspring)
        pool = self.breed(self.config.pool_size)
        if len(pool) <= self.config.offspring:
            return pool
        if self.predictor.ready:
            predictions = self.predictor.predict(pool)
            self.predicted.update(zip(pool, predictions))
            ranked = sorted(zip(predictions, range(len(pool))), reverse=True)
            return [pool[i] for _, i in ranked[: self.config.offspring]]
        return self.rng.sample(pool, self.config.offspring)

    def to_score(self, proposals: list[Architecture]) -> list[Architecture]:
        """Everything that needs a real score this generation: proposals, plus the survivors
        when they are re-scored under the current weights."""
        survivors = [m.arch for m in self.population] if self.config.rescore_population else []
        return survivors + [a for a in proposals if a not in survivors]

    # -- selection -----------------------------------------------------------------------
    def accept(self, scored: dict[Architecture, float], real_scorings: Optional[int] = None) -> GenerationRecord:
        """Record the scores of one generation, select the survivors, retrain the predictor
        when due; returns the generation's record (also appended to ``history``).
        ``real_scorings``: how many of ``scored`` were scored for real (default: all), since a
        caller may keep a score measured under the same weights by an earlier generation."""
        for arch, score in scored.items():
            self.archive[arch] = float(score)
        for member in self.population:
            if member.arch in scored:
                member.score = float(scored[member.arch])
        alive = {m.arch for m in self.population}
        new = [
            Member(arch, float(score), self.generation, self.predicted.get(arch))
            for arch, score in scored.items()
            if arch not in alive
        ]
        self.population.extend(new)
        excess = len(self.population) - self.config.population_size
        if excess > 0:
            if self.config.selection == "aging":
                self.population = self.population[excess:]
            else:
                ranked = sorted(self.population, key=lambda m: m.score, reverse=True)
                keep = {id(m) for m in ranked[: self.config.population_size]}
                self.population = [m for m in self.population if id(m) in keep]
        predictor_used = self.predictor.ready  # never under ``random``: it is never fitted
        if self.config.strategy == "evolution" and self.generation % self.config.predictor.retrain_every == 0:
            self.predictor_tau = self.predictor.fit(list(self.archive), list(self.archive.values()))
        best = self.best()
        scores = [m.score for m in self.population]
        record = GenerationRecord(
            generation=self.generation,
            best_arch=best.arch,
            best_score=best.score,
            mean_score=sum(scores) / len(scores),
            diversity=self.diversity(),
            real_scorings=len(scored) if real_scorings is None else real_scorings,
            predictor_used=predictor_used,
            predictor_tau=self.predictor_tau,
        )
        self.history.append(record)
        self.generation += 1
        return record

    def best(self) -> Member:
        """The search's answer. With ``rescore_population`` the survivors' scores are the
        current ones, so the population's best; without it no score is refreshed, and, as in
        regularised evolution, the best architecture ever scored (aging may have retired it)."""
        alive = max(self.population, key=lambda m: m.score)
        if self.config.rescore_population or not self.archive:
            return alive
        arch = max(self.archive, key=self.archive.get)
        if self.archive[arch] <= alive.score:
            return alive
        return Member(arch, self.archive[arch], born=-1, predicted=self.predicted.get(arch))

    def diversity(self) -> float:
        """Mean pairwise distance of the population's encodings, normalised to [0, 1]: 0 when
        every member is the same architecture."""
        codes = [self.space.encode(m.arch) for m in self.population]
        if len(codes) < 2:
            return 0.0
        total, pairs = 0.0, 0
        for i in range(len(codes)):
            for j in range(i + 1, len(codes)):
                total += sum(abs(a - b) for a, b in zip(codes[i], codes[j]))
                pairs += 1
        return total / pairs / (2 * self.space.max_depth + 2)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain lists, dicts, numbers and strings (and the predictor's tensors): loadable with
        ``torch.load(weights_only=True)``."""
        version, internal, gauss = self.rng.getstate()
        return {
            "config": asdict(self.config),
            "rng": [version, list(internal), gauss],
            "generation": self.generation,
            "population": [
                {"arch": m.arch.to_dict(), "score": m.score, "born": m.born, "predicted": m.predicted}
                for m in self.population
            ],
            "archive": [[a.to_dict(), s] for a, s in self.archive.items()],
            "predicted": [[a.to_dict(), s] for a, s in self.predicted.items()],
            "history": [record.to_dict() for record in self.history],
            "predictor": self.predictor.state_dict(),
            "predictor_tau": self.predictor_tau,
        }

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.generation = state["generation"]
        self.population = [
            Member(Architecture.from_dict(m["arch"]), m["score"], m["born"], m["predicted"])
            for m in state["population"]
        ]
        self.archive = {Architecture.from_dict(a): s for a, s in state["archive"]}
        self.predicted = {Architecture.from_dict(a): s for a, s in state["predicted"]}
        self.history = [GenerationRecord.from_dict(record) for record in state["history"]]
        self.predictor.load_state_dict(state["predictor"])
        self.predictor_tau = state["predictor_tau"]
