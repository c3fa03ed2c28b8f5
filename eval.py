#!/usr/bin/env python
"""Meta-test a checkpoint: adapt to each test task, report mean accuracy with its 95% interval.

    python eval.py --ckpt_path runs/quick/version_0/checkpoints/epoch005.ckpt
    python eval.py --ckpt_path .../last.ckpt --model.eval_arch .../best_arch.json   # one architecture
    python eval.py --ckpt_path ... --model.meta.norm support                       # one image at a time
    python eval.py --ckpt_path ... --split val --out val.json                      # validation tasks

Every query image is classified twice from the same adapted weights, and both figures are
printed: ``transductive`` (each query batch normalised with its own statistics, MAML's protocol)
and ``support`` (each image alone, normalised with the adapted support images' statistics, as a
deployed model classifies); ``--model.meta.norm`` says which one is the headline (default: the
one the run meta-trained with).

The task distribution (dataset, ways, shots, queries, split) is read back from the checkpoint;
the tasks are seeded (``--data.seed``, default the run's), so the same command gives the same
number. Checkpoints are loaded with ``torch.load(weights_only=True)``: nothing in them is
executed. Flags have the names train.py gives the same settings (README, "One name per
setting").
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal, Optional

import pytorch_lightning as pl
from jsonargparse import ArgumentParser

from lightning_metanas.checkpoints import CheckpointError, data_settings, read_checkpoint
from lightning_metanas.commands import add_shared, check_retired, device_for
from lightning_metanas.data import EpisodicDataModule
from lightning_metanas.errors import SettingsError, require_int, run_main
from lightning_metanas.module import MetaNASModule

RETIRED = {"--root": "--data.root", "--arch": "--model.eval_arch", "--eval_inner_steps": "--model.meta.eval_inner_steps",
           "--seed": "--data.seed", "--accelerator": "--trainer.accelerator", "--test_tasks": "--data.test_tasks",
           "--tasks": "--data.test_tasks (or --data.val_tasks with --split val)", "--norm": "--model.meta.norm"}


def parse(args: Optional[list[str]] = None):
    check_retired(sys.argv[1:] if args is None else args, RETIRED)
    parser = ArgumentParser(description="Meta-test a lightning_metanas checkpoint.")
    add_shared(parser, "--ckpt_path", "--data.root", "--model.eval_arch", "--model.meta.eval_inner_steps",
               "--model.meta.norm", "--trainer.accelerator", "--out", required=("--ckpt_path",),
               model_eval_arch="Architecture JSON to meta-test (default: the run's evaluated architecture).",
               data_root="Data folder, if it moved since training.")
    parser.add_argument("--split", type=Literal["test", "val"], default="test",
                        help="Which classes' tasks: the test split (meta-test) or the validation split.")
    parser.add_argument("--data.test_tasks", type=int, default=600, help="Number of test tasks.")
    parser.add_argument("--data.val_tasks", type=int, default=600, help="Number of validation tasks (--split val).")
    parser.add_argument("--data.seed", type=Optional[int], default=None, help="Task sampling seed (default: the run's).")
    return parser.parse_args(args)


def main(args: Optional[list[str]] = None) -> dict[str, float]:
    config = parse(args)
    device_for(config.trainer.accelerator)  # no GPU where one is asked for: one line, before any work
    checkpoint = read_checkpoint(config.ckpt_path)
    settings = data_settings(checkpoint)
    if settings is None:
        raise CheckpointError(f"--ckpt_path {config.ckpt_path} holds no data settings")
    tasks = config.data.test_tasks if config.split == "test" else config.data.val_tasks
    settings[f"{config.split}_tasks"] = require_int(f"--data.{config.split}_tasks", tasks)
    if config.data.seed is not None:
        settings["seed"] = config.data.seed
    if config.data.root is not None:
        settings["root"] = config.data.root
    data = EpisodicDataModule(**settings)
    model = MetaNASModule.load_from_checkpoint(config.ckpt_path, map_location="cpu", weights_only=True)
    expected = int(model.hparams.get("image_channels", 1))
    if data.image_channels != expected:
        raise SettingsError(
            f"the {data.spec.title} images at {data.root} have {data.image_channels} channel(s), "
            f"the checkpoint's SuperNet takes {expected}: meta-test it on the data it was "
            "meta-trained on (--data.root)"
        )
    if config.model.eval_arch:
        model.eval_arch = model.load_architecture(config.model.eval_arch)
    if config.model.meta.eval_inner_steps is not None:
        model.meta.eval_inner_steps = require_int("--model.meta.eval_inner_steps", config.model.meta.eval_inner_steps)
    if config.model.meta.norm is not None:
        model.adapter.norm = config.model.meta.norm
    trainer = pl.Trainer(accelerator=config.trainer.accelerator, devices=1, logger=False, inference_mode=False,
                         enable_progress_bar=False, enable_model_summary=False)
    if config.split == "val":
        trainer.validate(model, datamodule=data, verbose=False)
    else:
        trainer.test(model, datamodule=data, verbose=False)
    result = model.last_result[config.split]
    name = "meta-test" if config.split == "test" else "meta-validation"
    print(
        f"{name}: {100 * result['acc']:.2f}% ± {100 * result['acc_ci95']:.2f}% "
        f"(95% interval) over {result['tasks']:.0f} tasks, {data.ways}-way {data.shots}-shot, "
        f"{model.meta.eval_inner_steps} adaptation steps, {model.adapter.norm} normalisation, "
        f"architecture {model.evaluated_architecture()}"
    )
    other = "support" if model.adapter.norm == "transductive" else "transductive"
    print(f"  under {other} normalisation: {100 * result[f'acc_{other}']:.2f}% ± {100 * result[f'acc_{other}_ci95']:.2f}%")
    if config.out:
        record = dict(result, split=config.split, steps=model.meta.eval_inner_steps,
                      arch=model.evaluated_architecture().to_dict(), checkpoint=str(config.ckpt_path))
        Path(config.out).write_text(json.dumps(record, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
