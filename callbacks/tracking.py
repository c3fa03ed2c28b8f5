"""Experiment tracking of a search: files next to the checkpoints, and W&B media when a
``WandbLogger`` is among the trainer's loggers.

After each generation of ``EvolutionCallback`` (on the global-zero rank only) this callback:

* writes ``scored.json`` next to ``best_arch.json``: the population and every architecture
  scored so far, with score, the predictor's estimate, parameters and FLOPs, so that plots and
  the report can be regenerated from files alone;
* draws the PNGs of ``lightning_metanas.plots`` there (search curve, predicted vs measured,
  accuracy vs parameters and vs FLOPs with the Pareto front, the best architecture);
* for every ``WandbLogger``: logs the population as a ``wandb.Table``
  (``search/population``), the search curve (``search/curve``), the predictor scatter
  (``search/predicted_vs_measured``), the accuracy/size front (``search/front``), the PNGs
  (``search/plots/*``) and ``best_arch.json`` as an artifact of type ``architecture``.

At setup it sends the run's whole LightningCLI configuration to W&B's run config (and writes
``config.yaml`` into the run directory when the CLI put it elsewhere, as it does when W&B is
the only logger). At the end of fit, and again after meta-testing, it writes the HTML report
(``lightning_metanas.report``).

Order: it may stand anywhere in ``trainer.callbacks``. It handles every generation it has not
handled yet at the first of ``on_train_epoch_end`` (when placed after ``EvolutionCallback``),
the next ``on_train_epoch_start``, or ``on_train_end``. ``configs/search_quick.yaml`` puts it
*before* ``EvolutionCallback`` so that ``--trainer.callbacks.init_args.evolution.*`` flags,
which jsonargparse applies to the last callback of the list, still reach the search.

DDP: everything it writes or logs happens on global rank zero, and nothing in that code makes
a collective call; the only collective it can reach (``trainer.log_dir`` inside
``EvolutionCallback.export_dir``) is called on every rank, in ``on_train_start``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger

from callbacks.evolution import EvolutionCallback
from lightning_metanas import plots
from lightning_metanas.evolution import EvolutionarySearch
from lightning_metanas.report import SCORED, write_report
from lightning_metanas.search_space import Architecture

POPULATION_COLUMNS = ["generation", "architecture", "score", "predicted", "params", "flops", "born"]


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

    def __init__(
        self,
        plots: bool = True,
        wandb_media: bool = True,
        log_config: bool = True,
        report: bool = True,
    ) -> None:
        self.plots, self.wandb_media, self.log_config, self.report = plots, wandb_media, log_config, report
        self.directory: Optional[Path] = None  # next to the checkpoints
        self.handled = 0  # generations of the search history already tracked
        self._sizes: dict[Architecture, tuple[int, int]] = {}

    # -- where ---------------------------------------------------------------------------
    @property
    def run_dir(self) -> Optional[Path]:
        """The run directory: the folder that holds ``checkpoints/`` (or the export folder
        itself when checkpoints are written elsewhere)."""
        if self.directory is None:
            return None
        return self.directory.parent if self.directory.name == "checkpoints" else self.directory

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.log_config and trainer.is_global_zero:
            config = self._cli_config(trainer)
            if config is not None:
                for run in self._wandb_runs(trainer):
                    run.config.update(config, allow_val_change=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # every rank (export_dir may broadcast); fast_dev_run writes nothing, as Lightning's
        # loggers and checkpoints don't under it
        self.directory = None if trainer.fast_dev_run else EvolutionCallback.export_dir(trainer)
        search = self._search(trainer)
        # A resumed run already logged its earlier generations in the run it resumes.
        self.handled = len(search.history) if search is not None else 0
        if trainer.is_global_zero and self.run_dir is not None:
            self._write_config(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.track(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.track(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.track(trainer, pl_module)
        if self.report and trainer.is_global_zero and self.run_dir is not None:
            write_report(self.run_dir)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.report and trainer.is_global_zero and self.run_dir is not None):
            return
        result = getattr(pl_module, "last_result", {}).get("test")
        if result is None:
            return
        data = trainer.datamodule
        test = {
            "acc": result["acc"],
            "acc_ci95": result["acc_ci95"],
            "tasks": int(result["tasks"]),
            "ways": getattr(data, "ways", None),
            "shots": getattr(data, "shots", None),
            "arch": pl_module.evaluated_architecture().to_dict(),
        }
        # train.py writes test_result.json after trainer.test() returns; the report written
        # now takes the result directly.
        write_report(self.run_dir, test_result=test)

    # -- one round of tracking -----------------------------------------------------------
    def track(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Handle the generations not handled yet (the same decision on every rank: the
        search history is identical everywhere; the work itself happens on rank zero)."""
        search = self._search(trainer)
        if search is None or len(search.history) <= self.handled:
            return
        self.handled = len(search.history)
        if trainer.is_global_zero and self.directory is not None:
            self.export(trainer, pl_module, search)

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule, search: EvolutionarySearch) -> None:
        directory = self.directory
        directory.mkdir(parents=True, exist_ok=True)
        generation = search.history[-1]["generation"]
        best = search.best()
        population, archive = self.rows(pl_module, search)
        ways = getattr(pl_module.hparams, "ways", None)
        scored = {
            "generation": generation,
            "image_size": self._image_size(pl_module),
            "image_channels": getattr(pl_module.hparams, "image_channels", None),
            "ways": ways,
            "best": best.arch.to_dict(),
            "population": population,
            "archive": archive,
        }
        (directory / SCORED).write_text(json.dumps(scored, indent=1) + "\n")
        images: dict[str, Path] = {}
        if self.plots:
            images = plots.write_search_plots(
                directory, search.history, archive, best=best.arch.to_dict(), ways=ways,
                input_shape=self._input_shape(pl_module),
            )
        if self.wandb_media:
            for run in self._wandb_runs(trainer):
                self._log_wandb(run, trainer, search, population, archive, images)

    # -- data ----------------------------------------------------------------------------
    def rows(self, pl_module: pl.LightningModule, search: EvolutionarySearch) -> tuple[list[dict], list[dict]]:
        """Population rows and archive rows (every architecture scored, latest score)."""
        alive = {m.arch for m in search.population}
        population = [
            dict(self._row(pl_module, m.arch, m.score, m.predicted), born=m.born)
            for m in search.population
        ]
        archive = [
            dict(self._row(pl_module, arch, score, search.predicted.get(arch)), in_population=arch in alive)
            for arch, score in search.archive.items()
        ]
        return population, archive

    def _row(self, pl_module: pl.LightningModule, arch: Architecture, score: float, predicted: Optional[float]) -> dict:
        params, flops = self._size(pl_module, arch)
        return {
            "arch": arch.to_dict(),
            "architecture": str(arch),
            "score": float(score),
            "predicted": None if predicted is None else float(predicted),
            "params": params,
            "flops": flops,
        }

    def _size(self, pl_module: pl.LightningModule, arch: Architecture) -> tuple[int, int]:
        """(parameters, multiply-accumulates per image) of the stand-alone subnet."""
        if arch not in self._sizes:
            supernet = pl_module.supernet
            self._sizes[arch] = (
                int(supernet.num_parameters(arch)),
                int(supernet.flops(arch, self._image_size(pl_module))),
            )
        return self._sizes[arch]

    @staticmethod
    def _image_size(pl_module: pl.LightningModule) -> int:
        return int(getattr(pl_module.hparams, "image_size", 28))

    def _input_shape(self, pl_module: pl.LightningModule) -> str:
        channels = getattr(pl_module.hparams, "image_channels", None)
        size = self._image_size(pl_module)
        return f"{channels}x{size}x{size}" if channels else f"{size}x{size}"

    # -- W&B -----------------------------------------------------------------------------
    @staticmethod
    def _wandb_runs(trainer: pl.Trainer) -> list[Any]:
        """The W&B runs of the trainer's WandbLoggers (call on rank zero only: elsewhere
        ``experiment`` is a dummy)."""
        return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    def _log_wandb(
        self,
        run: Any,
        trainer: pl.Trainer,
        search: EvolutionarySearch,
        population: list[dict],
        archive: list[dict],
        images: dict[str, Path],
    ) -> None:
        import wandb

        generation = search.history[-1]["generation"]
        history = search.history
        gens = [h["generation"] for h in history]
        front = set(plots.pareto_front([(r["params"], r["score"]) for r in archive]))
        payload: dict[str, Any] = {
            "search/population": wandb.Table(
                columns=POPULATION_COLUMNS,
                data=[[generation, r["architecture"], r["score"], r["predicted"], r["params"], r["flops"], r["born"]]
                      for r in population],
            ),
            "search/curve": wandb.plot.line_series(
                xs=gens,
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
                    columns=["architecture", "params", "flops", "score", "pareto", "in_population"],
                    data=[[r["architecture"], r["params"], r["flops"], r["score"], i in front, r["in_population"]]
                          for i, r in enumerate(archive)],
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
        best = search.best()
        params, flops = self._sizes.get(best.arch, (None, None))
        copy = Path(run.dir) / "best_arch" / f"generation_{generation:03d}.json"
        copy.parent.mkdir(parents=True, exist_ok=True)
        best.arch.save(copy)
        artifact = wandb.Artifact(
            f"best_arch-{run.id}",
            type="architecture",
            description="Best architecture of the population (Architecture JSON: ops, widths).",
            metadata={
                "generation": generation,
                "score": best.score,
                "architecture": str(best.arch),
                "params": params,
                "flops": flops,
            },
        )
        artifact.add_file(str(copy), name="best_arch.json", policy="immutable")
        run.log_artifact(artifact, aliases=["latest", f"generation-{generation}"])

    # -- configuration -------------------------------------------------------------------
    @staticmethod
    def _cli_config(trainer: pl.Trainer) -> Optional[dict]:
        """The whole configuration LightningCLI parsed (from its SaveConfigCallback), as a
        plain dict; None when the trainer was not built by LightningCLI."""
        from pytorch_lightning.cli import SaveConfigCallback

        saver = next((c for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)
        if saver is None:
            return None
        return yaml.safe_load(saver.parser.dump(saver.config, skip_none=False))

    def _write_config(self, trainer: pl.Trainer) -> None:
        """``config.yaml`` in the run directory, when the CLI saved it elsewhere (with W&B as
        the only logger, the CLI writes it into the logger's save_dir, shared by all runs)."""
        from pytorch_lightning.cli import SaveConfigCallback

        target = self.run_dir / "config.yaml"
        saver = next((c for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)
        if saver is None or target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(saver.parser.dump(saver.config, skip_none=False))

    # -- helpers -------------------------------------------------------------------------
    def _search(self, trainer: pl.Trainer) -> Optional[EvolutionarySearch]:
        evolution = [c for c in trainer.callbacks if isinstance(c, EvolutionCallback)]
        if not evolution:
            return None
        return evolution[0].search


__all__ = ["SearchTrackingCallback", "POPULATION_COLUMNS"]
