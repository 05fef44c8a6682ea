"""Distributed training on two gloo processes over loopback equals training in one process.

One ``torch.multiprocessing`` spawn of two ranks trains every case with ``fit(..., dist=...)``; this
process then trains the same cases alone and compares: parameters to 1e-5 after several Adam steps
on uneven shares of each global batch (47 triples split 24 + 23), the validation and test metrics
and the per-user test arrays (distributed evaluation), and the run folders (only rank 0 writes).
"""

import json
import os
import re
import socket
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_block_dataset

from latticerec.cli import main
from latticerec.errors import LatticeRecError
from latticerec.train import distributed
from latticerec.train.build import build_model, resolve_config
from latticerec.train.rundir import RunDir
from latticerec.train.trainer import fit

WORLD = 2
COMMON = {"embed_dim": "8", "batch_size": "47", "lr": "0.01"}
# name -> (model, overrides); evaluation only at the last epoch, so the final weights are the best
CASES = {
    "lightgcn": ("lightgcn", {**COMMON, "epochs": "3", "eval_every": "3"}),
    "lattice": ("lattice", {**COMMON, "epochs": "3", "eval_every": "3", "knn_k": "4"}),
    "micro": ("micro", {**COMMON, "epochs": "2", "eval_every": "2", "knn_k": "4", "cl_batch": "16"}),
    # the released loop: user-uniform sampler, zeroed (not freed) gradients
    "released": ("lattice", {**COMMON, "epochs": "2", "eval_every": "2", "knn_k": "4",
                             "sampler": "user", "zero_grad": "zeros"}),
}
ATTEMPTS = 3  # spawns of the two ranks before a signal-killed rank fails the tests (about 9 s each)
RESUME = ("lightgcn", {**COMMON, "epochs": "4", "eval_every": "2"})  # interrupted after epoch 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(model_name, overrides, out, dist=None, resume=False, epochs=None):
    run = resolve_config(model_name, {**overrides, **({"epochs": str(epochs)} if epochs else {})})
    data = make_block_dataset()
    model = build_model(run, data)
    result = fit(model, data, run.train, out_dir=out, progress=False, dist=dist, resume=resume)
    return model, result


def _save(folder: Path, name: str, model, result) -> None:
    torch.save(model.state_dict(), folder / f"{name}.pt")
    (folder / f"{name}.json").write_text(json.dumps({k: result[k] for k in ("valid", "test",
                                                                           "best_epoch", "epochs_run")}))


