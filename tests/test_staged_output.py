"""Every dataset builder writes through ``staged_folder``: the output folder appears complete, or
not at all, even when the build fails after its first files were written (full disk, a bad late
input), and nothing is left beside it."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest
from test_data_amazon import write_raw

import latticerec.datasets.amazon as amazon
import latticerec.datasets.coldstart as coldstart
import latticerec.datasets.recbole as recbole
import latticerec.datasets.synth as synth
from latticerec.data import make_synthetic
from latticerec.data.readers import load_dataset
from latticerec.datasets.prepare import staged_folder
from latticerec.errors import DataError


def _fail_late(monkeypatch, module):
    """The report is the last file a builder writes: failing there leaves the data files written."""
    def boom(path, *a, **k):
        assert any(path.parent.iterdir()), "the data files should be written before the report"
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(module, "atomic_write_json", boom)


def _builders(tmp_path):
    raw = write_raw(tmp_path / "raw")
    source = make_synthetic(n_users=120, n_items=80, seed=3)
    inter = tmp_path / "rb" / "toy.inter"
    inter.parent.mkdir()
    inter.write_text("user_id:token\titem_id:token\n" + "".join(
        f"{u}\t{i}\n" for u in range(12) for i in range(u % 4, u % 4 + 12)))
    return {
        "synth": (synth, lambda out: synth.write_synthetic(out, n_users=30, n_items=40, n_interactions=300,
                                                           dims={"image": 4})),
        "import-recbole": (recbole, lambda out: recbole.import_recbole(inter, out, progress=False)),
        "build-amazon": (amazon, lambda out: amazon.build_amazon(raw["reviews"], out, images=raw["images"],
                                                                 core=3, text_model=None, max_bad=5,
                                                                 progress=False, log=lambda m: None)),
        "cold-start": (coldstart, lambda out: coldstart.cold_start_split(source, out, seed=1)),
        "inductive": (coldstart, lambda out: coldstart.inductive_cold_start_split(source, out, seed=1)),
    }


@pytest.mark.parametrize("builder", ["synth", "import-recbole", "build-amazon", "cold-start", "inductive"])
def test_a_late_failure_leaves_no_folder_and_no_partial_files(builder, tmp_path, monkeypatch):
    module, build = _builders(tmp_path)[builder]
    before = set((tmp_path / "outputs").iterdir()) if (tmp_path / "outputs").exists() else set()
    (tmp_path / "outputs").mkdir(exist_ok=True)
    _fail_late(monkeypatch, module)
    with pytest.raises(OSError, match="No space left"):
        build(tmp_path / "outputs" / "ds")
    assert set((tmp_path / "outputs").iterdir()) == before  # not ds, not .ds.<random>.partial
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


def test_sigterm_cleans_up_and_a_killed_builds_partial_folder_is_removed_next_time(tmp_path):
    with pytest.raises(SystemExit) as stop:
        with staged_folder(tmp_path / "ds") as tmp:
            (tmp / "x").write_text("x")
            os.kill(os.getpid(), signal.SIGTERM)
    assert stop.value.code == 143 and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    # SIGKILL cannot be caught: its partial folder (a pid that no longer runs) goes with the next build
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".ds.{dead.pid}-0123abcd.partial"
    stale.mkdir()
    (stale / "junk").write_text("x")
    live = tmp_path / f".ds.{os.getpid()}-0123abcd.partial"  # a build in progress keeps its folder
    live.mkdir()
    with staged_folder(tmp_path / "ds") as tmp:
        (tmp / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "ds"]
