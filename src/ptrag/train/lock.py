"""A run folder belongs to one process at a time: ``RUN_DIR/.ptrag.lock``.

:func:`run_lock` creates the lock file atomically (``O_CREAT | O_EXCL``) with the owner's pid
and host, and removes it on exit (normal or by an exception; a folder the lock created and nothing
filled is removed too). A second process that finds the
lock of a live owner is refused at once, naming the owner; a lock whose owner is gone (a
killed run: SIGKILL leaves the file behind) is stale and is taken over with a warning.
Distributed ranks other than 0 (``LOCAL_RANK`` / ``RANK`` set and not 0) share their rank 0's
lock and take none.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ptrag.errors import PtragError, pid_alive

log = logging.getLogger("ptrag")

LOCK_NAME = ".ptrag.lock"


def _owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _is_secondary_rank() -> bool:
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "RANK"))


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path | None]:
    """Hold ``run_dir``'s lock for the ``with`` block (the folder is created if needed).

    Parameters
    ----------
    run_dir
        The run folder.

    Yields
    ------
    pathlib.Path or None
        The lock file (``None`` on a secondary distributed rank).

    Raises
    ------
    PtragError
        If a live process holds the folder.
    """
    if _is_secondary_rank():
        yield None
        return
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(path)
            pid, host = owner.get("pid"), owner.get("host")
            if isinstance(pid, int) and (host != me["host"] or pid_alive(pid)):
                raise PtragError(
                    f"{run_dir} is in use by another ptrag process (pid {pid} on {host}): wait for it to "
                    f"finish or choose another --out. If no such process runs, remove {path}."
                ) from None
            log.warning("%s: removing the stale lock of a process that no longer runs (pid %s).", run_dir, pid)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:  # pragma: no cover - another process took the stale lock between our two attempts
        raise PtragError(f"{run_dir} is in use by another ptrag process: choose another --out.")
    try:
        yield path
    finally:
        if _owner(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
        if created and not any(run_dir.iterdir()):  # refused before writing anything: leave no folder
            run_dir.rmdir()