def _rank(rank: int, port: int, folder: Path) -> None:
    """One rank: every case, and the resume case (2 epochs, then resumed to 4)."""
    # this rank's stderr in a file of its own: a process killed by a signal (a C++ abort in gloo's
    # transport threads) leaves no Python traceback, only what it printed there
    os.dup2(os.open(folder / f"rank{rank}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with distributed.joined(distributed.init("cpu")) as dist:
        for name, (model_name, overrides) in CASES.items():
            model, result = _train(model_name, overrides, folder / f"{name}-run{rank}", dist)
            _save(folder, f"{name}-rank{rank}", model, result)
        model_name, overrides = RESUME
        out = folder / f"resume-run{rank}"
        _train(model_name, overrides, out, dist, epochs=2)
        model, result = _train(model_name, overrides, out, dist, resume=True)
        _save(folder, f"resume-rank{rank}", model, result)
        try:  # rank 0's folder holds a run: rank 0 refuses it, rank 1 must not wait for it
            _train(*CASES["lightgcn"], folder / f"lightgcn-run{rank}", dist)
        except LatticeRecError as exc:
            (folder / f"refused-rank{rank}.txt").write_text(str(exc))
    from latticerec.__main__ import _exit

    _exit(0)  # as ``python -m latticerec`` ends a rank: flushed, then no interpreter teardown


def _last_words(path: Path) -> str:
    lines = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()] \
        if path.exists() else []
    return f"{path.name}: " + (" / ".join(lines[-3:]) if lines else "(nothing printed)")


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("this torch build has no gloo backend for torch.distributed")
    # A spawn whose rank was killed by a signal is retried, up to ATTEMPTS in all, each retry with a
    # warning that carries both ranks' last words: torch's gloo/TCPStore transport can abort a
    # process from its own threads (pytorch/pytorch#50701, #188266); CI saw it once in two runs of
    # this fixture. The abort seen here (1 in 20 runs of ``train --nproc 2``) came in the
    # interpreter's teardown, which every rank now skips (``os._exit``, as ``__main__._exit``).
    # A rank that raises fails at once.
    for attempt in range(1, ATTEMPTS + 1):
        folder = tmp_path_factory.mktemp("ddp")
        try:
            torch.multiprocessing.spawn(_rank, args=(_free_port(), folder), nprocs=WORLD, join=True)
            return folder
        except torch.multiprocessing.ProcessExitedException as exc:
            report = f"{exc}; " + "; ".join(_last_words(folder / f"rank{r}.err") for r in range(WORLD))
            if attempt == ATTEMPTS:
                pytest.fail(f"{ATTEMPTS} times: {report}", pytrace=False)
            warnings.warn(f"two-rank spawn, attempt {attempt} of {ATTEMPTS} killed: {report}",
                          stacklevel=1)


def _load(folder: Path, name: str):
    return (torch.load(folder / f"{name}.pt", weights_only=True),
            json.loads((folder / f"{name}.json").read_text()))


def _assert_same_run(folder: Path, name: str, single_model, single_result, single_dir: Path):
    reference = single_model.state_dict()
    for rank in range(WORLD):
        weights, result = _load(folder, f"{name}-rank{rank}")
        for key, value in reference.items():
            assert torch.allclose(weights[key], value, rtol=0, atol=1e-5), (name, rank, key)
        assert result["epochs_run"] == single_result["epochs_run"]
        for split in ("valid", "test"):  # distributed evaluation: every rank gets the means
            for metric, value in single_result[split].items():
                assert result[split][metric] == pytest.approx(value, abs=1e-9), (name, rank, metric)
    ours = RunDir(folder / f"{name}-run0").read_per_user()
    theirs = RunDir(single_dir).read_per_user()
    assert set(ours) == set(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], atol=1e-12, err_msg=key)


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_train_and_evaluate_as_one_process(spawned, name, tmp_path):
    model_name, overrides = CASES[name]
    model, result = _train(model_name, overrides, tmp_path / "single")
    _assert_same_run(spawned, name, model, result, tmp_path / "single")


def test_resume_broadcasts_rank_0s_checkpoint(spawned, tmp_path):
    model_name, overrides = RESUME
    model, result = _train(model_name, overrides, tmp_path / "single")
    _assert_same_run(spawned, "resume", model, result, tmp_path / "single")
    single = RunDir(tmp_path / "single").load_checkpoint()["model"]
    ranked = RunDir(spawned / "resume-run0").load_checkpoint()["model"]
    for key, value in single.items():
        assert torch.allclose(ranked[key], value, rtol=0, atol=1e-5), key


def test_only_rank_0_writes_the_run_folder(spawned):
    for name in [*CASES, "resume"]:
        assert not (spawned / f"{name}-run1").exists(), name  # rank 1 was given a folder: untouched
        files = sorted(p.name for p in (spawned / f"{name}-run0").iterdir())
        assert files == sorted([RunDir.CHECKPOINT, RunDir.BEST, RunDir.PER_USER]), (name, files)


def test_a_failing_rank_stops_the_others(spawned):
    assert "already holds a run" in (spawned / "refused-rank0.txt").read_text()
    assert "another rank of the distributed run failed" in (spawned / "refused-rank1.txt").read_text()


def test_batch_shares_and_weights_cover_the_batch():
    sizes = [distributed.share(47, r, 3) for r in range(3)]
    assert [(s.start, s.stop) for s in sizes] == [(0, 16), (16, 32), (32, 47)]
    batch = np.arange(5)
    ranks = [distributed.Dist(rank=r, world=7, device=torch.device("cpu")) for r in range(7)]
    parts = [d.local_batch(batch) for d in ranks]
    assert np.concatenate([p[0][0] for p in parts if p[1] > 0]).tolist() == batch.tolist()
    assert sum(w for _, w in parts) == pytest.approx(1.0)
    assert [len(p[0][0]) for p in parts] == [1] * 7  # an empty share runs the first row, weight 0
    assert [w for _, w in parts][5:] == [0.0, 0.0]


