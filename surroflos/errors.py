"""The one exception family for mistakes in what a user gave us: a flag, a file, a configuration.

Every such error is a :class:`UsageError` (a ``ValueError``, so Python callers can keep catching
``ValueError``). The command line prints it as one line ``surroflos <command>: error: <message>`` and
exits with status 2 (:func:`surroflos.cli.main`); its message therefore names the bad value or file and
says what would be valid.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """A user input (flag value, file, configuration, checkpoint) that cannot work."""
