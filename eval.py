#!/usr/bin/env python
"""Meta-test a checkpoint: adapt to each test task, report mean accuracy with its 95% interval.

    python eval.py --ckpt_path runs/quick/version_0/checkpoints/last.ckpt
    python eval.py --ckpt_path .../last.ckpt --arch .../best_arch.json   # one architecture
    python eval.py --ckpt_path .../best.ckpt --norm support               # one image at a time
    python eval.py --ckpt_path .../best.ckpt --split val --out val.json   # validation tasks

``--norm transductive`` (MAML's protocol) normalises each query batch with its own statistics;
``--norm support`` normalises every query image with the statistics of the task's adapted
support images, so each is classified alone, as a deployed model classifies (inductive). The
default is what the run meta-trained with (``model.meta.norm``).

The task distribution (dataset, ways, shots, queries, split) is read back from the checkpoint;
the test tasks are seeded, so the same command gives the same number. Checkpoints are loaded
with ``torch.load(weights_only=True)``: nothing in them is executed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal, Optional

import pytorch_lightning as pl
from jsonargparse import ArgumentParser

from lightning_metanas.checkpoints import CheckpointError, data_settings, read_checkpoint
from lightning_metanas.data import EpisodicDataModule
from lightning_metanas.errors import SettingsError, require_int, run_main
from lightning_metanas.meta_config import Norm
from lightning_metanas.module import MetaNASModule


def parse(args: Optional[list[str]] = None):
    parser = ArgumentParser(description="Meta-test a lightning_metanas checkpoint.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="Checkpoint (.ckpt) to meta-test.")
    parser.add_argument("--arch", type=Optional[str], default=None,
                        help="Architecture JSON to meta-test (default: the run's evaluated architecture).")
    parser.add_argument("--split", type=Literal["test", "val"], default="test",
                        help="Which classes' tasks: the test split (meta-test) or the validation split.")
    parser.add_argument("--tasks", type=int, default=600, help="Number of tasks of the split.")
    parser.add_argument("--norm", type=Optional[Norm], default=None,
                        help="BatchNorm statistics of a query image: transductive (the query batch's) or "
                             "support (the adapted support images', each image alone); default: the run's. "
                             "The other is printed too.")
    parser.add_argument("--out", type=Optional[str], default=None, help="Also write the result as JSON here.")
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
    require_int("--tasks", config.tasks)
    settings[f"{config.split}_tasks"] = config.tasks
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
        model.meta.eval_inner_steps = require_int("--eval_inner_steps", config.eval_inner_steps)
    if config.norm is not None:
        model.adapter.norm = config.norm
    trainer = pl.Trainer(accelerator=config.accelerator, devices=1, logger=False, inference_mode=False,
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
        record = dict(result, split=config.split, norm=model.adapter.norm, steps=model.meta.eval_inner_steps,
                      arch=model.evaluated_architecture().to_dict(), checkpoint=str(config.ckpt_path))
        Path(config.out).write_text(json.dumps(record, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
