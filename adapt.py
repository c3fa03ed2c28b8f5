#!/usr/bin/env python
"""Adapt a meta-trained checkpoint to a new task given as a labelled image folder.

    python adapt.py --ckpt_path runs/search_quick/version_0/checkpoints/last.ckpt --data_root my_task/
    python adapt.py --ckpt_path ... --data_root my_task/ --warm_start false   # the comparison
    python adapt.py --ckpt_path ... --data_root my_task/ --accelerator cpu    # CPU even with a GPU
    python adapt.py --help                                                    # every setting

``--data_root`` holds one folder per class, ``my_task/<class>/<image>`` (PNG, JPEG, BMP, GIF;
any number of classes, at least 2 images each). Each class is split into train and validation
(``--val_fraction``, seeded). Then:

1. a short architecture search on the task: ``--budget`` real scorings of the project's
   evolutionary search, each fine-tuning a candidate from the meta-weights for a few steps
   on part of the train split and measuring it on another part. Warm start (default): the
   initial population is the checkpoint's meta-population and the meta-trained predictor
   screens offspring (when it was trusted). ``--warm_start false``: the same budget and
   meta-weights, a random initial population and no predictor.
2. the best architecture is fine-tuned from the meta-weights on the whole train split and its
   validation accuracy reported, with the wall time of both phases.

``--accelerator`` is ``auto`` by default, as for ``train.py`` and ``eval.py`` (Lightning's
default): the first CUDA device when there is one, else the CPU; ``cpu`` or ``gpu``/``cuda``
choose. On CUDA the scorings run their tasks vectorised (see ``lightning_metanas/maml.py``).

Prints one line, ``adapt: warm-start search of N scorings in Xs, fine-tune in Ys: validation
accuracy Z% on C classes (n_val images), architecture <arch>``, and with ``--out`` writes the
result as JSON. A bad input stops it with one line ``error: <what to change>`` (exit status
2). The checkpoint is loaded with ``torch.load(weights_only=True)``: nothing in it is executed.
See ``lightning_metanas/adaptation.py`` for the details.
"""
from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional

import torch
from jsonargparse import ArgumentParser

from lightning_metanas.adaptation import AdaptConfig, adapt
from lightning_metanas.checkpoints import CheckpointError, data_state, read_checkpoint, search_state
from lightning_metanas.data.folder import list_image_folder, load_image_folder, split_image_folder
from lightning_metanas.errors import SettingsError, run_main
from lightning_metanas.module import MetaNASModule


def parse(args: Optional[list[str]] = None):
    parser = ArgumentParser(description="Adapt a meta-trained lightning_metanas checkpoint to a labelled image folder.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="Meta-trained checkpoint (.ckpt).")
    parser.add_argument("--data_root", type=str, required=True,
                        help="Labelled image folder: data_root/<class>/<image>.")
    parser.add_argument("--image_size", type=Optional[int], default=None,
                        help="Side the images are resized to (default: the checkpoint's).")
    parser.add_argument("--channels", type=Optional[int], default=None,
                        help="1 (grayscale) or 3 (RGB); must match the checkpoint (default: its value).")
    parser.add_argument("--invert", type=Optional[bool], default=None,
                        help="Store 1 - x (ink = 1 for dark-on-light drawings; default: as the "
                             "checkpoint's meta-training data, e.g. true for Omniglot).")
    parser.add_argument("--val_fraction", type=float, default=0.25,
                        help="Share of each class held out for the final validation accuracy.")
    parser.add_argument("--out", type=Optional[str], default=None, help="Write the result as JSON here.")
    parser.add_argument("--accelerator", type=str, default="auto",
                        help="auto (a CUDA GPU when there is one, else the CPU), cpu, or gpu/cuda.")
    # every field of AdaptConfig is a flag of the same name, with its type and its docstring
    parser.add_class_arguments(AdaptConfig, None, instantiate=False)
    return parser.parse_args(args)


def accelerator_device(accelerator: str) -> torch.device:
    """``--accelerator`` as a device: ``auto`` takes CUDA when it is available."""
    name = accelerator.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise SettingsError(f"--accelerator {accelerator}: no CUDA device is available here; use --accelerator cpu")
        return torch.device("cuda")
    raise SettingsError(f"--accelerator must be auto, cpu, gpu or cuda, got {accelerator!r}")


def main(args: Optional[list[str]] = None) -> dict:
    cli = parse(args)
    settings = {field.name: cli[field.name] for field in fields(AdaptConfig)}
    config = AdaptConfig(**settings)
    if not Path(cli.ckpt_path).is_file():
        raise CheckpointError(f"--ckpt_path {cli.ckpt_path}: no such file")
    list_image_folder(cli.data_root)  # layout errors before the checkpoint is read
    checkpoint = read_checkpoint(cli.ckpt_path)
    hparams, state = checkpoint["hyper_parameters"], data_state(checkpoint)
    data = state.get("settings") or {}
    image_size = cli.image_size or data.get("image_size") or hparams.get("image_size", 28)
    model_channels = int(hparams.get("image_channels", 1))
    channels = model_channels if cli.channels is None else cli.channels
    if channels != model_channels:
        raise SettingsError(
            f"--channels {channels}: the checkpoint's SuperNet takes {model_channels}-channel "
            f"images; use --channels {model_channels}"
        )
    invert = cli.invert if cli.invert is not None else data.get("invert", data.get("dataset") == "omniglot")
    # the meta-training data's per-channel normalisation, so the task looks like it
    normalization = state.get("normalization") or {}
    images = load_image_folder(cli.data_root, image_size=image_size, channels=channels, invert=invert,
                               mean=normalization.get("mean"), std=normalization.get("std"))
    train, val = split_image_folder(images, cli.val_fraction, seed=config.seed)

    device = accelerator_device(cli.accelerator)
    model = MetaNASModule.load_from_checkpoint(cli.ckpt_path, map_location="cpu", weights_only=True)
    result = adapt(model.supernet.to(device), model.meta, train, val, config, search_state(checkpoint))

    mode = "warm-start" if config.warm_start else "from-scratch"
    print(
        f"adapt: {mode} search of {result.scorings} scorings in {result.search_seconds:.1f}s, "
        f"fine-tune in {result.finetune_seconds:.1f}s: validation accuracy "
        f"{100 * result.val_acc:.2f}% on {images.num_classes} classes ({len(val.labels)} images), "
        f"architecture {result.arch}"
    )
    record = {
        "arch": result.arch.to_dict(),
        "val_acc": result.val_acc,
        "search_seconds": result.search_seconds,
        "finetune_seconds": result.finetune_seconds,
        "warm_start": config.warm_start,
        "budget": config.budget,
        "seed": config.seed,
        "scorings": result.scorings,
        "search_score": result.search_score,
        "generations": result.generations,
        "predictor_used": result.predictor_used,
        "classes": images.num_classes,
        "n_train": len(train.labels),
        "n_val": len(val.labels),
        "init": config.init,
        "head": result.head,
        "image_size": image_size,
        "channels": channels,
        "invert": invert,
        "device": str(device),
        "normalization": normalization or None,
        "settings": settings,
        "ckpt_path": cli.ckpt_path,
        "data_root": cli.data_root,
        "scored": result.scored,
    }
    if cli.out:
        out = Path(cli.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")
    return record


def cli_main(args: Optional[list[str]] = None) -> int:
    """The command line: a bad input is one line ``error: <message>`` on stderr and exit
    status 2 (as for a usage error the parser reports), never a traceback."""
    return run_main(lambda: main(args), status=2)


if __name__ == "__main__":
    sys.exit(cli_main())
