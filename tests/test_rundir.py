"""The run folder and the atomic writes under it: lock, stale temporary files, file modes, write
errors that name the path, weights files that are never unpickled, the kNN graph cache's checks."""

import errno
import os
import stat
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from latticerec.errors import OutputError, RunError
from latticerec.graphs.cache import KnnGraphCache
from latticerec.io import atomic_write_json, check_writable, remove_stale_temps
from latticerec.train.rundir import RunDir


class Payload:
    """A pickle that creates ``marker`` when unpickled: what a hostile run folder would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickle_bomb(path, marker):
    torch.save({"model": {}, "epoch": 1, "evil": Payload(marker)}, path)


@pytest.mark.parametrize("name", [RunDir.BEST, RunDir.CHECKPOINT])
def test_crafted_pickle_is_refused_without_running_it(tmp_path, name):
    marker = tmp_path / "pwned"
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    write_pickle_bomb(run.file(name), marker)
    assert not marker.exists()
    with pytest.raises(RunError, match="refused"):
        run.load_best() if name == RunDir.BEST else run.load_checkpoint()
    assert not marker.exists()


# -- lock ---------------------------------------------------------------------------------------


def test_lock_is_exclusive_reentrant_and_released(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():
        text = run.file(RunDir.LOCK).read_text().split()
        assert int(text[0]) == os.getpid()
        with RunDir(tmp_path / "run").lock():  # the same process: re-entrant
            pass
        assert run.file(RunDir.LOCK).exists()
    assert not run.file(RunDir.LOCK).exists()


def test_a_live_process_lock_is_a_clear_error_and_a_dead_ones_is_taken_over(tmp_path):
    run = RunDir(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        run.file(RunDir.LOCK).write_text(f"{other.pid} {socket.gethostname()}\n")
        with pytest.raises(RunError, match=f"locked by process {other.pid}"), run.lock():
            pass
        assert run.file(RunDir.LOCK).exists()  # someone else's lock is left alone
    finally:
        other.kill()
        other.wait()
    with pytest.warns(UserWarning, match="stale lock"), run.lock():
        assert int(run.file(RunDir.LOCK).read_text().split()[0]) == os.getpid()
    assert not run.file(RunDir.LOCK).exists()


def test_two_processes_training_into_one_folder(tmp_path):
    """A second ``latticerec train`` into a folder that a running one holds fails at once."""
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from latticerec.train.rundir import RunDir\n"
         f"with RunDir({str(folder)!r}).lock():\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        done = subprocess.run([sys.executable, "-m", "latticerec.cli", "train", "--model", "mf",
                               "--epochs", "1", "--out", str(folder), "--quiet"],
                              capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2
    assert f"locked by process {holder.pid}" in done.stderr and "Traceback" not in done.stderr
    assert not (folder / RunDir.CONFIG).exists()


def test_prepare_refuses_an_existing_run_and_overwrite_removes_it(tmp_path):
    run = RunDir(tmp_path)
    run.write_config({"model": "mf", "data": "synthetic", "config": {}})
    with pytest.raises(RunError, match=r"already holds a run \(config.json\)"):
        run.prepare(resume=False, overwrite=False)
    run.prepare(resume=True, overwrite=False)
    assert run.has_config()
    run.prepare(resume=False, overwrite=True)
    assert not run.has_config()


# -- atomic writes ------------------------------------------------------------------------------


def test_outputs_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        RunDir(tmp_path).save_best({"model": {}, "epoch": 1})
    finally:
        os.umask(old)
    for name in ("a.json", RunDir.BEST):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_stale_temporary_files_are_removed_when_the_lock_is_taken(tmp_path):
    stale = tmp_path / ".best.pt.abcd1234.tmp"
    stale.write_bytes(b"half a file")
    keep = tmp_path / "notes.tmp"  # not one of ours
    keep.write_text("x")
    with RunDir(tmp_path).lock():
        assert not stale.exists()
    assert keep.exists()


def test_cache_removes_only_old_temporary_files(tmp_path):
    cache = KnnGraphCache(tmp_path)
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    old, fresh = graphs / ".knn-x.npz.old12345.tmp", graphs / ".knn-y.npz.new12345.tmp"
    for p in (old, fresh):
        p.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    cache.check_writable()
    assert not old.exists() and fresh.exists()  # a concurrent writer's file survives
    assert remove_stale_temps(graphs) == [fresh]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_write_names_the_path_and_leaves_no_temporary_file(tmp_path, monkeypatch, code):
    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    target = tmp_path / "metrics.json"
    with pytest.raises(OutputError, match=str(target)):
        atomic_write_json(target, {"x": 1})
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_is_reported_up_front(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=f"{blocker}/run"):
        check_writable(blocker / "run")
    with pytest.raises(OutputError, match="not writable"):
        RunDir(blocker / "run").check_writable()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_reported_up_front(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            check_writable(tmp_path)
    finally:
        tmp_path.chmod(0o700)


# -- per-user file ------------------------------------------------------------------------------


def test_per_user_file_round_trip_and_validation(tmp_path):
    run = RunDir(tmp_path)
    users = np.array([0, 3, 5])
    run.write_per_user(users, {"recall@20": np.array([0.0, 0.5, 1.0])}, epoch=4)
    back = run.read_per_user()
    np.testing.assert_array_equal(back["users"], users)
    np.testing.assert_array_equal(back["recall@20"], [0.0, 0.5, 1.0])
    assert int(back["epoch"]) == 4
    run.write_per_user(users, {"recall@20": np.array([0.0, np.nan, 1.0])}, epoch=4)
    with pytest.raises(RunError, match="'recall@20'"):
        run.read_per_user()
    with open(run.file(RunDir.PER_USER), "wb") as fh:
        np.save(fh, users)
    with pytest.raises(RunError, match="not a .npz"):
        run.read_per_user()


# -- kNN graph cache ----------------------------------------------------------------------------


def _features(n=12, d=5, seed=0):
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(n, d)), dtype=torch.float32)


def _entry(cache, feats, k):
    path = cache.path_for(feats, k)
    with np.load(path, allow_pickle=False) as z:
        return path, {name: z[name] for name in z.files}


TAMPER = {
    "index out of bounds": lambda a: {**a, "neighbours": np.where(a["neighbours"] == 0, 10**6,
                                                                  a["neighbours"])},
    "negative index": lambda a: {**a, "neighbours": -a["neighbours"] - 1},
    "wrong shape": lambda a: {**a, "neighbours": a["neighbours"][:-1], "values": a["values"][:-1]},
    "float indices": lambda a: {**a, "neighbours": a["neighbours"].astype(np.float32)},
    "nan values": lambda a: {**a, "values": np.full_like(a["values"], np.nan)},
    "other key": lambda a: {**a, "key": np.array("0" * 40)},
    "no key": lambda a: {k: v for k, v in a.items() if k != "key"},
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_a_tampered_cache_entry_is_rebuilt_with_a_warning(tmp_path, case):
    feats, k = _features(), 4
    cache = KnnGraphCache(tmp_path)
    expected = cache(feats, k).to_dense()
    path, arrays = _entry(cache, feats, k)
    np.savez(path, **TAMPER[case](arrays))
    with pytest.warns(UserWarning, match="corrupt kNN graph cache entry"):
        got = cache(feats, k).to_dense()
    assert torch.equal(got, expected)
    assert cache.misses == 2 and cache.hits == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(cache(feats, k).to_dense(), expected)  # the rebuilt entry is good
    assert cache.hits == 1


@pytest.mark.parametrize("cut", [0, 10, 200, -30])
def test_a_truncated_cache_entry_is_rebuilt(tmp_path, cut):
    feats, k = _features(), 4
    cache = KnnGraphCache(tmp_path)
    expected = cache(feats, k).to_dense()
    path = cache.path_for(feats, k)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.warns(UserWarning, match="corrupt"):
        assert torch.equal(cache(feats, k).to_dense(), expected)


def test_a_cache_entry_of_other_features_under_this_name_is_rebuilt(tmp_path):
    """A valid entry copied under another entry's name (same shapes) would silently poison the
    graph: the key stored inside it gives it away."""
    k = 4
    a, b = _features(seed=0), _features(seed=1)
    cache = KnnGraphCache(tmp_path)
    expected = cache(a, k).to_dense()
    cache(b, k)
    cache.path_for(a, k).write_bytes(cache.path_for(b, k).read_bytes())
    with pytest.warns(UserWarning, match="stored key differs"):
        assert torch.equal(cache(a, k).to_dense(), expected)


def test_a_cache_entry_written_as_a_pickle_is_not_loaded(tmp_path):
    feats, k = _features(), 4
    cache = KnnGraphCache(tmp_path)
    expected = cache(feats, k).to_dense()
    marker = tmp_path / "pwned"
    with open(cache.path_for(feats, k), "wb") as fh:
        np.save(fh, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.warns(UserWarning, match="corrupt"):
        assert torch.equal(cache(feats, k).to_dense(), expected)
    assert not marker.exists()
