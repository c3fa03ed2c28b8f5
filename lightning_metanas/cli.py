"""The command line: LightningCLI with this project's defaults, shared by train.py and adapt.py.

LightningCLI reads every setting from the constructors' type hints, so ``--help`` lists
them, values are type-checked before anything runs, and ``--config`` YAML files compose with
flags (later arguments win). ``run=False``: people type ``python train.py --trainer.x=...``,
not a subcommand.
"""
from __future__ import annotations

from typing import Any, Optional

from jsonargparse import lazy_instance
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger

from lightning_metanas.data import EpisodicDataModule
from lightning_metanas.module import MetaNASModule

TRAINER_DEFAULTS: dict[str, Any] = {
    # Adaptation at validation/test needs gradients; inference mode would forbid them.
    "inference_mode": False,
    "max_epochs": 30,
    "log_every_n_steps": 10,
    # flush often: the CSV file is what people (and the report) read while a run goes on
    "logger": lazy_instance(CSVLogger, save_dir="runs", name="metanas", flush_logs_every_n_steps=10),
}


class MetaNASCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=Optional[str],
            default=None,
            help="Checkpoint to resume meta-training from.",
        )
        parser.add_argument(
            "--test",
            type=bool,
            default=True,
            help="Meta-test the best checkpoint on the test split after training.",
        )
        # Always on (as --checkpoint.* and --last_checkpoint.*): the best checkpoint by
        # validation accuracy, and last.ckpt, rewritten every epoch to resume from. Two
        # callbacks, because Lightning 2.6 writes ``save_last`` only in epochs that also
        # improved the monitored metric, which would resume a run from a stale epoch.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                # after the search callback's generation, so the checkpoint holds its result
                "checkpoint.save_on_train_epoch_end": True,
            }
        )
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.filename": "last",
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.save_on_train_epoch_end": True,
                "last_checkpoint.enable_version_counter": False,
            }
        )
        # The data decides what the network's input and output look like.
        parser.link_arguments("data.ways", "model.ways")
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments(
            "data", "model.image_channels", compute_fn=lambda dm: dm.image_channels,
            apply_on="instantiate",
        )


def build_cli(args: Optional[list[str]] = None) -> MetaNASCLI:
    return MetaNASCLI(
        MetaNASModule,
        EpisodicDataModule,
        run=False,
        args=args,
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "Meta-train a SuperNet across few-shot tasks."},
    )
