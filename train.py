#!/usr/bin/env python
"""Meta-train the SuperNet, then meta-test the best checkpoint.

    python train.py                                   # the default configuration
    python train.py --config configs/quick.yaml       # ~10 minutes on 2 CPU cores
    python train.py --config configs/omniglot_5w1s.yaml --trainer.max_epochs=3
    python train.py --help                            # every setting
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from lightning_metanas.cli import build_cli
from lightning_metanas.errors import SettingsError


def main(args: list[str] | None = None) -> None:
    cli = build_cli(args)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, datamodule=data, ckpt_path=cli.config.ckpt_path, weights_only=True)
    if not cli.config.test:
        return
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.test(model, datamodule=data, ckpt_path=best or None, weights_only=True)
    if trainer.is_global_zero and "test" in model.last_result:
        result, arch = model.last_result["test"], model.evaluated_architecture()
        print(
            f"meta-test: {100 * result['acc']:.2f}% ± {100 * result['acc_ci95']:.2f}% over "
            f"{result['tasks']:.0f} tasks "
            f"({data.ways}-way {data.shots}-shot), architecture {arch}"
            + (f", checkpoint {best}" if best else "")
        )
        if trainer.checkpoint_callback and trainer.checkpoint_callback.dirpath and not trainer.fast_dev_run:
            # next to config.yaml and checkpoints/, for `python -m lightning_metanas.report`
            record = {k: result[k] for k in ("acc", "acc_ci95")} | {"tasks": int(result["tasks"])}
            record |= {"ways": data.ways, "shots": data.shots, "arch": arch.to_dict(), "checkpoint": best}
            path = Path(trainer.checkpoint_callback.dirpath).parent / "test_result.json"
            path.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":  # the guard lets ddp_spawn re-import this file safely
    try:
        main()
    except SettingsError as err:  # a user's mistake: one line that says what to change
        sys.exit(f"error: {err}")
