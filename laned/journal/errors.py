"""The journal's exceptions: one family, :class:`JournalError`, whose message names the file, the row and why."""

from __future__ import annotations


class JournalError(Exception):
    """The journal could not do what was asked; the message names the file, the row and why."""


class JournalTransitionError(JournalError):
    """A state change the row's state does not allow (e.g. a second, different TAC)."""


class JournalWriterClosed(JournalError):
    """Work offered to a :class:`~laned.journal.writer.JournalWriter` that is not running (not started, closed)."""


class JournalWriterDead(JournalError):
    """The journal writer's thread stopped unexpectedly: nothing more will be written.

    Every pending and later submission fails with this; the daemon must stop (non-zero).
    ``__cause__`` is what killed the thread.
    """


class JournalStorageError(JournalError):
    """SQLite or the disk failed (full, read-only, I/O error, locked, corrupt): the journal is not writable.

    As opposed to a plain :class:`JournalError` about the data (a bad value, a constraint)
    or a :class:`JournalTransitionError`, which say nothing about the disk.
    """
