"""Writing a file whole or not at all, as a power cut may strike at any moment."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def write_atomic(path: Path, pieces: Iterable[bytes | memoryview]) -> None:
    """``pieces`` to ``path``: a temp file beside it, fsync, rename over it, fsync the folder.

    After a crash ``path`` holds the old content or the new, never a mix; the rename is
    made durable by the folder's fsync, or a power cut could bring the old file back.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            for piece in pieces:
                fh.write(piece)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
