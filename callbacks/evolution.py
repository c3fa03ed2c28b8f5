"""When the evolutionary search runs: one or more generations at the end of each training epoch,
until ``evolution.generations`` have run; the remaining epochs meta-train the best architecture
alone.

The algorithm is ``lightning_metanas.evolution.EvolutionarySearch``; this callback only
schedules it, shards the real scoring over DDP ranks, broadcasts rank 0's decisions, hands the
new population to the LightningModule's sampler, logs, and writes ``best_arch.json``.

Why ``on_train_epoch_end``: it runs after the epoch's validation and before the checkpoint
callback saves (with ``save_on_train_epoch_end``), so each checkpoint holds the population the
next epoch trains with.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from callbacks.progress import scoring_progress
from lightning_metanas.evolution import EvolutionarySearch, EvolutionConfig, GenerationReport
from lightning_metanas.samplers import FixedSampler, PopulationSampler
from lightning_metanas.scoring import Tasks, score_architectures, stack_tasks
from lightning_metanas.search_space import Architecture


class EvolutionCallback(Callback):
    """Evolves the population that the meta-train step samples its subnets from.

    Args:
        evolution: settings of the evolutionary search (population, offspring, selection,
            predictor, ...).
        seed: seed of the search's own random choices (identical on every rank).
    """

    def __init__(self, evolution: EvolutionConfig = EvolutionConfig(), seed: int = 0) -> None:
        if isinstance(evolution, dict):
            evolution = EvolutionConfig(**evolution)
        self.config, self.seed = evolution, seed
        self.search: Optional[EvolutionarySearch] = None
        self._restored: Optional[dict] = None
        self._tasks: Optional[Tasks] = None
        self.last_report: Optional[GenerationReport] = None
        self._export_dir: Optional[Path] = None

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.search is None:
            self.search = EvolutionarySearch(pl_module.space, self.config, seed=self.seed)
        if self._restored is not None:
            self.search.load_state_dict(self._restored)
            self._restored = None
        if stage == "fit" and trainer.datamodule is not None:
            self.scoring_tasks(trainer, pl_module)  # a bad score_queries stops the run before step 1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resolved here on every rank (trainer.log_dir may broadcast), never inside rank-0 code.
        self._export_dir = None if trainer.fast_dev_run else self.export_dir(trainer)
        if self._restored is not None:  # restored after setup (resume)
            self.search.load_state_dict(self._restored)
            self._restored = None
        if self.search.population:
            self._install_sampler(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch < self.config.warmup_epochs:  # SuperNet warm-up: no search yet
            return
        for _ in range(self.config.generations_per_epoch):
            if self.search.finished:
                break
            self.run_generation(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return self.search.state_dict() if self.search is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.search is not None:
            self.search.load_state_dict(state_dict)
        else:
            self._restored = state_dict

    # -- one generation ------------------------------------------------------------------
    def scoring_tasks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tasks:
        """The first ``tasks_per_score`` validation tasks (with ``score_queries`` query images
        per class): the same for every candidate and every generation, on every rank."""
        if self._tasks is None:
            dataset = trainer.datamodule.task_dataset("val")
            if self.config.score_queries is not None:
                dataset = dataset.variant(
                    queries=self.config.score_queries, num_tasks=self.config.tasks_per_score,
                    setting="evolution.score_queries",
                )
            count = min(self.config.tasks_per_score, len(dataset))
            self._tasks = stack_tasks([dataset[i] for i in range(count)])
        return tuple(t.to(pl_module.device) for t in self._tasks)  # type: ignore[return-value]

    def score(self, trainer: pl.Trainer, pl_module: pl.LightningModule, archs: list[Architecture]) -> list[float]:
        """Each rank scores every ``world_size``-th architecture; a sum-reduce of the
        zero-padded score vectors gives every rank all the scores."""
        rank, world = trainer.global_rank, trainer.world_size
        tasks = self.scoring_tasks(trainer, pl_module)
        mine = list(range(rank, len(archs), world))
        description = f"generation {self.search.generation}: scoring"
        with scoring_progress(trainer, len(mine), description) as advance:
            local = score_architectures(
                pl_module.adapter, [archs[i] for i in mine], tasks,
                pl_module.meta.eval_inner_steps, progress=advance,
            )
        scores = torch.zeros(len(archs), dtype=torch.float64, device=pl_module.device)
        scores[mine] = torch.tensor(local, dtype=torch.float64, device=pl_module.device)
        if world > 1:
            scores = trainer.strategy.reduce(scores, reduce_op="sum")
        return scores.tolist()

    def run_generation(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> GenerationReport:
        search, strategy = self.search, trainer.strategy
        # Decisions happen once, on rank 0, and are broadcast: every rank scores the same list.
        proposals = [a.to_dict() for a in search.to_score(search.propose())] if trainer.is_global_zero else None
        archs = [Architecture.from_dict(a) for a in strategy.broadcast(proposals, src=0)]
        scores = self.score(trainer, pl_module, archs)
        state = None
        if trainer.is_global_zero:
            search.accept(dict(zip(archs, scores)))
            state = search.state_dict()
        search.load_state_dict(strategy.broadcast(state, src=0))
        report = self.last_report = self._report(search, len(archs))
        self._install_sampler(pl_module)
        self._log(pl_module, report)
        if trainer.is_global_zero:
            self._export(trainer, search)
        return report

    # -- plumbing ------------------------------------------------------------------------
    def _report(self, search: EvolutionarySearch, real_scorings: int) -> GenerationReport:
        entry = search.history[-1]
        return GenerationReport(
            generation=entry["generation"],
            best_arch=Architecture.from_dict(entry["best_arch"]),
            best_score=entry["best_score"],
            mean_score=entry["mean_score"],
            diversity=entry["diversity"],
            real_scorings=real_scorings,
            predictor_used=search.predictor.ready,
            predictor_tau=entry["predictor_tau"],
            new=[m for m in search.population if m.born == entry["generation"]],
        )

    def _install_sampler(self, pl_module: pl.LightningModule) -> None:
        if self.search.finished:  # the search is over: meta-train its best architecture alone
            pl_module.sampler = FixedSampler(self.search.best().arch)
            return
        pl_module.sampler = PopulationSampler(
            pl_module.space,
            [m.arch for m in self.search.population],
            self.search.best().arch,
            self.config.uniform_share,
            pl_module.sampling,
        )

    def _log(self, pl_module: pl.LightningModule, report: GenerationReport) -> None:
        metrics = {
            "search/generation": float(report.generation),
            "search/best_score": report.best_score,
            "search/mean_score": report.mean_score,
            "search/diversity": report.diversity,
            "search/real_scorings": float(report.real_scorings),
            "search/archive_size": float(len(self.search.archive)),
        }
        if report.predictor_tau is not None:
            metrics["search/predictor_tau"] = report.predictor_tau
        # Identical on every rank already (broadcast), so no sync is needed.
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)

    def _export(self, trainer: pl.Trainer, search: EvolutionarySearch) -> None:
        directory = self._export_dir
        if directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        search.best().arch.save(directory / "best_arch.json")
        (directory / "search_history.json").write_text(json.dumps(search.history, indent=1) + "\n")

    @staticmethod
    def export_dir(trainer: pl.Trainer) -> Optional[Path]:
        """Next to the checkpoints (or the log directory when there is no checkpointing)."""
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            return Path(trainer.checkpoint_callback.dirpath)
        if trainer.log_dir:
            return Path(trainer.log_dir)
        return None
