"""Experiment tracking of a search: PNG plots next to the checkpoints, W&B media when a
``WandbLogger`` is among the trainer's loggers, and the run report.

train.py gives every run this callback (its settings are ``--tracking.*``); it does nothing
unless the run has a search (an ``EvolutionCallback``). Then, after each generation, on the
global-zero rank only, it:

* draws the PNGs of ``lightning_metanas.plots`` next to the search's files (search curve,
  predicted vs measured, accuracy vs parameters and vs FLOPs with the Pareto front, the best
  architecture), from the generation's records and ``scored.json``;
* for every ``WandbLogger``: logs the population as a ``wandb.Table``
  (``search/population``), the search curve (``search/curve``), the predictor scatter
  (``search/predicted_vs_measured``), the accuracy/size front (``search/front``), the PNGs
  (``search/plots/*``) and ``best_arch.json`` as an artifact of type ``architecture``.

At setup it sends the run's whole LightningCLI configuration to W&B's run config (and writes
``config.yaml`` into the run directory when the CLI put it elsewhere, as it does when W&B is
the only logger). At the end of fit, and again after meta-testing, it writes the HTML report
(``lightning_metanas.report``).

It may stand anywhere in ``trainer.callbacks``: it handles every generation it has not
handled yet at the first of ``on_train_epoch_end``, the next ``on_train_epoch_start`` or
``on_train_end``. DDP: everything it writes or logs happens on global rank zero, and nothing
in that code makes a collective call; the only collective it can reach (``trainer.log_dir``
inside ``EvolutionCallback.export_dir``) is called on every rank, in ``on_train_start``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

from callbacks.evolution import EvolutionCallback
from lightning_metanas import plots
from lightning_metanas.report import test_result, write_report, write_resume_record
from lightning_metanas.search_space import Architecture

POPULATION_COLUMNS = ["generation", "architecture", "accuracy", "score", "predicted", "params", "flops", "born"]


class SearchTrackingCallback(Callback):
    """Plots, tables and W&B media of the evolutionary search, and the run report.

    Args:
        plots: write the PNG plots next to the checkpoints after every generation.
        wandb_media: log tables, charts, images and the best-architecture artifact to every
            ``WandbLogger`` of the trainer (nothing happens for other loggers).
        log_config: send the full LightningCLI configuration to W&B's run config.
        report: write ``report.html`` into the run directory at the end of fit and after
            meta-testing.
    """

    def __init__(self, plots: bool = True, wandb_media: bool = True, log_config: bool = True, report: bool = True) -> None:
        self.plots, self.wandb_media, self.log_config, self.report = plots, wandb_media, log_config, report
        self.directory: Optional[Path] = None  # next to the checkpoints
        self.handled = 0  # generations of the search history already tracked

    @property
    def run_dir(self) -> Optional[Path]:
        """The run directory: the folder that holds ``checkpoints/`` (or the export folder
        itself when checkpoints are written elsewhere)."""
        if self.directory is None:
            return None
        return self.directory.parent if self.directory.name == "checkpoints" else self.directory

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.log_config and trainer.is_global_zero and _evolution(trainer):
            saver = _config_saver(trainer)
            if saver is not None:
                config = yaml.safe_load(saver.parser.dump(saver.config, skip_none=False))
                for run in _wandb_runs(trainer):
                    run.config.update(config, allow_val_change=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        evolution = _evolution(trainer)
        if evolution is None:
            return
        # every rank (export_dir may broadcast); fast_dev_run writes nothing, as Lightning's
        # loggers and checkpoints don't under it
        self.directory = None if trainer.fast_dev_run else EvolutionCallback.export_dir(trainer)
        # A resumed run already logged its earlier generations in the run it resumes.
        self.handled = len(evolution.search.history)
        if trainer.is_global_zero and self.run_dir is not None and trainer.ckpt_path:
            write_resume_record(self.run_dir, Path(trainer.ckpt_path), trainer.global_step)
        saver = _config_saver(trainer)
        if trainer.is_global_zero and self.run_dir is not None and saver is not None:
            # config.yaml in the run directory, also when the CLI saved it elsewhere (with W&B
            # as the only logger, into the logger's save_dir, shared by all runs)
            target = self.run_dir / "config.yaml"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(saver.parser.dump(saver.config, skip_none=False))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.track(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.track(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.track(trainer)
        if self._reports(trainer):
            write_report(self.run_dir)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        result = getattr(pl_module, "last_result", {}).get("test")
        if result is not None and trainer.is_global_zero:
            for logger in trainer.loggers:  # TensorBoard's hparams view: the run's final figure
                if isinstance(logger, TensorBoardLogger):
                    logger.log_hyperparams(dict(pl_module.hparams), metrics={"hp_metric": result["acc"]})
        if result is not None and self._reports(trainer):
            # train.py writes test_result.json after trainer.test() returns; the report
            # written now takes the same record directly.
            data = trainer.datamodule
            write_report(self.run_dir, test=test_result(result, data.ways, data.shots, pl_module.evaluated_architecture()))

    def _reports(self, trainer: pl.Trainer) -> bool:
        return self.report and trainer.is_global_zero and self.run_dir is not None and _evolution(trainer) is not None

    # -- one round of tracking -----------------------------------------------------------
    def track(self, trainer: pl.Trainer) -> None:
        """Handle the generations not handled yet (the same decision on every rank: the
        search history is identical everywhere; the work itself happens on rank zero)."""
        evolution = _evolution(trainer)
        if evolution is None or len(evolution.search.history) <= self.handled:
            return
        new = range(self.handled, len(evolution.search.history))
        self.handled = len(evolution.search.history)
        if not trainer.is_global_zero or self.directory is None or evolution.scored is None:
            return
        scored, history = evolution.scored, [record.to_dict() for record in evolution.search.history]
        images: dict[str, Path] = {}
        if self.plots:
            images = plots.write_search_plots(
                self.directory, history, scored["archive"], best=scored["best"], ways=scored["ways"],
                input_shape=plots.input_shape(scored["image_size"], scored["image_channels"]),
            )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                _log_tensorboard(logger.experiment, history[-1]["generation"], images, scored)
        if self.wandb_media:
            for run in _wandb_runs(trainer):
                for g in new:  # one population table per generation, each at its own step
                    rows = evolution.populations.get(g)
                    if rows is not None:
                        self._log_population(run, g, rows)
                self._log_wandb(run, trainer, history, scored, images)

    @staticmethod
    def _log_population(run: Any, generation: int, population: list[dict]) -> None:
        import wandb

        run.log({"search/population": wandb.Table(
            columns=POPULATION_COLUMNS,
            data=[[generation, *(r.get(c) for c in POPULATION_COLUMNS[1:])] for r in population],
        ), "search/generation": generation})

    def _log_wandb(self, run: Any, trainer: pl.Trainer, history: list[dict], scored: dict, images: dict[str, Path]) -> None:
        import wandb

        generation, population, archive = scored["generation"], scored["population"], scored["archive"]
        front = set(plots.pareto_front([(r["params"], r["score"]) for r in archive]))
        payload: dict[str, Any] = {
            "search/curve": wandb.plot.line_series(
                xs=[h["generation"] for h in history],
                ys=[[h["best_score"] for h in history], [h["mean_score"] for h in history]],
                keys=["best_score", "mean_score"],
                title="Search curve: best and mean population score",
                xname="generation",
            ),
            "search/predicted_vs_measured": wandb.plot.scatter(
                wandb.Table(
                    columns=["architecture", "predicted", "measured"],
                    data=[[r["architecture"], r["predicted"], r["score"]] for r in archive
                          if r["predicted"] is not None],
                ),
                "predicted", "measured", title="Predictor: predicted vs measured score",
            ),
            "search/front": wandb.plot.scatter(
                wandb.Table(
                    columns=["architecture", "params", "flops", "accuracy", "score", "pareto", "in_population"],
                    data=[[r["architecture"], r["params"], r["flops"], r.get("accuracy"), r["score"], i in front,
                           r["in_population"]] for i, r in enumerate(archive)],
                ),
                "params", "score", title="Accuracy vs parameters (every architecture scored)",
            ),
            "trainer/global_step": trainer.global_step,
        }
        for name, path in images.items():
            payload[f"search/plots/{name}"] = wandb.Image(str(path), caption=name)
        run.log(payload)

        # The artifact's file lives in the W&B run folder (a per-generation copy, referenced
        # in place), so `wandb sync` of that folder has everything it needs.
        best = Architecture.of(scored["best"])
        row = next(r for r in population if Architecture.of(r["arch"]) == best)
        copy = Path(run.dir) / "best_arch" / f"generation_{generation:03d}.json"
        copy.parent.mkdir(parents=True, exist_ok=True)
        best.save(copy)
        artifact = wandb.Artifact(
            f"best_arch-{run.id}",
            type="architecture",
            description="Best architecture of the population (Architecture JSON: ops, widths).",
            metadata={"generation": generation, "score": row["score"], "architecture": str(best),
                      "params": row["params"], "flops": row["flops"]},
        )
        artifact.add_file(str(copy), name="best_arch.json", policy="immutable")
        run.log_artifact(artifact, aliases=["latest", f"generation-{generation}"])


def _evolution(trainer: pl.Trainer) -> Optional[EvolutionCallback]:
    return next((c for c in trainer.callbacks if isinstance(c, EvolutionCallback)), None)


def _config_saver(trainer: pl.Trainer) -> Optional[SaveConfigCallback]:
    """LightningCLI's SaveConfigCallback: it holds the whole parsed configuration (None when
    the trainer was not built by LightningCLI)."""
    return next((c for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)


def _wandb_runs(trainer: pl.Trainer) -> list[Any]:
    """The W&B runs of the trainer's WandbLoggers (call on rank zero only: elsewhere
    ``experiment`` is a dummy)."""
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def _log_tensorboard(writer: Any, generation: int, images: dict[str, Path], scored: dict) -> None:
    """The search's plots as images and its best architecture as text, at the generation's step."""
    import numpy as np
    from PIL import Image

    for name, path in images.items():
        with Image.open(path) as img:
            writer.add_image(f"search/{name}", np.asarray(img.convert("RGB")), generation, dataformats="HWC")
    best = Architecture.of(scored["best"])
    row = next((r for r in scored["archive"] if Architecture.of(r["arch"]) == best), {})
    writer.add_text("search/best_architecture", f"{best} (score {row.get('score', float('nan')):.4f}, "
                    f"accuracy {row.get('accuracy', float('nan')):.4f}, {row.get('params')} parameters)", generation)

