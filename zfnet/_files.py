"""Atomic file writes: a result is either the old file or the whole new one, never half."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(binary file)`` on a temporary file beside ``path``, then rename it over ``path``.

    The data are flushed and fsynced before the rename, so an interrupted run (Ctrl-C,
    a killed job, a full disk) leaves the previous file intact and no partial one.
    The file gets the permissions of an ordinary new file (``0o666`` less the umask),
    not the owner-only mode of the temporary file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
