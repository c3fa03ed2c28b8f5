"""Silence what is not a user's business, at the one place every command passes: advertising
tips of Lightning's, a deprecation inside Lightning's own code, W&B's notes on settings this
project never sets. Nothing of the run itself is hidden: its warnings, errors and figures pass."""
from __future__ import annotations

import logging
import warnings

# (logger name, start of the message) that Lightning logs at every run
_TIPS = ("💡 Tip: For seamless cloud",)
_RANK_ZERO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                      "lightning_utilities.core.rank_zero")


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_TIPS)


def silence_third_party_noise() -> None:
    """Idempotent; call before Lightning builds a Trainer (each DDP rank runs it too)."""
    # pytorch_lightning.utilities._pytree builds a torch LeafSpec, deprecated in torch 2.13
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated.*")
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
