#!/usr/bin/env python
"""Meta-test a checkpoint: adapt to each test task, report mean accuracy with its 95% interval.

    python eval.py --ckpt_path runs/quick/version_0/checkpoints/last.ckpt
    python eval.py --ckpt_path .../last.ckpt --arch .../best_arch.json   # one architecture

The task distribution (dataset, ways, shots, queries, split) is read back from the checkpoint;
the test tasks are seeded, so the same command gives the same number. Checkpoints are loaded
with ``torch.load(weights_only=True)``: nothing in them is executed.
"""
from __future__ import annotations

import sys
from typing import Optional

import pytorch_lightning as pl
from jsonargparse import ArgumentParser

from lightning_metanas.checkpoints import CheckpointError, data_settings, read_checkpoint
from lightning_metanas.data import EpisodicDataModule
from lightning_metanas.errors import run_main
from lightning_metanas.module import MetaNASModule


def parse(args: Optional[list[str]] = None):
    parser = ArgumentParser(description="Meta-test a lightning_metanas checkpoint.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="Checkpoint (.ckpt) to meta-test.")
    parser.add_argument("--arch", type=Optional[str], default=None,
                        help="Architecture JSON to meta-test (default: the run's evaluated architecture).")
    parser.add_argument("--test_tasks", type=int, default=600, help="Number of test tasks.")
    parser.add_argument("--eval_inner_steps", type=Optional[int], default=None,
                        help="Adaptation steps per task (default: the run's setting).")
    parser.add_argument("--seed", type=Optional[int], default=None,
                        help="Task sampling seed (default: the run's).")
    parser.add_argument("--root", type=Optional[str], default=None,
                        help="Data folder, if it moved since training.")
    parser.add_argument("--accelerator", type=str, default="auto")
    return parser.parse_args(args)


def main(args: Optional[list[str]] = None) -> dict[str, float]:
    config = parse(args)
    checkpoint = read_checkpoint(config.ckpt_path)
    settings = data_settings(checkpoint)
    if settings is None:
        raise CheckpointError(f"--ckpt_path {config.ckpt_path} holds no data settings")
    settings["test_tasks"] = config.test_tasks
    if config.seed is not None:
        settings["seed"] = config.seed
    if config.root is not None:
        settings["root"] = config.root
    data = EpisodicDataModule(**settings)
    model = MetaNASModule.load_from_checkpoint(config.ckpt_path, map_location="cpu", weights_only=True)
    expected = int(model.hparams.get("image_channels", 1))
    if data.image_channels != expected:
        raise SettingsError(
            f"the {data.spec.title} images at {data.root} have {data.image_channels} channel(s), "
            f"the checkpoint's SuperNet takes {expected}: meta-test it on the data it was "
            "meta-trained on (--root)"
        )
    if config.arch:
        model.eval_arch = model.load_architecture(config.arch)
    if config.eval_inner_steps is not None:
        model.meta.eval_inner_steps = config.eval_inner_steps
    trainer = pl.Trainer(accelerator=config.accelerator, devices=1, logger=False, inference_mode=False)
    trainer.test(model, datamodule=data, verbose=False)
    result = model.last_result["test"]
    print(
        f"meta-test: {100 * result['acc']:.2f}% ± {100 * result['acc_ci95']:.2f}% "
        f"(95% interval) over {result['tasks']:.0f} tasks, {data.ways}-way {data.shots}-shot, "
        f"{model.meta.eval_inner_steps} adaptation steps, architecture {model.evaluated_architecture()}"
    )
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
