#!/usr/bin/env python
"""Adapt a meta-trained checkpoint to a new task given as a labelled image folder, and save
the adapted model.

    python adapt.py --ckpt_path runs/search_quick/version_0/checkpoints/last.ckpt \\
        --data.root my_task/ --save my_task.model.pt             # the checkpoint's architecture
    python adapt.py --ckpt_path ... --data.root my_task/ --model.eval_arch other_arch.json
    python adapt.py --ckpt_path ... --data.root my_task/ --search.on_task true   # search on the task
    python adapt.py --ckpt_path ... --data.root my_task/ --search.on_task true --search.warm_start false
    python adapt.py --help                                                         # every setting

``--data.root`` holds one folder per class, ``my_task/<class>/<image>`` (PNG, JPEG, BMP, GIF;
any number of classes). Each class is split into train and held-out images
(``--val_fraction``, seeded): a class needs at least 2 images, 3 when the architecture is
searched on the task. Then (``lightning_metanas/adaptation.py``):

1. the architecture: by default the checkpoint's (after a meta-search, its best: chosen across
   many tasks, which a few images of one task cannot overrule reliably); ``--model.eval_arch``
   another; or, with ``--search.on_task true``, the best of ``--search.scorings`` real scorings
   of the project's evolutionary search on the train images, warm-started from the
   checkpoint's meta-population and predictor (``--search.warm_start false``: from scratch);
2. its weights fine-tuned from the meta-weights on the train images (``--finetune.*``), and
   its BatchNorm statistics fixed to the train images', so the saved model classifies one
   image at a time;
3. the held-out accuracy, each image alone (what the saved model does) and as one batch
   (the meta-test's transductive protocol), and the model saved (``--save``, default next to
   ``--out``) for ``predict.py`` and ``python -m lightning_metanas.export``.

Folders from site are imbalanced and have wrong labels, so before adapting it prints what it
found (``data:`` lines, also in ``--out``): images per class and the imbalance ratio, files
copied byte for byte into two classes, classes with too few images, files that do not decode
(skipped). Fine-tuning weighs classes equally (``--finetune.balanced``). After adapting it
lists the train images whose label the meta-learned features disagree with (``suspects:``,
``--suspects.*``; ``--drop_suspects`` adapts again without them: ``auto``, the default, when they
are 10% of the images or more), the held-out recall per
class and the confusion matrix (drawn next to the saved model, ``<model>.confusion.png``).

Flags have the names train.py gives the same settings (README, "One name per setting"). A bad
input stops with one line ``error: <what to change>`` and exit status 1. The checkpoint is
loaded with ``torch.load(weights_only=True)``: nothing in it is executed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal, Optional, Union

from jsonargparse import ArgumentParser

from lightning_metanas.adapted_model import Preprocessing
from lightning_metanas import heldout
from lightning_metanas.adaptation import (MIN_IMAGES_GIVEN, MIN_IMAGES_SEARCH, AdaptResult, FinetuneConfig,
                                          TaskSearchConfig, adapt, check_images_per_class)
from lightning_metanas.checkpoints import CheckpointError, data_state, read_checkpoint, search_state
from lightning_metanas.commands import add_shared, check_retired, device_for
from lightning_metanas.data_summary import DataSummary, decode_folder, named, split_with_indices, survey_folder
from lightning_metanas.errors import SettingsError, require_int, run_main
from lightning_metanas.module import MetaNASModule
from lightning_metanas.suspects import SuspectConfig

RETIRED = {
    "--data_root": "--data.root", "--image_size": "--data.image_size", "--channels": "--data.channels",
    "--invert": "--data.invert", "--accelerator": "--trainer.accelerator", "--seed": "--seed_everything",
    "--score_steps": "--model.meta.eval_inner_steps", "--arch": "--model.eval_arch", "--budget": "--search.scorings",
    "--warm_start": "--search.warm_start", "--population_size": "--search.population_size",
    "--offspring": "--search.offspring", "--score_tasks": "--search.tasks_per_score",
    "--score_shots": "--search.score_shots", "--score_queries": "--search.score_queries",
    "--finetune_steps": "--finetune.steps", "--lr": "--finetune.lr", "--optimizer": "--finetune.optimizer",
    "--batch_size": "--finetune.batch_size", "--init": "--finetune.init", "--head": "--finetune.head",
}


def parse(args: Optional[list[str]] = None):
    check_retired(sys.argv[1:] if args is None else args, RETIRED)
    parser = ArgumentParser(description="Adapt a meta-trained lightning_metanas checkpoint to a labelled image folder.")
    add_shared(parser, "--ckpt_path", "--data.root", "--model.eval_arch", "--model.meta.eval_inner_steps",
               "--trainer.accelerator", "--seed_everything", "--out", required=("--ckpt_path", "--data.root"),
               data_root="Labelled image folder: root/<class>/<image>.",
               model_eval_arch="Adapt this architecture (JSON, e.g. a meta-search's best_arch.json), no search.",
               model_meta_eval_inner_steps="Adaptation steps of a candidate's scoring (default: the checkpoint's).",
               seed_everything="Seed of the split, the search, the scoring partitions and the fine-tuning.")
    parser.add_argument("--data.image_size", type=Optional[int], default=None,
                        help="Side the images are resized to (default: the checkpoint's).")
    parser.add_argument("--data.channels", type=Optional[int], default=None,
                        help="1 (grayscale) or 3 (RGB); must match the checkpoint (default: its value).")
    parser.add_argument("--data.invert", type=Optional[bool], default=None,
                        help="Store 1 - x (ink = 1 for dark-on-light drawings; default: as the checkpoint's "
                             "meta-training data, e.g. true for Omniglot).")
    parser.add_argument("--val_fraction", type=float, default=0.25,
                        help="Share of each class held out for the final accuracy.")
    parser.add_argument("--save", type=Optional[str], default=None,
                        help="Write the adapted model here (default: next to --out, <out>.model.pt).")
    parser.add_class_arguments(TaskSearchConfig, "search", instantiate=False)
    parser.add_class_arguments(FinetuneConfig, "finetune", instantiate=False)
    parser.add_class_arguments(SuspectConfig, "suspects", instantiate=False, skip={"drop"})
    parser.add_argument("--drop_suspects", type=Union[bool, Literal["auto"]], default=SuspectConfig.drop,
                        help="Adapt again from the meta-weights without the suspect images: true, false, or "
                             "auto (when they are at least --suspects.auto_share of the training images).")
    return parser.parse_args(args)


def minimum_images(searched: bool) -> tuple[int, str]:
    """Images a class needs, and why."""
    if searched:
        return MIN_IMAGES_SEARCH, "2 to fine-tune and score candidates on, 1 held out; without --search.on_task 2 suffice"
    return MIN_IMAGES_GIVEN, "one for training, one for validation"


def report_suspects(result: AdaptResult, suspects: SuspectConfig, summary: DataSummary, paths: list[str],
                    train_at: list[int], n_train: int) -> list[dict]:
    """Print the suspects (most suspect first) and return them as ``--out`` records them."""
    scores = result.suspect_scores[suspects.score]
    rows = [{"file": named(paths, [train_at[i]], summary.root)[0], "score": float(scores[i])} for i in result.suspects]
    listed = ": " + ", ".join(f"{r['file']} ({r['score']:.2f})" for r in rows) if rows else ""
    setting = str(suspects.drop).lower()
    if suspects.drop == "auto":
        setting += f": {100 * suspects.auto_share:g}% of the images or more"
    dropped = (f"; adapted again without them (--drop_suspects {setting})" if result.dropped else
               f"; kept (--drop_suspects {setting}); --drop_suspects true adapts again without them" if rows else "")
    over = f" over {suspects.layers} layers" if suspects.score == "prototype" and suspects.layers > 1 else ""
    print(f"suspects: {len(rows)} of {n_train} training images look filed under the wrong class "
          f"(--suspects.score {suspects.score}{over} above {suspects.threshold:g}){dropped}{listed}")
    return rows


def main(args: Optional[list[str]] = None) -> dict:
    cli = parse(args)
    search, tuning = TaskSearchConfig(**vars(cli.search)), FinetuneConfig(**vars(cli.finetune))
    seed = require_int("--seed_everything", cli.seed_everything, 0)
    if not Path(cli.ckpt_path).is_file():
        raise CheckpointError(f"--ckpt_path {cli.ckpt_path}: no such file")
    device = device_for(cli.trainer.accelerator)
    suspects = SuspectConfig(**vars(cli.suspects), drop=cli.drop_suspects)
    minimum, why = minimum_images(search.on_task and not cli.model.eval_arch)
    summary = survey_folder(cli.data.root)  # layout errors before the checkpoint is read
    if summary.too_few(minimum):
        print("\n".join(summary.lines(minimum)))
        summary.check(minimum, why)
    checkpoint = read_checkpoint(cli.ckpt_path)
    hparams, state = checkpoint["hyper_parameters"], data_state(checkpoint)
    data = state.get("settings") or {}
    image_size = cli.data.image_size or data.get("image_size") or hparams.get("image_size", 28)
    model_channels = int(hparams.get("image_channels", 1))
    channels = model_channels if cli.data.channels is None else cli.data.channels
    if channels != model_channels:
        raise SettingsError(f"--data.channels {channels}: the checkpoint's SuperNet takes {model_channels}-channel "
                            f"images; use --data.channels {model_channels}")
    invert = cli.data.invert if cli.data.invert is not None else data.get("invert", data.get("dataset") == "omniglot")
    # the meta-training data's per-channel normalisation, so the task looks like it
    normalization = state.get("normalization") or {}
    preprocessing = Preprocessing(image_size, channels, bool(invert), normalization.get("mean"), normalization.get("std"))
    images, paths = decode_folder(summary, preprocessing)
    print("\n".join(summary.lines(minimum)))
    summary.check(minimum, why)
    model = MetaNASModule.load_from_checkpoint(cli.ckpt_path, map_location="cpu", weights_only=True)
    if cli.model.eval_arch:
        arch = model.load_architecture(cli.model.eval_arch)
    else:  # the checkpoint's own (a meta-search's best), unless a search on the task is asked for
        arch = None if search.on_task else model.evaluated_architecture()
    check_images_per_class(images, searched=arch is None)
    train, val, train_at, val_at = split_with_indices(images, cli.val_fraction, seed)
    result = adapt(model.supernet.to(device), model.meta, train, val, preprocessing, search, tuning,
                   search_state(checkpoint), arch, seed, cli.model.meta.eval_inner_steps, suspects)

    given = "the architecture of --model.eval_arch" if cli.model.eval_arch else "the checkpoint's architecture"
    how = (given if not result.searched else
           f"{'warm-start' if search.warm_start else 'from-scratch'} search of {len(result.search.scored)} "
           f"scorings in {result.search.seconds:.1f}s")
    print(f"adapt: {how}, fine-tune in {result.finetune_seconds:.1f}s: held-out accuracy "
          f"{100 * result.val_acc:.2f}% one image at a time ({100 * result.val_acc_transductive:.2f}% as one batch) "
          f"on {images.num_classes} classes ({len(val.labels)} images), architecture {result.arch}")
    suspect_rows = report_suspects(result, suspects, summary, paths, train_at, len(train.labels))
    matrix = heldout.confusion_matrix(result.predictions, val.labels, images.num_classes)
    print("\n".join(heldout.lines(matrix, images.class_names)))
    record = {
        "arch": result.arch.to_dict(), "val_acc": result.val_acc, "val_acc_transductive": result.val_acc_transductive,
        "searched": result.searched, "finetune_seconds": result.finetune_seconds, "seed": seed,
        "classes": images.num_classes, "class_names": list(images.class_names), "n_train": len(train.labels),
        "n_val": len(val.labels), "head": result.head, "preprocessing": vars(preprocessing), "device": str(device),
        "ckpt_path": cli.ckpt_path, "data_root": cli.data.root, "search_settings": vars(search),
        "finetune_settings": vars(result.finetune), "data": summary.to_dict(minimum),
        "suspects": suspect_rows, "suspect_settings": vars(suspects), "suspects_dropped": result.dropped,
        "held_out_recall": dict(zip(images.class_names, heldout.recall_per_class(matrix))),
        "balanced_acc": heldout.balanced_accuracy(matrix), "confusion": matrix.tolist(),
        "held_out_files": named(paths, val_at, summary.root),
    }
    if result.search is not None:
        record |= {"search_seconds": result.search.seconds, "scorings": len(result.search.scored),
                   "search_score": result.search.best_score, "generations": result.search.generations,
                   "predictor_used": result.search.predictor_used, "warm_start": search.warm_start,
                   "scored": result.search.scored}
    save = cli.save or (str(Path(cli.out).with_suffix("")) + ".model.pt" if cli.out else None)
    if save:
        result.model.info = {k: record[k] for k in ("val_acc", "val_acc_transductive", "ckpt_path", "data_root",
                                                    "n_train", "seed")}
        record["model"] = str(result.model.save(save))
        record["confusion_plot"] = str(heldout.plot_confusion(matrix, images.class_names,
                                                             Path(save).with_suffix(".confusion.png")))
        print(f"saved the adapted model to {record['model']} (predict.py --model {record['model']} <images>)")
    if cli.out:
        out = Path(cli.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    sys.exit(run_main(main))
