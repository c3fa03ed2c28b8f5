"""Progress of work that Lightning's own bars do not cover (a generation's scoring)."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar


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
        task = progress.add_task(f"[{bar.theme.description}]{description}", total=total)

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
