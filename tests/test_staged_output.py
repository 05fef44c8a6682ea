"""Every dataset builder writes through ``staged_folder``: the output folder appears complete, or
not at all, even when the build fails after its first files were written (full disk, a bad late
input), and nothing is left beside it."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from test_data_amazon import write_raw

import latticerec.datasets.amazon as amazon
import latticerec.datasets.coldstart as coldstart
import latticerec.datasets.recbole as recbole
import latticerec.datasets.staging as staging
import latticerec.datasets.synth as synth
from latticerec.data import make_synthetic
from latticerec.data.readers import load_dataset
from latticerec.datasets.staging import staged_folder
from latticerec.errors import DataError


def _fail_late(monkeypatch, module):
    """The report is the last file a builder writes: failing there leaves the data files written."""
    def boom(path, *a, **k):
        assert any(path.parent.iterdir()), "the data files should be written before the report"
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(module, "atomic_write_json", boom)


def _builder(name, tmp_path):
    """``(module, build)`` for one builder, with only its own input made."""
    if name == "synth":
        return synth, lambda out: synth.write_synthetic(out, n_users=30, n_items=40, n_interactions=300,
                                                        dims={"image": 4})
    if name == "import-recbole":
        inter = tmp_path / "rb" / "toy.inter"
        inter.parent.mkdir()
        inter.write_text("user_id:token\titem_id:token\n" + "".join(
            f"{u}\t{i}\n" for u in range(12) for i in range(u % 4, u % 4 + 12)))
        return recbole, lambda out: recbole.import_recbole(inter, out, progress=False)
    if name == "build-amazon":
        raw = write_raw(tmp_path / "raw")
        return amazon, lambda out: amazon.build_amazon(raw["reviews"], out, images=raw["images"], core=3,
                                                       text_model=None, max_bad=5, progress=False,
                                                       log=lambda m: None)
    source = make_synthetic(n_users=120, n_items=80, seed=3)
    split = coldstart.cold_start_split if name == "cold-start" else coldstart.inductive_cold_start_split
    return coldstart, lambda out: split(source, out, seed=1)


@pytest.mark.parametrize("builder", ["synth", "import-recbole", "build-amazon", "cold-start", "inductive"])
def test_a_late_failure_leaves_no_folder_and_no_partial_files(builder, tmp_path, monkeypatch):
    module, build = _builder(builder, tmp_path)
    (tmp_path / "outputs").mkdir()
    _fail_late(monkeypatch, module)
    with pytest.raises(OSError, match="No space left"):
        build(tmp_path / "outputs" / "ds")
    assert list((tmp_path / "outputs").iterdir()) == []  # not ds, not .ds.<random>.partial
    monkeypatch.undo()
    build(tmp_path / "outputs" / "ds")  # the same call succeeds once the cause is gone
    out = tmp_path / "outputs" / "ds"
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["ds"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    mode = stat.S_IMODE(out.stat().st_mode)
    assert mode == 0o777 & ~_umask()  # an ordinary folder, not a private temporary one
    load_dataset(out)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_an_existing_empty_folder_is_kept_with_its_mode_and_filled_at_the_end(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    empty.chmod(0o2750)
    inode = empty.stat().st_ino
    with staged_folder(empty) as tmp:
        (tmp / "a.txt").write_text("a")
        assert tmp.parent == empty and tmp.name.startswith(".dataset.")
        assert not (empty / "a.txt").exists()  # nothing visible before the end
    assert [p.name for p in empty.iterdir()] == ["a.txt"]
    assert empty.stat().st_ino == inode and stat.S_IMODE(empty.stat().st_mode) == 0o2750
    # "." (the working directory, which cannot be renamed over) and a symlink to an empty folder
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with staged_folder(".") as tmp:
        (tmp / "b.txt").write_text("b")
    assert [p.name for p in here.iterdir()] == ["b.txt"]
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with staged_folder(tmp_path / "link") as tmp:
        (tmp / "c.txt").write_text("c")
    assert (tmp_path / "link").is_symlink() and [p.name for p in target.iterdir()] == ["c.txt"]
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "ds")
    with pytest.raises(DataError, match="a symbolic link to nothing"):
        with staged_folder(tmp_path / "dangling"):
            pass
    assert not (tmp_path / "nowhere").exists()


def test_files_appearing_during_the_build_are_never_overwritten(tmp_path):
    for out, make in ((tmp_path / "raced", lambda p: p.mkdir()), (tmp_path / "empty", None)):
        if make is None:
            out.mkdir()
        with pytest.raises(DataError, match="already holds files|appeared there during the build"):
            with staged_folder(out) as tmp:
                (tmp / "a.txt").write_text("mine")
                out.mkdir(exist_ok=True)
                (out / "b.txt").write_text("someone else's")
        assert [p.name for p in out.iterdir()] == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "raced"]


def test_a_failure_removes_the_parents_it_created_and_long_names_fit(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "a" / "b" / "ds"):
            raise RuntimeError("late")
    assert list(tmp_path.iterdir()) == []
    long = tmp_path / ("n" * 250)  # a valid name; the partial folder beside it must fit too
    with staged_folder(long) as tmp:
        (tmp / "x").write_text("x")
    assert (long / "x").exists()


SIGTERM_CHILD = """
import os, signal, sys
from latticerec.datasets.staging import staged_folder
with staged_folder(sys.argv[1]) as tmp:
    (tmp / "x").write_text("x")
    os.kill(os.getpid(), signal.SIGTERM)
    print("not reached")