def _write_mmrec(folder: Path) -> Path:
    """The block dataset in the MMRec layout (``blocks.inter`` + ``*_feat.npy``)."""
    data = make_block_dataset()
    folder.mkdir()
    lines = ["userID\titemID\tx_label"]
    for label, split in enumerate((data.train, data.valid, data.test)):
        coo = split.tocoo()
        lines += [f"{u}\t{i}\t{label}" for u, i in zip(coo.row, coo.col, strict=True)]
    (folder / "blocks.inter").write_text("\n".join(lines) + "\n")
    for name, feats in data.features.items():
        np.save(folder / f"{name}_feat.npy", feats)
    return folder


def test_cli_nproc_2_launches_ranks_and_matches_one_process(tmp_path):
    if not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend for torch.distributed")
    args = ["train", "--model", "lattice", "--data", str(_write_mmrec(tmp_path / "blocks")), "--quiet",
            "--epochs", "2", "--set", "embed_dim=8", "batch_size=47", "knn_k=4",
            "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--out", str(tmp_path / "two"), "--nproc", "2"]) == 0
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["processes"] == 2 and "processes" not in one
    for split in ("valid", "test"):
        for metric, value in one[split].items():
            assert two[split][metric] == pytest.approx(value, abs=1e-6), metric
    assert not list((tmp_path / "two").glob(".lock*"))


@pytest.mark.parametrize("rank", [True, False])
def test_a_rank_ends_without_the_interpreters_teardown(monkeypatch, rank):
    """A rank's process ends by ``os._exit`` (gloo's threads can abort the interpreter's teardown
    after the run was written); any other ``python -m latticerec`` by ``sys.exit``."""
    from latticerec import __main__ as entry

    ended = []
    monkeypatch.setattr(distributed, "launched", lambda: rank)
    monkeypatch.setattr(os, "_exit", lambda status: ended.append(("os._exit", status)))
    monkeypatch.setattr(sys, "exit", lambda status: ended.append(("sys.exit", status)))
    entry._exit(3)
    assert ended == [("os._exit" if rank else "sys.exit", 3)]


def test_a_malformed_world_size_is_an_error_naming_it(monkeypatch):
    env = {"RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "WORLD_SIZE": "two"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(LatticeRecError, match="WORLD_SIZE='two'"):
        distributed.launched()
    from latticerec import __main__ as entry

    ended = []
    monkeypatch.setattr(sys, "exit", lambda status: ended.append(status))
    entry._exit(2)  # main() reported it; the exit is a plain one, not a second traceback
    assert ended == [2]


def test_one_machine_runs_keep_gloo_on_loopback(monkeypatch):
    lo = distributed.loopback_interface()
    if lo is None:
        pytest.skip("no loopback interface named lo or lo0 on this machine")
    monkeypatch.setattr(os, "environ", {})
    distributed.pin_gloo_to_loopback()
    assert os.environ == {"GLOO_SOCKET_IFNAME": lo}
    os.environ["GLOO_SOCKET_IFNAME"] = "eth7"  # the user's choice stands
    distributed.pin_gloo_to_loopback()
    assert os.environ["GLOO_SOCKET_IFNAME"] == "eth7"
    assert [distributed._is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "10.0.0.1", "node7")] \
        == [True, True, True, False, False]


@pytest.mark.parametrize("env, says", [
    ({"RANK": "5", "WORLD_SIZE": "2"}, "RANK='5' in the environment is not a whole number in [0, 1]"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK='-1'"),
    ({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK='abc'"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE='0' in the environment is not a whole number >= 1"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "70000"}, "MASTER_PORT='70000'"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2"}, "LOCAL_RANK='2'"),
])
def test_a_malformed_torchrun_environment_is_an_error_not_a_hang(monkeypatch, env, says):
    # RANK=5 of 2 used to wait for its peers forever; WORLD_SIZE=0 silently trained one process
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", **env}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(LatticeRecError, match=re.escape(says)):
        distributed.launched()
