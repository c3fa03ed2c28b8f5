"""Evolutionary search over architecture encodings: plain Python, no Trainer.

One generation is ``propose()`` (breed a pool of offspring by crossover and mutation, let the
predictor, once trusted, pick the most promising), scoring by the caller (few-shot adaptation,
possibly sharded over DDP ranks), and ``accept()`` (archive every score, select survivors,
retrain the predictor when due). ``step(score)`` is one generation with a score function and
``run(score)`` the whole search: what ``adapt.py`` and the benches call; the Lightning
callback calls ``propose``/``accept`` itself because it broadcasts decisions between DDP ranks.
Keeping the scoring outside makes the algorithm testable with any score function.

A cost budget is a constraint *inside* the search (``fits``): the initial population, every
mutation, crossover and fresh sample is drawn until it fits, so nothing outside the budget is
ever proposed or scored.

Why one module of ~400 lines: the configuration's checks, the population, the archive and
the records are one algorithm's state, written and restored together (``state_dict``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Literal, Optional, Sequence

from lightning_metanas import seeding
from lightning_metanas.errors import SettingsError, require_int
from lightning_metanas.predictor import PerformancePredictor, PredictorConfig
from lightning_metanas.search_space import Architecture, SearchSpace


_TRIES = 10_000  # draws before a budget is declared unreachable by sampling


class EvolutionSettingsError(SettingsError):
    """A search setting that cannot work, named as its flag (``search.<field>``) with the
    allowed values."""


@dataclass
class EvolutionConfig:
    """The evolutionary algorithm's settings, and nothing it does not read. ``SearchConfig``
    (``search_config.py``) adds how candidates are scored, the cost budget and the schedule:
    its fields are train.py's ``--search.<field>`` flags.

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
        rescore_population: re-score the survivors each generation, so that selection
            compares everyone under the current shared weights (only useful while the weights
            change between generations).
        generations: stop after this many generations (``None``: never; the caller stops).
        strategy: ``evolution`` (crossover and mutation of the population, screened by the
            predictor) or ``random`` (fresh uniform samples, no predictor: the random-search
            baseline with the same scoring, selection and budget).
        predictor: the performance predictor's settings.
        seed: seed of the search's own random choices (the same on every DDP rank); ``None``:
            ``--seed_everything``'s (train.py), 0 when built directly.
    """

    population_size: int = 8
    offspring: int = 4
    pool_size: int = 16
    selection: Literal["aging", "tournament"] = "aging"
    tournament_size: int = 3
    crossover_prob: float = 0.5
    mutation_prob: float = 0.2
    rescore_population: bool = False
    generations: Optional[int] = 8
    strategy: Literal["evolution", "random"] = "evolution"
    predictor: PredictorConfig = field(default_factory=lambda: PredictorConfig(min_archive=16))
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if isinstance(self.predictor, dict):  # from a checkpoint
            self.predictor = PredictorConfig(**self.predictor)
        for name, minimum in {"population_size": 2, "offspring": 1}.items():
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
        for name in ("crossover_prob", "mutation_prob"):
            value = getattr(self, name)
            need(0.0 <= value <= 1.0, f"{name} must be in [0, 1], got {value}")
        need(
            self.generations is None or (isinstance(self.generations, int) and self.generations >= 1),
            f"generations must be >= 1 or null (no limit), got {self.generations}",
        )
        need(
            self.strategy in ("evolution", "random"),
            f"strategy must be one of ['evolution', 'random'], got {self.strategy!r}",
        )

    @classmethod
    def of(cls, config: "EvolutionConfig") -> "EvolutionConfig":
        """The algorithm's part of ``config`` (e.g. of a ``SearchConfig``)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def need(ok: bool, message: str) -> None:
    """``EvolutionSettingsError`` naming the flag (``search.<message>``) unless ``ok``."""
    if not ok:
        raise EvolutionSettingsError(f"search.{message}")


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
    best_accuracy: Optional[float] = None  # the best's raw query accuracy (its score may hold a size prior)

    def to_dict(self) -> dict:
        """Plain JSON (and checkpoint) form; ``from_dict`` reads it back."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"best_arch": self.best_arch.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationRecord":
        # predictor_used: absent from the histories of checkpoints written before it was recorded
        return cls(**{**data, "best_arch": Architecture.from_dict(data["best_arch"]),
                      "predictor_used": data.get("predictor_used", False)})


Score = Callable[[Sequence[Architecture]], Sequence[float]]  # architectures -> their scores


class EvolutionarySearch:
    """Population, archive and predictor, with the moves of one generation.

    Args:
        space: the search space.
        config: the algorithm's settings (a ``SearchConfig`` is one too; only these are read).
        seed: overrides ``config.seed``.
        fits: the cost budget: only architectures for which it is true are ever proposed.
    """

    def __init__(self, space: SearchSpace, config: EvolutionConfig, seed: Optional[int] = None,
                 fits: Optional[Callable[[Architecture], bool]] = None) -> None:
        self.space, self.config = space, config
        self.fits = fits or (lambda arch: True)
        seed = (config.seed or 0) if seed is None else seed
        self.rng = seeding.rng(seed, "evolution")
        self.population: list[Member] = []  # oldest first
        self.archive: dict[Architecture, float] = {}  # every architecture scored, latest score
        self.accuracies: dict[Architecture, float] = {}  # the same, raw accuracy (no size prior)
        self.first_scored: dict[Architecture, int] = {}  # the generation each was first scored in
        self.predicted: dict[Architecture, float] = {}
        self.generation = 0
        self.history: list[GenerationRecord] = []
        self.predictor = PerformancePredictor(space, config.predictor, seed=seed)
        self.predictor_tau: Optional[float] = None

    # -- proposals -----------------------------------------------------------------------
    def sample(self) -> Architecture:
        """A uniform sample of the space within the budget (rejection sampling)."""
        for _ in range(_TRIES):
            arch = self.space.sample(self.rng)
            if self.fits(arch):
                return arch
        raise RuntimeError(f"no architecture within the budget in {_TRIES} uniform samples")

    def initial_population(self) -> list[Architecture]:
        """Distinct random architectures within the budget to fill the first population."""
        wanted = min(self.config.population_size, self.space.size())
        return self._unseen(wanted, self.sample)

    def _parent(self) -> Architecture:
        contenders = self.rng.sample(
            self.population, min(self.config.tournament_size, len(self.population))
        )
        return max(contenders, key=lambda m: m.score).arch

    def _unseen(self, n: int, draw: Callable[[], Architecture]) -> list[Architecture]:
        """Up to ``n`` distinct draws within the budget, not in the population nor already
        scored."""
        taken = {m.arch for m in self.population} | set(self.archive)
        found: list[Architecture] = []
        for _ in range(50 * n):
            if len(found) == n:
                break
            arch = draw()
            if arch not in taken and arch not in found and self.fits(arch):
                found.append(arch)
        return found

    def _child(self) -> Architecture:
        """Crossover (then mutation) or mutation of tournament-picked parents; redrawn until
        the child fits the budget (a parent always does, so some child will)."""
        child = None
        for _ in range(_TRIES):
            if self.rng.random() < self.config.crossover_prob:
                child = self.space.crossover(self._parent(), self._parent(), self.rng)
                child = self.space.mutate(child, self.rng, self.config.mutation_prob)
            else:
                child = self.space.mutate(self._parent(), self.rng, self.config.mutation_prob)
            if self.fits(child):
                return child
        return child  # the caller's fits check drops it

    def breed(self, n: int) -> list[Architecture]:
        """Up to ``n`` distinct children by crossover and mutation, none seen before."""
        return self._unseen(n, self._child)

    def fresh(self, n: int) -> list[Architecture]:
        """Up to ``n`` distinct uniform samples within the budget, none seen before (the
        random strategy)."""
        return self._unseen(n, self.sample)

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
    def accept(self, scored: dict[Architecture, float], real_scorings: Optional[int] = None,
               accuracies: Optional[dict[Architecture, float]] = None) -> GenerationRecord:
        """Record the scores of one generation, select the survivors, retrain the predictor
        when due; returns the generation's record (also appended to ``history``).
        ``real_scorings``: how many of ``scored`` were scored for real (default: all), since a
        caller may keep a score measured under the same weights by an earlier generation.
        ``accuracies``: the raw accuracies behind the scores (default: the scores)."""
        for arch, score in scored.items():
            self.archive[arch] = float(score)
            self.accuracies[arch] = float((accuracies or scored)[arch])
            self.first_scored.setdefault(arch, self.generation)
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
            best_accuracy=self.accuracies.get(best.arch),
        )
        self.history.append(record)
        self.generation += 1
        return record

    # -- the loop ------------------------------------------------------------------------
    def step(self, score: Score, limit: Optional[int] = None) -> Optional[GenerationRecord]:
        """One generation with ``score`` (a ``scoring.Scorer``, whose raw accuracies and count
        of real scorings are recorded too, or any function of a list of architectures), at
        most ``limit`` scorings; ``None`` when nothing is left to propose."""
        archs = self.to_score(self.propose())[:limit]
        if not archs:
            return None
        values = list(score(archs))
        raw = getattr(score, "accuracies", None)  # a Scorer's cache of raw accuracies
        return self.accept(dict(zip(archs, values)), getattr(score, "real_scorings", None),
                           None if raw is None else {a: raw[a] for a in archs})

    def run(self, score: Score, max_scorings: Optional[int] = None) -> list[GenerationRecord]:
        """Generations until ``config.generations`` have run, the space is exhausted, or
        ``max_scorings`` architectures have been scored (the last generation cut to fit).
        Returns the history."""
        while not self.finished:
            left = None if max_scorings is None else max_scorings - len(self.archive)
            if (left is not None and left <= 0) or self.step(score, left) is None:
                break
        return self.history

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
            "accuracies": [[a.to_dict(), s] for a, s in self.accuracies.items()],
            "first_scored": [[a.to_dict(), g] for a, g in self.first_scored.items()],
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
        self.accuracies = {Architecture.from_dict(a): s for a, s in state.get("accuracies", state["archive"])}
        self.first_scored = {Architecture.from_dict(a): g for a, g in state.get("first_scored", [])}
        self.predicted = {Architecture.from_dict(a): s for a, s in state["predicted"]}
        self.history = [GenerationRecord.from_dict(record) for record in state["history"]]
        self.predictor.load_state_dict(state["predictor"])
        self.predictor_tau = state["predictor_tau"]
