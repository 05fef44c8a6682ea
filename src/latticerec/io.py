"""Atomic file writes: write to a temporary file in the target folder, fsync, then rename.

A temporary file is named ``.NAME.XXXXXXXX.tmp`` beside its target; a write killed before the rename
leaves one behind, which :func:`remove_stale_temps` clears. Outputs get the mode a plain ``open()``
would give (``0666`` less the umask, ``0644`` under umask 022), not ``mkstemp``'s private ``0600``.
Any ``OSError`` of a write (read-only folder, full disk, no permission) becomes an
:class:`~latticerec.errors.OutputError` naming the path.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from latticerec.errors import OutputError

TEMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # mkstemp's names: .NAME.XXXXXXXX.tmp


@functools.cache
def _umask() -> int:
    """The process umask, read once (reading it means setting it: not done at every write)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_error(path: Path, exc: OSError, doing: str = "cannot write") -> OutputError:
    """A clear error for ``exc`` raised while writing ``path``: the path, the reason, a hint."""
    hint = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied", errno.ENOTDIR: "a parent is a file, not a folder"}
    reason = hint.get(exc.errno, exc.strerror or str(exc))
    return OutputError(f"{doing} {path}: {reason} ({type(exc).__name__}: {exc.strerror or exc})")


def _atomic(path: Path, write) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise output_error(path, exc) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda fh: fh.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch  # here, not at module level: the serving path writes files without torch

    _atomic(path, lambda fh: torch.save(obj, fh))


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove a file can be written in it (then removed); raises
    :class:`OutputError` naming the folder otherwise. Called before long work (loading data), so a
    read-only or full disk is reported at once rather than after the data load."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=".write-check.", suffix=".tmp", dir=folder) as fh:
            fh.write(b"latticerec write check\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise output_error(folder, exc, doing=f"{what} not writable:") from None
    return folder


def remove_stale_temps(folder: str | Path, older_than: float | None = None) -> list[Path]:
    """Delete the temporary files of killed atomic writes in ``folder`` (not recursive). With
    ``older_than`` (seconds) only files that old go: a concurrent writer's fresh file stays."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    for p in folder.iterdir():
        if not TEMP_PATTERN.match(p.name) or not p.is_file():
            continue
        try:
            if older_than is not None and now - p.stat().st_mtime < older_than:
                continue
            p.unlink()
            removed.append(p)
        except FileNotFoundError:  # another process cleaned it first
            continue
    return removed