"""


def test_sigterm_during_a_build_cleans_up(tmp_path):
    for out in (tmp_path / "new" / "ds", tmp_path / "existing"):
        (tmp_path / "existing").mkdir(exist_ok=True)
        run = subprocess.run([sys.executable, "-c", SIGTERM_CHILD, str(out)], capture_output=True, text=True)
        assert run.returncode == 143 and "not reached" not in run.stdout, run.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # no "new", nothing hidden
        assert list((tmp_path / "existing").iterdir()) == []


def _stale(folder, name, age=3600, pid=4242):
    p = folder / f".{name}.{pid}-0123abcd.partial"
    p.mkdir()
    (p / "junk").write_text("x")
    os.utime(p, (time.time() - age, time.time() - age))
    return p


def test_a_dead_builds_partial_folder_is_removed_a_live_one_kept(tmp_path):
    stale = _stale(tmp_path, "ds")  # its lock is free: its build is gone (SIGKILL)
    live = _stale(tmp_path, "ds", pid=77)
    fd = staging._lock(live)  # a build in progress holds its lock
    young = tmp_path / ".ds.78-0123abcd.partial"  # just made, its lock maybe not yet taken
    young.mkdir()
    others = [tmp_path / n for n in (".ds.2024-01.5-0123abcd.partial",   # another out's, "ds.2024-01"
                                     ".ds.12-backup.partial",            # not our pattern
                                     ".ds.99999999999999999999-ab.partial", ".ds.²-0123abcd.partial")]
    for p in others:
        p.mkdir()
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    try:
        with staged_folder(tmp_path / "ds") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.close(fd)
    assert not stale.exists() and live.exists() and young.exists() and all(p.exists() for p in others)
    # inside an existing --out: a dead build's folder is cleared, a live one refuses the build
    existing = tmp_path / "existing"
    existing.mkdir()
    _stale(existing, "dataset")
    with staged_folder(existing) as tmp:
        (tmp / "x").write_text("x")
    assert [p.name for p in existing.iterdir()] == ["x"]
    busy = tmp_path / "busy"
    busy.mkdir()
    fd = staging._lock(_stale(busy, "dataset"))
    try:
        with pytest.raises(DataError, match="already holds files"):
            with staged_folder(busy):
                pass
    finally:
        os.close(fd)


def test_a_failed_publish_into_an_existing_folder_moves_everything_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    with pytest.raises(OSError, match="cannot move the finished dataset into"):
        with staged_folder(out) as tmp:
            for name in ("a.inter", "b_feat.npy", "report.json"):
                (tmp / name).write_text(name)
            monkeypatch.setattr(staging.os, "replace", flaky)
    assert list(out.iterdir()) == []  # not half a dataset
    assert calls[0].name != "report.json"  # the report moves last


def test_paths_with_dots_multibyte_names_and_an_early_failure(tmp_path, monkeypatch):
    with staged_folder(tmp_path / "nothere" / ".." / "ds") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "ds" / "x").exists() and not (tmp_path / "nothere").exists()
    emoji = tmp_path / ("\U0001F600" * 63)  # 252 bytes: a valid name
    with staged_folder(emoji) as tmp:
        (tmp / "x").write_text("x")
    assert (emoji / "x").exists()

    def no_lock(folder):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(staging, "_lock", no_lock)  # fails after the parents were created
    with pytest.raises(OSError, match="permission denied"):
        with staged_folder(tmp_path / "p" / "q" / "ds"):
            pass
    assert not (tmp_path / "p").exists()


def test_the_sigterm_handler_is_installed_only_when_nobody_else_has_one():
    before = signal.getsignal(signal.SIGTERM)  # torch's elastic agent may have installed one
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with staging._sigterm_as_exit():
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, before)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored

        def theirs(signum, frame):
            pass

        signal.signal(signal.SIGTERM, theirs)
        with staging._sigterm_as_exit():
            assert signal.getsignal(signal.SIGTERM) is theirs  # left alone
    finally:
        signal.signal(signal.SIGTERM, before)
