"""Progress that Lightning's own bars do not show: a generation's scoring on the bar, and a
line per epoch when stdout is not a terminal (nohup, SLURM logs), where bars print nothing
useful."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, RichProgressBar, TQDMProgressBar


@contextlib.contextmanager
def scoring_progress(trainer: pl.Trainer, total: int, description: str = "scoring") -> Iterator[Callable[[int], None]]:
    """A progress callable for ``score_architectures(..., progress=...)``: a task on the
    trainer's Rich progress bar (or a tqdm bar under ``TQDMProgressBar``) on global rank zero,
    removed when the block ends; a no-op elsewhere, with the bar disabled, or without one.
    Makes no collective call, so every rank may enter it.

        with scoring_progress(trainer, len(archs), f"generation {g}: scoring") as advance:
            scores = score_architectures(adapter, archs, tasks, steps, progress=advance)
    """
    bar = trainer.progress_bar_callback
    if not trainer.is_global_zero or bar is None or not bar.is_enabled or total <= 0:
        yield lambda n=1: None
        return
    if isinstance(bar, RichProgressBar) and bar.progress is not None:
        progress = bar.progress
        style = bar.theme.description
        task = progress.add_task(f"[{style}]{description}" if style else description, total=total)

        def advance_rich(n: int = 1) -> None:
            progress.update(task, advance=n)
            bar.refresh()

        try:
            yield advance_rich
        finally:
            progress.remove_task(task)
            bar.refresh()
        return
    if isinstance(bar, TQDMProgressBar):
        from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

        tqdm_bar = Tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, file=sys.stdout,
                        position=2 * bar.process_position + 1)
        try:
            yield lambda n=1: tqdm_bar.update(n)
        finally:
            tqdm_bar.close()
        return
    yield lambda n=1: None


class EpochLines(Callback):
    """One line per epoch on stdout when it is not a terminal (a terminal has the bars):
    the epoch, the step, and the epoch's logged training and validation figures.

    Args:
        always: print the lines in a terminal too.
    """

    def __init__(self, always: bool = False) -> None:
        self.always = always

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or not (self.always or not sys.stdout.isatty()):
            return
        shown = [f"{k} {float(v):.4f}" for k, v in sorted(trainer.callback_metrics.items())
                 if k.startswith(("train/", "val/")) and not k.endswith("_ci95") and v.numel() == 1]
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        print(f"epoch {trainer.current_epoch + 1}{epochs} (step {trainer.global_step}): " + ", ".join(shown), flush=True)

