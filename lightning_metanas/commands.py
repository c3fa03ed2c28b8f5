"""What the commands share: one name per setting, one exit status, one device rule.

train.py's LightningCLI names every setting by where it lives (``--data.root``,
``--model.meta.eval_inner_steps``, ``--trainer.accelerator``); eval.py, adapt.py and
predict.py take the same names for the same settings (``add_shared``), so a flag copied from
one command works in the next. A retired spelling stops with one line naming the new one
(``check_retired``). A user's mistake (a ``SettingsError``) ends every command with one line
``error: <what to change>`` and exit status 1 (``errors.run_main``); jsonargparse's own usage
errors exit with 2, as argparse's do.
"""
from __future__ import annotations

from typing import Optional

import torch
from jsonargparse import ArgumentParser

from lightning_metanas.errors import SettingsError
from lightning_metanas.meta_config import Norm

# The shared settings: flag -> (type, default, help). Commands add the ones they take.
SHARED: dict[str, tuple[object, object, str]] = {
    "--ckpt_path": (str, None, "A checkpoint written by train.py (loaded with weights_only=True)."),
    "--data.root": (Optional[str], None, "Data folder (default: the checkpoint's)."),
    "--model.eval_arch": (Optional[str], None, "Architecture JSON (e.g. a search's best_arch.json)."),
    "--model.meta.eval_inner_steps": (Optional[int], None, "Adaptation steps per task (default: the checkpoint's)."),
    "--model.meta.norm": (Optional[Norm], None,
                          "BatchNorm statistics of a query image: transductive (the query batch's, MAML's "
                          "protocol) or support (the adapted support images': each image alone, as deployed); "
                          "default: the checkpoint's."),
    "--trainer.accelerator": (str, "auto", "auto (a CUDA GPU when there is one, else the CPU), cpu, or gpu/cuda."),
    "--seed_everything": (int, 0, "The seed every other seed is derived from (lightning_metanas/seeding.py)."),
    "--out": (Optional[str], None, "Also write the result as JSON here."),
}


def add_shared(parser: ArgumentParser, *flags: str, required: tuple[str, ...] = (), **helps: str) -> None:
    """Add the ``SHARED`` settings ``flags`` to ``parser`` (``helps``: a command's own help for
    a flag, keyed by the flag without dashes, dots as underscores)."""
    for flag in flags:
        kind, default, text = SHARED[flag]
        text = helps.get(flag.lstrip("-").replace(".", "_"), text)
        if flag in required:
            parser.add_argument(flag, type=kind, required=True, help=text)
        else:
            parser.add_argument(flag, type=kind, default=default, help=text)


def check_retired(argv: list[str], retired: dict[str, str]) -> None:
    """One line naming the new flag for a retired spelling (``--root`` -> ``--data.root``)."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in retired:
            raise SettingsError(f"{flag} is now {retired[flag]} (one name per setting in every command; README)")


def device_for(accelerator: str) -> torch.device:
    """``--trainer.accelerator`` as a device: ``auto`` takes CUDA when it is available; asking
    for a GPU where there is none is a one-line error, not a traceback."""
    name = accelerator.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise SettingsError(
                f"--trainer.accelerator={accelerator}: no CUDA GPU was found on this machine; "
                "use --trainer.accelerator=cpu (or auto)")
        return torch.device("cuda")
    raise SettingsError(f"--trainer.accelerator must be auto, cpu, gpu or cuda, got {accelerator!r}")
