"""User-facing errors and atomic file output.

Every problem a user can fix (a wrong path, column, label, gene, option, ...) is raised as
:class:`PtragError` with one message that names the thing at fault and what to do. The CLI
prints that message and exits with status 2, without a traceback (unless ``--debug``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


class PtragError(ValueError):
    """An error caused by the user's input, with a message that says how to fix it."""


def check_choice(name: str, value: object, choices: tuple | list) -> None:
    """Raise :class:`PtragError` if ``value`` is not one of ``choices``.

    Parameters
    ----------
    name
        The option's name as the user writes it (e.g. ``"--model"``).
    value
        The value given.
    choices
        The allowed values.
    """
    if value not in choices:
        raise PtragError(f"invalid value {value!r} for {name}: choose one of {', '.join(map(str, choices))}.")


def check_output(path: str | os.PathLike, kind: str = "file", option: str = "--out") -> Path:
    """Refuse, before any work, an output path that cannot be written.

    Parameters
    ----------
    path
        The output path given.
    kind
        ``"file"`` (an existing folder is refused) or ``"folder"`` (an existing file is refused).
    option
        The option's name, for the message.

    Returns
    -------
    pathlib.Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    PtragError
        If the path has the wrong kind, lies under a file, or its nearest existing folder is
        not writable.
    """
    p = Path(path)
    if kind == "file" and p.is_dir():
        raise PtragError(f"{option} {p} is a folder; it takes a file path: name a file (e.g. {p / 'out'}).")
    if kind == "folder" and p.exists() and not p.is_dir():
        raise PtragError(f"{option} {p} exists and is not a folder: pass a folder path or remove the file.")
    ancestor = p if kind == "folder" and p.is_dir() else p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PtragError(f"{option} {p}: {ancestor} is a file, nothing can be written under it: choose another path.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PtragError(f"{option} {p}: the folder {ancestor} is not writable: choose another path.")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    An interrupted or failed write never leaves a half-written file at ``path``. The temporary
    file is hidden and named after its writer's pid (``.NAME.ptrag-PID.XXXX.tmpSUFFIX``): one
    left by a killed writer (SIGKILL cannot be caught) is removed by the next write of ``path``.

    Parameters
    ----------
    path
        The final file path.

    Yields
    ------
    pathlib.Path
        A temporary path in the same directory, with the same suffix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.ptrag-{os.getpid()}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; its files appear in ``path`` only on success.

    A new ``path`` is the temporary folder renamed (all files at once); into an existing folder
    the files are renamed one by one (each whole). A killed writer leaves only the hidden
    ``.NAME.ptrag-PID.XXXX.tmpdir``, removed by the next write of ``path``.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.ptrag-{os.getpid()}.", suffix=".tmpdir", dir=path.parent))
    try:
        yield tmp
        if not path.exists():
            os.chmod(tmp, 0o777 & ~_umask())
            os.replace(tmp, path)
        else:
            for f in sorted(tmp.iterdir()):
                os.replace(f, path / f.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of ``path`` left by writers that no longer run."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.ptrag-*.tmp*"):
        pid = tmp.name[len(path.name) + 8 :].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_csv(path: str | os.PathLike, frame, index: bool = False) -> None:
    """Write a pandas DataFrame to ``path`` as CSV atomically (temporary file + rename)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)


def atomic_save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically, close it, and return ``path``."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def read_toml(path: str | os.PathLike, kind: str, hint: str = "") -> dict:
    """Parse a TOML file, or raise :class:`PtragError` naming it (``kind``: "split file", ...)."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise PtragError(f"{kind} not found: {path}.{(' ' + hint) if hint else ''}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PtragError(f"{path} is not a valid TOML {kind}: {exc}") from exc
