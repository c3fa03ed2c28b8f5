"""train.py's command line: LightningCLI with this project's defaults and always-on parts.

LightningCLI reads every setting from the constructors' type hints, so ``--help`` lists
them, values are type-checked before anything runs, and ``--config`` YAML files compose with
flags (later arguments win). ``run=False``: people type ``python train.py --trainer.x=...``,
not a subcommand.

Besides the model, data and trainer, the command line has groups of its own: the two
checkpoint callbacks (``--checkpoint.*``, ``--last_checkpoint.*``), the callbacks train.py
forces on every run (``--finite_guard.*``, ``--tracking.*``) and the search (``--search.*``:
the fields of ``SearchConfig``). The search runs when its group is given (any
``--search.<field>`` flag, or a ``search:`` section in a config) and not when it is absent or
null; its callback then stands first among the trainer's callbacks, so the order of the
others does not matter.

Why one module of ~370 lines: everything train.py's command line decides before Lightning
builds the trainer (groups, seeds, DDP strategy, trackers, ``--ckpt_path``) lives here, so the
entry point itself stays a few lines.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytorch_lightning as pl
from jsonargparse import lazy_instance
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from lightning_metanas.checkpoints import load_weights_only
from lightning_metanas.commands import device_for
from lightning_metanas.data import EpisodicDataModule
from lightning_metanas.errors import SettingsError
from lightning_metanas.module import MetaNASModule
from lightning_metanas.search_config import SearchConfig

TRAINER_DEFAULTS: dict[str, Any] = {
    # Adaptation at validation/test needs gradients; inference mode would forbid them.
    "inference_mode": False,
    "max_epochs": 30,
    "log_every_n_steps": 10,
    # flush often: the CSV file is what people (and the report) read while a run goes on
    "logger": lazy_instance(CSVLogger, save_dir="runs", name="metanas", flush_logs_every_n_steps=10),
}


SearchCallback = Callable[[SearchConfig], Callback]


# A SuperNet step uses only the sampled subnets' parameters; plain DDP then waits for gradients
# of the others that never come (it hangs after "Grad strides do not match"). These are the
# same strategies with unused parameters allowed.
_SUBNET_DDP = {"ddp": "ddp_find_unused_parameters_true", "ddp_spawn": "ddp_spawn_find_unused_parameters_true",
               "ddp_fork": "ddp_fork_find_unused_parameters_true",
               "ddp_notebook": "ddp_notebook_find_unused_parameters_true"}


def subnet_ddp_strategy(strategy: Any, devices: Any, num_nodes: Any) -> Optional[str]:
    """The strategy a SuperNet needs in place of ``strategy`` (``None``: keep it): plain DDP
    spellings, and ``auto`` on more than one device or node, become DDP with unused parameters
    allowed."""
    if not isinstance(strategy, str):
        return None  # a Strategy object: the user's own choice
    many = (isinstance(num_nodes, int) and num_nodes > 1) or _device_count(devices) > 1
    if strategy == "auto":
        return _SUBNET_DDP["ddp"] if many else None
    return _SUBNET_DDP.get(strategy)


def _device_count(devices: Any) -> int:
    """How many devices ``--trainer.devices`` names (``auto``: 1; ``-1``: 2, i.e. possibly several)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", ""):
        return 1
    if text == "-1":
        return 2
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.lstrip("-").isdigit() else 1


@dataclass
class WandbSettings:
    """A Weights & Biases run beside the run's own logger (``--wandb.*``).

    Args:
        project: the W&B project.
        offline: write the run locally (no account, no network, no prompt); ``wandb sync``
            uploads it later.
        entity: the W&B team or user (``None``: the account's default).
    """

    project: str = "lightning_metanas"
    offline: bool = True
    entity: Optional[str] = None


def extra_loggers(first: Logger, wandb: Optional[WandbSettings], tensorboard: bool) -> list[Logger]:
    """Loggers added beside ``first`` (the config's): TensorBoard event files in the same run
    folder, and a W&B run named after it, so adding a tracker never renames or moves the run."""
    added: list[Logger] = []
    name, version = str(first.name or "metanas"), first.version
    save_dir = first.save_dir or "runs"
    if tensorboard:
        added.append(TensorBoardLogger(save_dir, name=name, version=version, default_hp_metric=False))
    if wandb is not None:
        run_name = f"{name}/{version if isinstance(version, str) else f'version_{version}'}"
        added.append(QuietWandbLogger(name=run_name, project=wandb.project, entity=wandb.entity, save_dir=save_dir,
                                      offline=wandb.offline, log_model=False))
    return added


