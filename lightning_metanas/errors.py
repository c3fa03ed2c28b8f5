"""The one base class of every error that a user's input (a setting, a data file, an
architecture file) causes. Entry points catch it and print its message alone: a mistyped
setting deserves one line that says what to change, not a traceback through Lightning."""
from __future__ import annotations


class SettingsError(ValueError):
    """Bad user input; the message names the setting or file and what is allowed."""
