"""When the evolutionary search runs: after the warm-up, one or more generations at the end of
an epoch, until ``search.generations`` have run; the remaining epochs meta-train the best
architecture alone.

The algorithm is ``lightning_metanas.evolution.EvolutionarySearch`` and the score
``lightning_metanas.scoring.Scorer`` (with the cost budget of ``lightning_metanas.costs``);
this callback only schedules them, shards the real scoring over DDP ranks, broadcasts rank 0's
decisions, hands the new population to the LightningModule's sampler, logs each generation's
record and writes the search's files (``lightning_metanas.search_files``) next to the
checkpoints; when the search ends, with the weights it chose on, ``why.json``
(``lightning_metanas.explain``: the best architecture's one-edit counterfactuals; a search
without an end, ``search.generations=null``, is explained when training ends).

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
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

from callbacks.progress import scoring_progress
from lightning_metanas.costs import CostModel
from lightning_metanas.errors import SettingsError
from lightning_metanas.evolution import EvolutionarySearch, GenerationRecord
from lightning_metanas.explain import explain, write_why
from lightning_metanas.samplers import FixedSampler, PopulationSampler
from lightning_metanas.scoring import Scorer, Tasks, first_tasks, score_architectures
from lightning_metanas.search_config import SearchConfig
from lightning_metanas.search_files import scored_record, write_search_files
from lightning_metanas.search_space import Architecture


class EvolutionCallback(Callback):
    """Evolves the population that the meta-train step samples its subnets from.

    Args:
        config: settings of the search (``--search.*``).
    """

    def __init__(self, config: SearchConfig = SearchConfig()) -> None:
        self.config = config
        self.search: Optional[EvolutionarySearch] = None
        self.costs: Optional[CostModel] = None
        self.scorer: Optional[Scorer] = None  # scores under the weights of _scorer_step
        self.scored: Optional[dict] = None  # the last scored.json written (tracking draws it)
        self._restored: Optional[dict] = None
        self._tasks: Optional[Tasks] = None
        self._export_dir: Optional[Path] = None
        self._scorer_step: Optional[int] = None
        self.populations: dict[int, list[dict]] = {}  # generation -> its population's rows (rank 0)
        self.why: Optional[dict] = None  # the explanation written (rank 0)
        self._explained = False
        self._wandb_axis = False

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Everything that can refuse the run does so here, before step 1: a warm-up that
        leaves no epoch to search in, a budget nothing in the space meets, bad scoring tasks."""
        hp = pl_module.hparams
        if self.costs is None:
            self.costs = CostModel(pl_module.space, hp.ways, hp.image_channels, hp.image_size,
                                   self.config.budget, supernet=pl_module.supernet)
        if self.search is None:
            self.search = EvolutionarySearch(pl_module.space, self.config, fits=self.costs.fits)
        if self._restored is not None:
            self.search.load_state_dict(self._restored)
            self._restored = None
        if stage == "fit":
            warmup, epochs = self.config.warmup(trainer.max_epochs), trainer.max_epochs
            if epochs is not None and epochs > 0 and warmup >= epochs and not trainer.fast_dev_run:
                raise SettingsError(
                    f"search.warmup_epochs={warmup} leaves no epoch for the search in a run of "
                    f"{epochs} epochs (trainer.max_epochs): lower search.warmup_epochs below {epochs} "
                    "or leave it unset (half the run)")
            self.costs.check_feasible()
            if trainer.datamodule is not None:
                self.scoring_tasks(trainer, pl_module)  # a bad score_queries stops the run here

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resolved here on every rank (trainer.log_dir may broadcast), never inside rank-0 code.
        self._export_dir = None if trainer.fast_dev_run else self.export_dir(trainer)
        if self._restored is not None:  # restored after setup (resume)
            self.search.load_state_dict(self._restored)
            self._restored = None
        if self.search.population:
            self.install_sampler(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch < self.config.warmup(trainer.max_epochs):  # SuperNet warm-up: no search yet
            return
        for _ in range(self.config.generations_per_epoch):
            if self.search.finished:
                break
            self.run_generation(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._explained and self.search.history:  # a search without an end: explained now
            self.explain_best(trainer, pl_module)

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
        """The first ``tasks_per_score`` validation tasks (``score_queries`` queries per class)."""
        if self._tasks is None:
            self._tasks = first_tasks(trainer.datamodule.task_dataset("val"), self.config.tasks_per_score,
                                      self.config.score_queries)
        return tuple(t.to(pl_module.device) for t in self._tasks)  # type: ignore[return-value]

    def scorer_for(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Scorer:
        """The scorer of the current weights: scores are remembered until the next training
        step (several generations at one epoch's end score on the same weights, and scoring is
        deterministic, so an architecture met again keeps its score)."""
        if self.scorer is None or self._scorer_step != trainer.global_step:
            net = pl_module.supernet
            self.scorer = Scorer(lambda archs: self.score_sharded(trainer, pl_module, archs), self.costs.params,
                                 net.largest_num_parameters(), self.config.size_prior)
            self._scorer_step = trainer.global_step
        return self.scorer

    def score_sharded(self, trainer: pl.Trainer, pl_module: pl.LightningModule, archs: list[Architecture],
                      tasks: Optional[int] = None, description: Optional[str] = None) -> list[float]:
        """Raw accuracies on the first ``tasks`` scoring tasks (``None``: all): each rank scores
        every ``world_size``-th architecture; a sum-reduce of the zero-padded vectors gives every
        rank all of them."""
        rank, world = trainer.global_rank, trainer.world_size
        scoring = tuple(t[:tasks] for t in self.scoring_tasks(trainer, pl_module))
        mine = list(range(rank, len(archs), world))
        description = description or f"generation {self.search.generation}: scoring"
        with scoring_progress(trainer, len(mine), description) as advance:
            local = score_architectures(
                pl_module.adapter, [archs[i] for i in mine], scoring,
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
        scorer = self.scorer_for(trainer, pl_module)
        scores = scorer(archs)
        state = None
        if trainer.is_global_zero:
            search.accept(dict(zip(archs, scores)), scorer.real_scorings, {a: scorer.accuracies[a] for a in archs})
            state = search.state_dict()
        search.load_state_dict(strategy.broadcast(state, src=0))
        record = search.history[-1]  # the record accept returned, on every rank
        self.install_sampler(pl_module)
        if trainer.is_global_zero:
            self.scored = scored_record(
                search, self.costs, ways=pl_module.hparams.ways,
                image_size=pl_module.hparams.image_size, image_channels=pl_module.hparams.image_channels,
            )
            self.populations[record.generation] = self.scored["population"]
            if self._export_dir is not None:
                write_search_files(self._export_dir, search, self.scored)
            self._log(trainer, record)
            print(generation_line(record, self.config.generations, len(search.archive)), flush=True)
        if search.finished:
            self.explain_best(trainer, pl_module)
        return record

    def explain_best(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Optional[dict]:
        """``why.json`` of the search's best architecture under the current weights, on the
        search's scoring tasks (the first ``search.why.tasks`` of them) with its size prior;
        computed on every rank (the scoring is sharded), written by rank 0."""
        settings = self.config.why
        self._explained = True
        if not settings.enabled or self._export_dir is None:
            return None
        count = len(self.scoring_tasks(trainer, pl_module)[0])
        if settings.tasks is None or settings.tasks >= count:
            scorer = self.scorer_for(trainer, pl_module)
        else:
            count = settings.tasks
            scorer = Scorer(lambda archs: self.score_sharded(trainer, pl_module, archs, count, "why: scoring"),
                            self.costs.params, pl_module.supernet.largest_num_parameters(), self.config.size_prior)
        archive = self.scored["archive"] if trainer.is_global_zero and self.scored else None
        why = explain(self.search.best().arch, pl_module.space, scorer, self.costs, archive=archive,
                      predictor=self.search.predictor, config=settings, tasks=count,
                      steps=pl_module.meta.eval_inner_steps)
        if trainer.is_global_zero:
            self.why = why
            write_why(self._export_dir, why)
            cost = why["cost"]
            print(f"search: why.json: {cost['candidates']} architectures one edit from the best or it, "
                  f"{cost['scorings']} scored now ({cost['seconds']:.1f} s, {count} tasks); layers by importance "
                  f"{', '.join(map(str, why['importance']))}", flush=True)
        return why

    # -- plumbing ------------------------------------------------------------------------
    def install_sampler(self, pl_module: pl.LightningModule) -> None:
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

    def _log(self, trainer: pl.Trainer, record: GenerationRecord) -> None:
        """The generation's record as one logged step of its own in every logger, not averaged
        with the epoch's other generations: a row of metrics.csv, TensorBoard scalars with the
        generation as their step, W&B metrics plotted against ``search/generation``."""
        metrics = {f"search/{k}": float(v) for k, v in record.to_dict().items() if k != "best_arch" and v is not None}
        metrics["search/archive_size"] = float(len(self.search.archive))
        metrics["epoch"] = trainer.current_epoch  # an integer, as Lightning logs it
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):  # the generation is the step: no epoch scalar
                logger.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=record.generation)
            elif isinstance(logger, WandbLogger):
                if not self._wandb_axis:
                    logger.experiment.define_metric("search/generation")
                    logger.experiment.define_metric("search/*", step_metric="search/generation")
                    self._wandb_axis = True
                logger.log_metrics(metrics, step=trainer.global_step)
            else:
                logger.log_metrics(metrics, step=trainer.global_step)

    @staticmethod
    def export_dir(trainer: pl.Trainer) -> Optional[Path]:
        """Next to the checkpoints (or the log directory when there is no checkpointing)."""
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            return Path(trainer.checkpoint_callback.dirpath)
        if trainer.log_dir:
            return Path(trainer.log_dir)
        return None


def generation_line(record: GenerationRecord, generations: Optional[int], scored: int) -> str:
    """The terminal's line for one generation (printed on rank 0, TTY or not)."""
    of = f"/{generations}" if generations else ""
    accuracy = "" if record.best_accuracy is None else f" (query accuracy {record.best_accuracy:.3f})"
    if record.predictor_tau is None:
        predictor = "predictor not fitted yet"
    else:
        predictor = f"predictor tau {record.predictor_tau:.2f}, {'screened' if record.predictor_used else 'not trusted yet'}"
    return (f"search: generation {record.generation + 1}{of}: best score {record.best_score:.3f}{accuracy} "
            f"{record.best_arch}; {record.real_scorings} scored now, {scored} so far; {predictor}")