class QuietWandbLogger(WandbLogger):
    """Lightning's WandbLogger without the two notes wandb prints about settings this project
    never uses: ``anonymous`` (Lightning always passes it, as None) and git (a run folder need
    not be a repository)."""

    def __init__(self, **kwargs: Any) -> None:
        import wandb

        super().__init__(settings=wandb.Settings(disable_git=True, silent=True), **kwargs)
        self._wandb_init.pop("anonymous", None)


class MetaNASCLI(LightningCLI):
    """LightningCLI plus the groups of this module's docstring.

    Args:
        forced_callbacks: callbacks every run gets, each settable as ``--<key>.*``.
        search_callback: builds the callback that runs the search from ``--search.*``.

    train.py passes both (the guard, the tracking and ``EvolutionCallback``):
    ``lightning_metanas`` never imports the top-level ``callbacks`` package.
    """

    def __init__(
        self, *args: Any, forced_callbacks: Optional[dict[str, type]] = None,
        search_callback: Optional[SearchCallback] = None, **kwargs: Any,
    ) -> None:
        self.forced_callbacks = dict(forced_callbacks or {})
        self.search_callback = search_callback
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if args is None or isinstance(args, list):
            reject_retired_search_settings(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        """One seed suffices: the model's, the data's and the search's seeds left unset take
        ``--seed_everything``'s value (resolved by Lightning, also when it is random); a GPU
        asked for where there is none stops here, in one line."""
        config, seed = self.config, self.config.get("seed_everything")
        seed = 0 if seed in (None, False) else int(seed)
        for key in ("model.seed", "data.seed", "search.seed"):
            if key.startswith("search") and config.get("search") is None:
                continue
            if config.get(key) is None:
                config[key] = seed
        accelerator = config.get("trainer.accelerator")
        if isinstance(accelerator, str):
            device_for(accelerator)
        strategy = subnet_ddp_strategy(config.get("trainer.strategy"), config.get("trainer.devices"),
                                       config.get("trainer.num_nodes"))
        if strategy is not None:
            config["trainer.strategy"] = strategy

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        wandb, tensorboard = self.config_init.get("wandb"), bool(self.config_init.get("tensorboard"))
        logger = self.config_init.get("trainer", {}).get("logger")
        if (wandb is not None or tensorboard) and isinstance(logger, Logger):
            kwargs["logger"] = [logger, *extra_loggers(logger, wandb, tensorboard)]
        search = self.config_init.get("search")
        if search is not None and self.search_callback is not None:
            # first: its generation ends each epoch before any other callback sees the epoch end
            given = self.config_init.get("trainer", {}).get("callbacks") or []
            given = given if isinstance(given, list) else [given]
            kwargs["callbacks"] = [self.search_callback(search), *given]
        return super().instantiate_trainer(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=Optional[str],
            default=None,
            help=(
                "Resume meta-training from this checkpoint file, or from 'last': the last.ckpt "
                "of the highest version_N under the logger's save_dir/name (the same "
                "--trainer.logger settings as the run to resume). Resume with the run's own "
                "settings (--config <run>/config.yaml). Loaded with weights_only=True."
            ),
        )
        for key, callback in self.forced_callbacks.items():
            parser.add_lightning_class_args(callback, key)
        if self.search_callback is not None:
            parser.add_argument(
                "--search", type=Optional[SearchConfig], default=None,
                help="The across-task search (evolution + predictor), one generation per epoch; "
                     "off unless given: any --search.<field> or a search: section turns it on, "
                     "--search=null turns a config's search off. --search.help lists the fields.",
            )
        parser.add_argument(
            "--wandb", type=Optional[WandbSettings], default=None,
            help="Also log to Weights & Biases (offline by default), beside --trainer.logger, under the "
                 "run's own name: --wandb.project=..., or a wandb: section (configs/wandb.yaml).",
        )
        parser.add_argument(
            "--tensorboard", type=bool, default=False,
            help="Also write TensorBoard event files into the run's folder (pip install 'lightning-metanas[tensorboard]').",
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
                "checkpoint.filename": "epoch{epoch:03d}-val_acc{val/acc:.4f}",
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


def build_cli(
    args: Optional[list[str]] = None, forced_callbacks: Optional[dict[str, type]] = None,
    search_callback: Optional[SearchCallback] = None,
) -> MetaNASCLI:
    return MetaNASCLI(
        MetaNASModule,
        EpisodicDataModule,
        run=False,
        args=args,
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "Meta-train a SuperNet across few-shot tasks."},
        forced_callbacks=forced_callbacks,
        search_callback=search_callback,
    )


# The search's settings live in their own group; a flag that reaches for the callback inside
# trainer.callbacks gets one line naming the flag to use.
_RETIRED_FLAG = re.compile(r"--trainer\.callbacks\.(?:init_args\.)?evolution\.([^=\s]+)")


def reject_retired_search_settings(argv: list[str]) -> None:
    """One line naming ``--search.<field>`` for a ``--trainer.callbacks...evolution.<field>``
    flag, instead of jsonargparse's page about a callback list."""
    for arg in argv:
        found = _RETIRED_FLAG.match(arg)
        if found:
            raise SettingsError(f"{arg.split('=', 1)[0]} is now --search.{found.group(1)}")


# -- --ckpt_path ---------------------------------------------------------------------------
LAST = "last"
# Settings that fix the shapes of the SuperNet's weights: a checkpoint only resumes a run
# built with the same ones.
STRUCTURAL_HPARAMS = ("ways", "image_channels", "search_space")


def resolve_ckpt_path(
    value: Optional[str], trainer: pl.Trainer, model: Optional[pl.LightningModule] = None
) -> Optional[str]:
    """The checkpoint file that ``--ckpt_path`` names, checked before any data is read.

    ``last`` is this run's newest ``last.ckpt`` (``find_last_checkpoint``). The file must load
    with ``torch.load(weights_only=True)`` (tensors and plain containers: nothing in the file
    is executed), hold a training state (weights, optimiser, loops), and fit ``model``'s
    SuperNet. Raises ``SettingsError`` naming the file and what to do otherwise.
    """
    if value is None:
        return None
    path = find_last_checkpoint(trainer) if value == LAST else Path(value).expanduser()
    if not path.is_file():
        raise SettingsError(
            f"--ckpt_path {value}: no such file; give a checkpoint file (a run's "
            f"checkpoints/last.ckpt) or '{LAST}' for the newest last.ckpt of this logger"
        )
    check_checkpoint(path, model)
    return str(path)


def find_last_checkpoint(trainer: pl.Trainer) -> Path:
    """``last.ckpt`` of the run to resume: in ``--last_checkpoint.dirpath`` when that is set,
    else under the logger's ``save_dir/name``: the one of the highest ``version_N`` that has
    one (other version names, e.g. W&B run ids, by modification time), else in
    ``default_root_dir/checkpoints`` when there is no logger. This mirrors where
    ``ModelCheckpoint`` puts checkpoints."""
    fixed = [
        Path(cb.dirpath) for cb in trainer.checkpoint_callbacks
        if getattr(cb, "filename", None) == LAST and cb.dirpath
    ]
    if fixed:
        candidates = [d / f"{LAST}.ckpt" for d in fixed]
        where = " or ".join(str(c) for c in candidates)
    elif trainer.loggers:
        logger = trainer.loggers[0]
        root = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name or "")
        candidates = list(root.glob(f"*/checkpoints/{LAST}.ckpt"))
        where = f"{root}/version_*/checkpoints/ (the runs of this --trainer.logger save_dir and name)"
    else:
        candidates = [Path(trainer.default_root_dir) / "checkpoints" / f"{LAST}.ckpt"]
        where = str(candidates[0])
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        raise SettingsError(
            f"--ckpt_path={LAST}: no {LAST}.ckpt in {where}; run without --ckpt_path to start, "
            "or give the checkpoint file"
        )

    def order(path: Path) -> tuple[int, float]:
        match = re.fullmatch(r"version_(\d+)", path.parent.parent.name)
        return (int(match.group(1)) if match else -1, path.stat().st_mtime)

    return max(candidates, key=order)


def check_checkpoint(path: Path, model: Optional[pl.LightningModule] = None) -> dict[str, Any]:
    """Load ``path`` as ``fit`` will (``weights_only=True``) and check it can resume ``model``."""
    checkpoint = load_weights_only(path)
    missing = [k for k in ("state_dict", "optimizer_states", "loops") if not (
        isinstance(checkpoint, dict) and k in checkpoint)]
    if missing:
        raise SettingsError(
            f"--ckpt_path {path} is not a training checkpoint (no {', '.join(missing)}); resume "
            "from a run's checkpoints/last.ckpt or epochNNN.ckpt"
        )
    saved = checkpoint.get("hyper_parameters") or {}
    if model is not None:
        for key in STRUCTURAL_HPARAMS:
            if key in saved and key in model.hparams and saved[key] != model.hparams[key]:
                config = path.parent.parent / "config.yaml"
                hint = f" (--config {config})" if config.is_file() else ""
                raise SettingsError(
                    f"--ckpt_path {path} was written with model.{key}={saved[key]}, this run has "
                    f"model.{key}={model.hparams[key]}; resume with the run's settings{hint}"
                )
    return checkpoint
