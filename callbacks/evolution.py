"""When the evolutionary search runs: one or more generations at the end of each training epoch,
until ``search.generations`` have run; the remaining epochs meta-train the best architecture
alone.

The algorithm is ``lightning_metanas.evolution.EvolutionarySearch``; this callback only
schedules it, shards the real scoring over DDP ranks, broadcasts rank 0's decisions, hands the
new population to the LightningModule's sampler, logs each generation's record and writes the
search's files (``lightning_metanas.search_files``) next to the checkpoints.

train.py adds it, first in the trainer's list, whenever the command line or a config has a
``search`` section (``--search.<field>``, ``lightning_metanas.cli``). Why
``on_train_epoch_end``: it runs after the epoch's validation and before the checkpoint
callbacks (Lightning runs those last), so each checkpoint holds the population the next epoch
trains with; standing first, it runs before every other callback's epoch end.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from callbacks.progress import scoring_progress
from lightning_metanas.evolution import EvolutionarySearch, EvolutionConfig, GenerationRecord
from lightning_metanas.samplers import FixedSampler, PopulationSampler
from lightning_metanas.scoring import Tasks, score_architectures, size_weighted, stack_tasks
from lightning_metanas.search_files import scored_record, write_search_files
from lightning_metanas.search_space import Architecture


class EvolutionCallback(Callback):
    """Evolves the population that the meta-train step samples its subnets from.

    Args:
        config: settings of the evolutionary search (``--search.*``).
    """

    def __init__(self, config: EvolutionConfig = EvolutionConfig()) -> None:
        self.config = config
        self.search: Optional[EvolutionarySearch] = None
        self.scored: Optional[dict] = None  # the last scored.json written (tracking draws it)
        self._restored: Optional[dict] = None
        self._tasks: Optional[Tasks] = None
        self._export_dir: Optional[Path] = None
        self._sizes: dict[Architecture, tuple[int, int]] = {}
        self._cache: dict[Architecture, float] = {}  # scores under the weights of _cache_step
        self._cache_step: Optional[int] = None
        self.real_scorings = 0

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.search is None:
            self.search = EvolutionarySearch(pl_module.space, self.config)
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
                    setting="search.score_queries",
                )
            count = min(self.config.tasks_per_score, len(dataset))
            self._tasks = stack_tasks([dataset[i] for i in range(count)])
        return tuple(t.to(pl_module.device) for t in self._tasks)  # type: ignore[return-value]

    def score(self, trainer: pl.Trainer, pl_module: pl.LightningModule, archs: list[Architecture]) -> list[float]:
        """Each rank scores every ``world_size``-th architecture; a sum-reduce of the
        zero-padded score vectors gives every rank all the scores. An architecture already
        scored under the current weights (by an earlier generation at the same step, e.g.
        several generations after a warm-up) keeps its score: scoring is deterministic, so
        scoring it again would only repeat the number. Returned with ``search.size_prior`` applied."""
        if self._cache_step != trainer.global_step:
            self._cache, self._cache_step = {}, trainer.global_step
        fresh = [a for a in archs if a not in self._cache]
        self._cache.update(zip(fresh, self._score_fresh(trainer, pl_module, fresh)))
        self.real_scorings = len(fresh)
        largest = pl_module.supernet.largest_num_parameters()
        return [size_weighted(self._cache[a], self._size(pl_module, a)[0], largest, self.config.size_prior)
                for a in archs]

    def _score_fresh(self, trainer: pl.Trainer, pl_module: pl.LightningModule, archs: list[Architecture]) -> list[float]:
        if not archs:
            return []
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

    def run_generation(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> GenerationRecord:
        search, strategy = self.search, trainer.strategy
        # Decisions happen once, on rank 0, and are broadcast: every rank scores the same list.
        proposals = [a.to_dict() for a in search.to_score(search.propose())] if trainer.is_global_zero else None
        archs = [Architecture.from_dict(a) for a in strategy.broadcast(proposals, src=0)]
        scores = self.score(trainer, pl_module, archs)
        state = None
        if trainer.is_global_zero:
            search.accept(dict(zip(archs, scores)), self.real_scorings)
            state = search.state_dict()
        search.load_state_dict(strategy.broadcast(state, src=0))
        record = search.history[-1]  # the record accept returned, on every rank
        self._install_sampler(pl_module)
        self._log(pl_module, record)
        if trainer.is_global_zero and self._export_dir is not None:
            self.scored = scored_record(
                search, lambda arch: self._size(pl_module, arch), ways=pl_module.hparams.ways,
                image_size=pl_module.hparams.image_size, image_channels=pl_module.hparams.image_channels,
            )
            write_search_files(self._export_dir, search, self.scored)
        return record

    # -- plumbing ------------------------------------------------------------------------
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

    def _log(self, pl_module: pl.LightningModule, record: GenerationRecord) -> None:
        metrics = {f"search/{k}": float(v) for k, v in record.to_dict().items() if k != "best_arch" and v is not None}
        metrics["search/archive_size"] = float(len(self.search.archive))
        # Identical on every rank already (broadcast), so no sync is needed.
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)

    def _size(self, pl_module: pl.LightningModule, arch: Architecture) -> tuple[int, int]:
        """(parameters, multiply-accumulates per image) of the stand-alone subnet."""
        if arch not in self._sizes:
            supernet = pl_module.supernet
            self._sizes[arch] = (int(supernet.num_parameters(arch)),
                                 int(supernet.flops(arch, pl_module.hparams.image_size)))
        return self._sizes[arch]

    @staticmethod
    def export_dir(trainer: pl.Trainer) -> Optional[Path]:
        """Next to the checkpoints (or the log directory when there is no checkpointing)."""
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            return Path(trainer.checkpoint_callback.dirpath)
        if trainer.log_dir:
            return Path(trainer.log_dir)
        return None
