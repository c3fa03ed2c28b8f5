#!/usr/bin/env python
"""Meta-train the SuperNet, then meta-test the best checkpoint.

    python train.py                                   # the default configuration
    python train.py --config configs/quick.yaml       # ~10 minutes on 2 CPU cores
    python train.py --config configs/omniglot_5w1s.yaml --trainer.max_epochs=3
    python train.py --config configs/search_quick.yaml --search.population_size=6   # a search
    python train.py --help                            # every setting (--search.help: the search's)

Resume a stopped run (killed, SIGTERM, out of time) with the settings it ran with:

    python train.py --config runs/NAME/version_N/config.yaml --ckpt_path=last

``last`` is the newest ``last.ckpt`` under the logger's ``save_dir/name`` (rewritten at the
end of every epoch, after that epoch's search generation); the resumed run continues at the
next epoch and generation and logs into a new ``version_N+1``, whose ``search_history.json``
holds every generation (see RELIABILITY.md).

A bad setting or input file stops the run before any data is read or any step taken, with one
line ``error: <what to change>`` and exit status 1. A non-finite meta-loss or meta-gradient
stops it before the optimiser steps on it (``callbacks/guards.py``), keeping the last good
checkpoint; SIGTERM stops it after the current batch (exit status 143) without writing a
half-epoch checkpoint.
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

# `python train.py --help` answers from docs/train_help.txt, written from the live parser by
# scripts/write_help.py and held equal to it by tests/test_train.py: importing Lightning to
# build the parser takes 4-8 s here, the file a few milliseconds.
HELP_FILE = Path(__file__).resolve().parent / "docs" / "train_help.txt"
if __name__ == "__main__" and sys.argv[1:] in (["--help"], ["-h"]) and HELP_FILE.is_file() \
        and not os.environ.get("LIGHTNING_METANAS_LIVE_HELP"):
    sys.stdout.write(HELP_FILE.read_text())
    sys.exit(0)
from typing import Iterator, Optional

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from callbacks.evolution import EvolutionCallback
from callbacks.guards import FiniteLossGuard, NonFiniteLossError
from callbacks.progress import EpochLines
from callbacks.tracking import SearchTrackingCallback
from lightning_metanas.cli import build_cli, resolve_ckpt_path
from lightning_metanas.errors import SettingsError
from lightning_metanas.quiet import silence_third_party_noise
from lightning_metanas.report import TEST_RESULT, test_result

NORM_MEANING = {
    "transductive": "each query batch normalised with its own statistics, MAML's protocol",
    "support": "each image alone, normalised with the support images' statistics, as deployed",
}
SIGTERM_EXIT = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM
RESUME_HINT = "resume with the run's settings and --ckpt_path=last"


class RunStopped(Exception):
    """The run stopped on a fault or a signal; its message says what was kept."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def last_good_checkpoint(trainer: pl.Trainer, resumed_from: Optional[str]) -> Optional[str]:
    """The newest checkpoint file this run wrote, else the one it resumed from."""
    written = {
        Path(p) for cb in trainer.checkpoint_callbacks
        for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))
        if p and Path(p).is_file()
    }
    if written:
        return str(max(written, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt")))
    return resumed_from


@contextmanager
def stopped_cleanly(trainer: pl.Trainer, resumed_from: Optional[str]) -> Iterator[None]:
    """Turns a numerical fault or SIGTERM during ``fit`` into a ``RunStopped`` that names the
    last good checkpoint (Lightning has already torn the run down; nothing was written)."""
    try:
        yield
    except NonFiniteLossError as err:
        kept = last_good_checkpoint(trainer, resumed_from)
        raise RunStopped(
            f"{err}; last good checkpoint: {kept or 'none (no epoch had ended)'}"
        ) from None
    except SIGTERMException:
        kept = last_good_checkpoint(trainer, resumed_from)
        raise RunStopped(
            f"stopped by SIGTERM at global step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}); kept: {kept or 'no checkpoint (no epoch had ended)'}, the "
            f"end of the last complete epoch (steps after it are redone on resume); {RESUME_HINT}",
            exit_code=SIGTERM_EXIT,
        ) from None


def main(args: list[str] | None = None) -> None:
    silence_third_party_noise()
    cli = build_cli(
        args, forced_callbacks={"finite_guard": FiniteLossGuard, "tracking": SearchTrackingCallback,
                                "epoch_lines": EpochLines},
        search_callback=EvolutionCallback,
    )
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    ckpt_path = resolve_ckpt_path(cli.config.ckpt_path, trainer, model)  # before any data is read
    if ckpt_path and trainer.is_global_zero:
        print(f"resuming from {ckpt_path}", flush=True)
    with stopped_cleanly(trainer, ckpt_path):
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    if not cli.config.test:
        return
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.test(model, datamodule=data, ckpt_path=best or None, weights_only=True)
    if trainer.is_global_zero and "test" in model.last_result:
        result, arch = model.last_result["test"], model.evaluated_architecture()
        print(
            f"meta-test: {100 * result['acc']:.2f}% ± {100 * result['acc_ci95']:.2f}% over "
            f"{result['tasks']:.0f} tasks "
            f"({data.ways}-way {data.shots}-shot, {result['norm']} normalisation), architecture {arch}"
            + (f", checkpoint {best}" if best else "")
        )
        other = "support" if result["norm"] == "transductive" else "transductive"
        print(f"  under {other} normalisation: {100 * result[f'acc_{other}']:.2f}% ± "
              f"{100 * result[f'acc_{other}_ci95']:.2f}% ({NORM_MEANING[other]})")
        if best:  # the best-validation checkpoint, not last.ckpt: eval.py on it repeats these figures
            print(f"  the same figures again: python eval.py --ckpt_path {best} --data.test_tasks {result['tasks']:.0f}")
        if trainer.checkpoint_callback and trainer.checkpoint_callback.dirpath and not trainer.fast_dev_run:
            # next to config.yaml and checkpoints/, for `python -m lightning_metanas.report`
            record = test_result(result, data.ways, data.shots, arch) | {"checkpoint": best}
            path = Path(trainer.checkpoint_callback.dirpath).parent / TEST_RESULT
            path.write_text(json.dumps(record, indent=2) + "\n")
    for logger in trainer.loggers:  # close W&B runs now, not from an exit hook that may be cut short
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()


def settings_error(err: BaseException) -> Optional[SettingsError]:
    """``err`` if it is a user's mistake, or the ``SettingsError`` it was raised from
    (jsonargparse wraps errors raised while it builds nested settings, e.g. a callback's)."""
    seen: set[int] = set()
    cause: Optional[BaseException] = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, SettingsError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__
    return None


def cli_main(args: list[str] | None = None) -> int:
    """The command line: runs ``main`` and turns what stops it into ``error: <message>`` on
    stderr and an exit status (1: a bad setting or a numerical fault, 143: SIGTERM); a
    usage error from the parser exits with status 2 before this."""
    try:
        main(args)
    except RunStopped as err:  # a fault or a signal: what happened and what was kept
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except SIGTERMException:  # outside fit (meta-testing): nothing to keep
        print("error: stopped by SIGTERM", file=sys.stderr)
        return SIGTERM_EXIT
    except Exception as err:
        mistake = settings_error(err)
        if mistake is None:
            raise
        print(f"error: {mistake}", file=sys.stderr)  # a user's mistake: what to change
        return 1
    return 0


if __name__ == "__main__":  # the guard lets ddp_spawn re-import this file safely
    sys.exit(cli_main())
