"""The reference centre's one exception family."""

from __future__ import annotations


class CentreError(Exception):
    """Something the reference centre cannot do as asked: a database it cannot open, a key
    file it cannot use, a command the lane did not answer. The message says what, and what
    to do about it."""


class CentreStorageError(CentreError):
    """The centre's SQLite file cannot be opened or written (path and SQLite's reason)."""


class CommandTimeout(CentreError):
    """No ``cmd/result`` for a command within the wait (the lane is offline, or refused it silently)."""
