"""Exceptions raised by the data package.

A bad dataset path or setting should stop a run before any training starts, with a message a
user can act on (which file, which setting). One exception type lets callers (the CLI, tests)
catch every data problem without also catching unrelated ``ValueError``s from deep inside
torch.
"""

from __future__ import annotations

from lightning_metanas.errors import SettingsError


class DataError(SettingsError):
    """A dataset is missing, unreadable, or incompatible with the requested task settings."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset file or directory does not exist.

    Also a ``FileNotFoundError`` so that code written against the standard library's notion
    of a missing file keeps working.
    """
