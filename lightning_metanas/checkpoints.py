"""Reading checkpoints that users hand to the entry points (eval.py, adapt.py, train.py's resume).

Always ``torch.load(weights_only=True)``: tensors and plain containers only, so nothing in a
file can run code. Everything this project stores in a checkpoint (settings as dicts, search
state, random-generator states) is of those types. Refusals are one line, because torch's own
message spans many and suggests ``weights_only=False``, the one thing not to do with a file of
unknown origin.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from lightning_metanas.errors import SettingsError


class CheckpointError(SettingsError):
    """A checkpoint that cannot be used, with what to do about it."""


def describe_load_error(err: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused a file."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"it holds a pickled {found.group(1)}, which only running code could rebuild: "
            "refused, nothing in it was executed"
        )
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if found:
        return f"not a torch checkpoint ({found.group(1).strip()})"
    if "zip archive" in text:
        return "truncated, damaged or not a torch checkpoint (no valid zip archive)"
    first = (text.strip().splitlines() or [type(err).__name__])[0]
    return f"truncated, damaged or not a torch checkpoint ({first})"


def load_weights_only(path: str | Path, flag: str = "--ckpt_path") -> object:
    """``torch.load(weights_only=True)``, with a one-line refusal."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or not a torch file, or a pickle that needs code
        raise CheckpointError(
            f"{flag} {path} cannot be loaded with torch.load(weights_only=True): "
            f"{describe_load_error(err)}"
        ) from None


def read_checkpoint(path: str | Path, flag: str = "--ckpt_path") -> dict:
    """A checkpoint written by train.py, loaded without executing anything from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{flag} {path}: no such file")
    checkpoint = load_weights_only(path, flag)
    # Lightning writes its version into every checkpoint and needs it to load one
    needed = ("state_dict", "hyper_parameters", "pytorch-lightning_version")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in needed):
        raise CheckpointError(f"{flag} {path} is not a checkpoint written by train.py")
    return checkpoint


DATA_MODULE = "EpisodicDataModule"  # Lightning's key of the data module's state in a checkpoint


def data_state(checkpoint: dict) -> dict:
    """The data module's checkpoint state (``EpisodicDataModule.state_dict()``), or ``{}``."""
    state = checkpoint.get(DATA_MODULE)
    return state if isinstance(state, dict) else {}


def data_settings(checkpoint: dict) -> Optional[dict]:
    """The data module's constructor arguments: Lightning's ``datamodule_hyper_parameters``
    (checkpoints written before the module saved them kept them in its state)."""
    settings = checkpoint.get("datamodule_hyper_parameters") or data_state(checkpoint).get("settings")
    # "_instantiator" and the like: LightningCLI's bookkeeping, not constructor arguments
    return {k: v for k, v in settings.items() if not k.startswith("_")} if settings is not None else None


def search_state(checkpoint: dict) -> Optional[dict]:
    """The EvolutionCallback's state (``EvolutionarySearch.state_dict()``), if the run had one."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if "EvolutionCallback" in key and state:
            return state
    return None
