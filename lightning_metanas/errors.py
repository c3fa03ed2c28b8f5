"""The one base class of every error that a user's input (a setting, a data file, an
architecture file) causes, the checks of number settings that raise it, and how an entry point
reports it: its message alone, because a mistyped setting deserves one line that says what to
change, not a traceback through Lightning."""
from __future__ import annotations

import sys
from typing import Callable


class SettingsError(ValueError):
    """Bad user input; the message names the setting or file and what is allowed."""


def require_int(name: str, value: object, minimum: int = 1, error: type[SettingsError] = SettingsError) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``; else ``error``
    naming the setting as the user writes it (``data.ways``, ``--budget``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def require_positive(name: str, value: object, error: type[SettingsError] = SettingsError) -> float:
    """``value`` if it is a finite number > 0 (a learning rate, a step size); else ``error``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise error(f"{name} must be a finite number > 0, got {value!r}")
    return value


def run_main(main: Callable[[], object], status: int = 1) -> int:
    """An entry point's exit status: ``main``'s return, or ``status`` after one line
    ``error: <message>`` on stderr when a user's mistake (a ``SettingsError``) stopped it."""
    try:
        main()
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return status
    return 0
