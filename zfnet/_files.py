"""Atomic file writes: a result is either the old file or the whole new one, never half."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


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


LOCK_NAME = ".zfnet.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


@contextmanager
def output_lock(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold ``folder/.zfnet.lock`` while a command writes into ``folder``.

    The lock file is created exclusively (``O_CREAT | O_EXCL``) and holds the pid,
    host, command and start time.  A second run into the same folder stops with a
    :class:`~zfnet.errors.ConfigError` naming the live run; a lock left by a run that
    died (its pid no longer exists on this host) is stale and taken over.
    """
    from .errors import ConfigError

    folder = Path(folder)
    lock = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(lock.read_text(encoding="utf-8"))
                pid, host = int(other["pid"]), str(other.get("host", ""))
            except (OSError, ValueError, KeyError, TypeError):
                other, pid, host = {}, -1, ""
            if pid > 0 and host == me["host"] and not _pid_alive(pid):
                lock.unlink(missing_ok=True)  # stale: its run died without releasing it
                continue
            if pid < 0 and time.time() - lock.stat().st_mtime > 60:
                lock.unlink(missing_ok=True)  # unreadable and old: a crash while writing it
                continue
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(other.get("started", 0))) if other else "?"
            raise ConfigError(
                f"{folder}: another run is writing here ({other.get('command', 'zfnet')}, pid {pid} on "
                f"{host or '?'}, since {since}); wait for it, choose another output folder, or delete "
                f"{lock} if that run is gone") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    else:
        raise ConfigError(f"{folder}: could not take the lock {lock}")
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def remove_stale_parts(folder: str | os.PathLike) -> list[Path]:
    """Delete what interrupted atomic writes left in ``folder``: ``.NAME.*.part`` files and
    ``.NAME.building-*`` / ``.NAME.old-*`` folders.  Call it only while holding
    :func:`output_lock`, when no other writer can be in the middle of one.
    """
    import shutil

    removed = []
    folder = Path(folder)
    for p in folder.glob(".*"):
        if p.is_file() and p.name.endswith(".part"):
            p.unlink(missing_ok=True)
            removed.append(p)
        elif p.is_dir() and (".building-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
