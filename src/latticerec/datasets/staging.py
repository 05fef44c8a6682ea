"""A dataset folder written all at once: :func:`staged_folder`.

Every builder (``data synth``, ``import-recbole``, ``build-amazon``, ``cold-start``) writes into a
hidden *partial* folder and publishes it only when complete, so ``--out`` never holds half a dataset:

- a missing ``--out`` is built beside it, in ``.<name>.<pid>-<random>.partial``, and renamed into
  place (one rename); parents created for it are removed again on failure;
- an existing, empty ``--out`` (``.``, a mount point, a symlink to a folder) is kept, with its owner
  and mode: the build goes into ``.dataset.<pid>-<random>.partial`` inside it, whose entries move up
  at the end (moved back if a move fails, SIGTERM held off meanwhile).

Each partial folder is held by an exclusive ``flock`` for the life of its build. A folder of our
name pattern whose lock can be taken belongs to a build that is gone (SIGKILL, a power cut): the
next build of the same ``--out`` removes it. The lock, not the pid in the name, decides: it works
across pid namespaces and is released by the kernel when the writer dies. During the build SIGTERM
raises ``SystemExit(143)`` so the cleanup runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from latticerec.errors import DataError
from latticerec.io import output_error

INSIDE = "dataset"  # the name part of a partial folder inside an existing --out
NAME_BYTES = 64  # of --out's name kept in the partial folder's name (a valid name + 30 bytes must fit)
GRACE_SECONDS = 60.0  # a partial folder younger than this is never judged stale (its lock may be coming)


def check_new_folder(out: str | Path, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse an output folder that would overwrite something: a file, one of the ``inputs``
    (or a folder holding one), or a folder that already holds files. A missing or empty folder is
    fine. Returns ``out`` as a :class:`Path`."""
    out = Path(out)
    for src in inputs:
        if src is None:
            continue
        src = Path(src).resolve()
        if out.resolve() == src or out.resolve() in src.parents:
            raise DataError(f"--out {out}: is or holds the input {src}; write to a new folder")
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"--out {out}: folder already holds files; refusing to overwrite them "
                        "(choose a new or empty folder)")
    return out


def _stem(name: str) -> str:
    return os.fsencode(name)[:NAME_BYTES].decode(errors="ignore")


def _partial_name(name: str) -> str:
    return f".{_stem(name)}.{os.getpid()}-{secrets.token_hex(4)}.partial"


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"\.{re.escape(_stem(name))}\.[0-9]{{1,10}}-[0-9a-f]{{8}}\.partial")


def _lock(folder: Path) -> int:
    """An open descriptor of ``folder`` holding its exclusive lock (kept until closed)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_stale(folder: Path, name: str) -> None:
    """Remove the partial folders for ``name`` in ``folder`` whose build is gone: exactly our name
    pattern, a real folder (not a symlink), older than the grace period, and its lock free."""
    pattern = _pattern(name)
    try:
        entries = [p for p in folder.iterdir() if pattern.fullmatch(p.name)] if folder.is_dir() else []
    except OSError:
        return
    for p in entries:
        try:
            if p.is_symlink() or not p.is_dir() or time.time() - p.lstat().st_mtime < GRACE_SECONDS:
                continue
            fd = _lock(p)
        except OSError:  # locked: a build in progress; or unreadable: not ours to judge
            continue
        try:
            shutil.rmtree(p, ignore_errors=True)
        finally:
            os.close(fd)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``SystemExit(143)`` so the cleanup runs; only in the main
    thread and where nobody else handles SIGTERM."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _sigterm_held() -> Iterator[None]:
    """SIGTERM blocked for the block (delivered after it): a publish is not cut in half."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


@contextmanager
def staged_folder(out: str | Path, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Check ``out`` (:func:`check_new_folder`: not a file, not an input, missing or empty), yield an
    empty hidden folder to write the dataset into, and publish it as ``out`` when the block ends; on
    any error (or SIGTERM) nothing is left (module docstring)."""
    with _sigterm_as_exit():
        yield from _staged(Path(out), list(inputs))


def _staged(given: Path, inputs: list) -> Iterator[Path]:
    if given.is_symlink() and not given.exists():
        raise DataError(f"--out {given}: a symbolic link to nothing ({os.readlink(given)})")
    out = given.resolve()  # one absolute path for every step (``x/../ds``, a later chdir)
    inside = out.is_dir()
    if inside:
        _remove_stale(out, INSIDE)
    else:
        if not out.name:
            raise DataError(f"--out {given}: name a dataset folder")
        _remove_stale(out.parent, out.name)
    check_new_folder(given, inputs)
    created: list[Path] = []
    fd = None
    tmp = None
    try:
        try:
            if inside:
                tmp = out / _partial_name(INSIDE)
            else:
                for p in reversed([p for p in (out.parent, *out.parent.parents) if not p.exists()]):
                    p.mkdir()
                    created.append(p)
                tmp = out.parent / _partial_name(out.name)
            tmp.mkdir()
            fd = _lock(tmp)
        except OSError as exc:
            raise output_error(given, exc) from None
        yield tmp
        if inside:
            _publish_inside(given, out, tmp)
        else:
            check_new_folder(given, inputs)  # still missing or empty
            try:
                os.replace(tmp, out)  # one rename
            except OSError as exc:
                raise output_error(given, exc, "cannot move the finished dataset into") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for p in reversed(created):  # deepest first, only if still empty
            try:
                p.rmdir()
            except OSError:
                pass
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _publish_inside(given: Path, out: Path, tmp: Path) -> None:
    """Move the entries of ``tmp`` up into ``out``: all of them, or (a move failed) none."""
    others = sorted(p.name for p in out.iterdir() if p != tmp)
    if others:
        raise DataError(f"--out {given}: {others[0]} appeared there during the build; refusing to "
                        "overwrite it (choose a new or empty folder)")
    moved: list[str] = []
    with _sigterm_held():
        try:
            for entry in sorted(tmp.iterdir(), key=lambda p: p.name.endswith(".json")):  # reports last
                if (out / entry.name).exists():
                    raise OSError(errno.EEXIST, "appeared during the publish", str(out / entry.name))
                os.replace(entry, out / entry.name)
                moved.append(entry.name)
            tmp.rmdir()
        except OSError as exc:
            for name in reversed(moved):
                try:
                    os.replace(out / name, tmp / name)
                except OSError:
                    pass
            raise output_error(given, exc, "cannot move the finished dataset into") from None
