"""Every setting of the across-task search, as train.py's ``--search.<field>`` flags.

Its parts and their readers: the evolutionary algorithm's settings (the fields inherited from
``EvolutionConfig``, read by ``EvolutionarySearch``), how a candidate is scored (read by
``scoring.Scorer``'s builders), the cost budget (``costs.Budget``), when generations run
during meta-training (read by ``callbacks/evolution.py``) and the explanation of its answer
(``explain.WhyConfig``). The defaults are the search that
measured best (RESULTS.md, "Ranking fidelity"), so ``--search.<one field>`` on any config runs
that search with one change, not an older variant.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from lightning_metanas.costs import Budget
from lightning_metanas.errors import require_int
from lightning_metanas.evolution import EvolutionConfig, EvolutionSettingsError, need
from lightning_metanas.explain import WhyConfig


@dataclass
class SearchConfig(EvolutionConfig):
    """The search's settings (``--search.<field>``); the evolution's own are ``EvolutionConfig``'s.

    Args:
        tasks_per_score: validation tasks each candidate adapts to; the same tasks for every
            candidate of a run, so scores compare.
        score_queries: query images per class in each scoring task (``None``: the data's
            ``queries``). More queries lower a score's noise at the cost of forward passes only.
        size_prior: strength of the prior for larger subnets: a score is the mean query accuracy
            times (parameters / the space's largest subnet's) to this power (0: accuracy alone).
            Files, logs and plots show both the raw accuracy and the score.
        max_params: parameters of the standalone network, at most (``None``: no bound).
        max_flops: multiply-accumulates of one image's forward pass, at most.
        max_latency_ms: one-image forward time on one CPU thread of this machine, at most
            (measured per candidate: ``latency.latency_ms``).
        max_latency_vs_reference: the same time as a multiple of Conv-4's (the space's reference
            network), timed in the same run: e.g. 0.5 for "at most half of Conv-4's latency" on
            whatever CPU runs the search.
        warmup_epochs: epochs the SuperNet is meta-trained under ``model.sampling`` before the
            first generation (``None``: half the run's epochs, minus one: the generations then
            run at the end of the middle epoch and the best architecture trains alone after).
        generations_per_epoch: generations run at the end of each epoch after the warm-up
            (all of ``generations`` at once by default: the weights are fixed while they run).
        uniform_share: while generations are spread over epochs, the share of meta-train tasks
            drawn from the whole space rather than the population.
        why: the explanation of the best architecture, measured when the search ends
            (``why.json`` and the report's "why" section: ``explain.py``).
    """

    tasks_per_score: int = 100
    score_queries: Optional[int] = 5
    size_prior: float = 0.1
    max_params: Optional[int] = None
    max_flops: Optional[int] = None
    max_latency_ms: Optional[float] = None
    max_latency_vs_reference: Optional[float] = None
    warmup_epochs: Optional[int] = None
    generations_per_epoch: int = 8
    uniform_share: float = 0.25
    why: WhyConfig = field(default_factory=WhyConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.why, dict):  # from a checkpoint
            self.why = WhyConfig(**self.why)
        require_int("search.tasks_per_score", self.tasks_per_score, 1, EvolutionSettingsError)
        require_int("search.generations_per_epoch", self.generations_per_epoch, 1, EvolutionSettingsError)
        if self.warmup_epochs is not None:
            require_int("search.warmup_epochs", self.warmup_epochs, 0, EvolutionSettingsError)
        need(self.score_queries is None or (isinstance(self.score_queries, int) and self.score_queries >= 1),
             f"score_queries must be >= 1 or null (the data's queries), got {self.score_queries}")
        need(self.size_prior >= 0.0, f"size_prior must be >= 0 (0: no prior), got {self.size_prior}")
        need(0.0 <= self.uniform_share <= 1.0, f"uniform_share must be in [0, 1], got {self.uniform_share}")
        self.budget  # a malformed bound stops here, naming its flag

    @property
    def budget(self) -> Budget:
        return Budget(self.max_params, self.max_flops, self.max_latency_ms, self.max_latency_vs_reference)

    def warmup(self, max_epochs: Optional[int]) -> int:
        """Warm-up epochs for a run of ``max_epochs``: the setting, or half the run minus one."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return max(0, (max_epochs or 2) // 2 - 1)

    @classmethod
    def from_dict(cls, data: dict) -> "SearchConfig":
        """From a checkpoint's stored settings; keys of retired settings are refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EvolutionSettingsError(f"search settings {unknown} are not settings of this version; "
                                         f"known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)
