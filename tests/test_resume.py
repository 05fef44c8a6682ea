"""Resume: an interrupted run continues exactly where the uninterrupted one would be, and only when
the folder's checkpoint, best weights, data and training config belong together."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import make_block_dataset

from latticerec.errors import RunError
from latticerec.train.build import build_model, resolve_config
from latticerec.train.rundir import RunDir
from latticerec.train.trainer import fit


class Interrupt(Exception):
    pass


FAST = {"embed_dim": "8", "epochs": "4", "batch_size": "64", "lr": "0.01"}


def _interrupted_run(run, data, folder, at_epoch):
    """Train into ``folder`` and die at the start of epoch ``at_epoch``."""
    model = build_model(run, data)
    original = model.on_epoch_start

    def stop(epoch):
        if epoch == at_epoch:
            raise Interrupt
        original(epoch)

    model.on_epoch_start = stop
    with pytest.raises(Interrupt):
        fit(model, data, run.train, out_dir=folder, progress=False)


@pytest.fixture
def one_thread():
    """One intra-op thread: a BLAS that adapts its thread count to the machine's load (MKL's dynamic
    threads) may sum in another order between two fits, which is not what resume is about."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["lightgcn", "ngcf"])
def test_resume_after_interrupt_gives_the_same_result(name, blocks, tmp_path, one_thread):
    run = resolve_config(name, {"embed_dim": "8", "epochs": "7", "eval_every": "2",
                                "batch_size": "64", "lr": "0.01"})
    full = fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path / "a", progress=False)
    _interrupted_run(run, blocks, tmp_path / "b", 5)  # checkpoint after epoch 4; epoch 5 is lost
    assert not (tmp_path / "b" / RunDir.LOCK).exists()  # the dying process released its lock

    resumed = fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path / "b", resume=True,
                  progress=False)
    assert resumed["epochs_run"] == full["epochs_run"] == 7
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resumed["test"] == full["test"]
    assert resumed["valid"] == full["valid"]
    a = RunDir(tmp_path / "a").load_checkpoint()["model"]
    b = RunDir(tmp_path / "b").load_checkpoint()["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_without_checkpoint_is_a_clear_error(blocks, tmp_path):
    run = resolve_config("mf", {"epochs": "1"})
    with pytest.raises(RunError, match="no checkpoint"):
        fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path, resume=True,
            progress=False)


def test_resume_with_a_longer_stopping_rule_equals_training_with_it(blocks, tmp_path):
    opts = {"embed_dim": "8", "epochs": "12", "batch_size": "64", "lr": "0.05"}
    short = resolve_config("mf", {**opts, "patience": "1"})
    stopped = fit(build_model(short, blocks), blocks, short.train, out_dir=tmp_path / "b",
                  progress=False)
    assert stopped["stopped_early"] and stopped["epochs_run"] < 12  # the case under test

    long = resolve_config("mf", {**opts, "patience": "1000"})
    fresh = fit(build_model(long, blocks), blocks, long.train, out_dir=tmp_path / "a", progress=False)
    continued = fit(build_model(long, blocks), blocks, long.train, out_dir=tmp_path / "b",
                    resume=True, progress=False)
    assert continued["epochs_run"] == fresh["epochs_run"] == 12
    assert continued["best_epoch"] == fresh["best_epoch"]
    assert continued["test"] == fresh["test"]
    assert [h.get("valid_recall@20") for h in continued["history"]] == \
        [h.get("valid_recall@20") for h in fresh["history"]]


def test_resume_refuses_other_data(blocks, tmp_path):
    run = resolve_config("mf", FAST)
    fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path, progress=False)
    other = make_block_dataset(seed=1)  # same sizes, other interactions: the weights would load
    assert other.content_hash() != blocks.content_hash()
    with pytest.raises(RunError, match="other data"):
        fit(build_model(run, other), other, run.train, out_dir=tmp_path, resume=True, progress=False)


def test_resume_refuses_another_training_config_but_not_a_new_stopping_rule(blocks, tmp_path):
    run = resolve_config("mf", FAST)
    fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path, progress=False)
    changed = dataclasses.replace(run.train, lr=0.02)
    with pytest.raises(RunError, match="another training config"):
        fit(build_model(run, blocks), blocks, changed, out_dir=tmp_path, resume=True, progress=False)
    longer = dataclasses.replace(run.train, epochs=5, patience=3)
    assert fit(build_model(run, blocks), blocks, longer, out_dir=tmp_path, resume=True,
               progress=False)["epochs_run"] == 5


def _rewrite_best(folder, **changes):
    rd = RunDir(folder)
    best = rd.load_best()
    rd.save_best({**best, **changes})


def test_resume_refuses_best_weights_of_another_epoch_or_run(blocks, tmp_path):
    run = resolve_config("mf", FAST)
    fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path / "a", progress=False)
    best_epoch = RunDir(tmp_path / "a").load_checkpoint()["state"]["best_epoch"]
    _rewrite_best(tmp_path / "a", epoch=best_epoch + 7)
    with pytest.raises(RunError, match="different runs"):
        fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path / "a", resume=True,
            progress=False)
    # best.pt of a run on other data, copied in
    other = make_block_dataset(seed=1)
    fit(build_model(run, other), other, run.train, out_dir=tmp_path / "o", progress=False)
    (tmp_path / "a" / RunDir.BEST).write_bytes((tmp_path / "o" / RunDir.BEST).read_bytes())
    _rewrite_best(tmp_path / "a", epoch=best_epoch)
    with pytest.raises(RunError, match="other data"):
        fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path / "a", resume=True,
            progress=False)


def test_resume_repairs_a_best_file_left_behind_by_a_killed_write(blocks, tmp_path):
    """The checkpoint is written before best.pt: a kill between the two leaves an older best.pt of
    the same run, which the resume rewrites from the checkpoint's copy of the best weights."""
    run = resolve_config("mf", FAST)
    fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path, progress=False)
    ckpt = RunDir(tmp_path).load_checkpoint()
    assert ckpt["state"]["best_epoch"] > 1  # the case under test: an older epoch exists
    _rewrite_best(tmp_path, epoch=1, model={k: torch.zeros_like(v) for k, v in ckpt["model"].items()})
    messages = []
    fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path, resume=True, progress=False,
        log=messages.append)
    assert any("rewritten from the checkpoint" in m for m in messages)
    best = RunDir(tmp_path).load_best()
    assert best["epoch"] == ckpt["state"]["best_epoch"]
    for key, value in ckpt["best_model"].items():
        assert torch.equal(best["model"][key], value)


def test_fit_refuses_a_folder_holding_a_run_unless_resume_or_overwrite(blocks, tmp_path):
    run = resolve_config("mf", FAST)
    first = fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path, progress=False)
    before = (tmp_path / RunDir.BEST).read_bytes()
    other = dataclasses.replace(run.train, seed=7)
    with pytest.raises(RunError, match="already holds a run"):
        fit(build_model(run, blocks), blocks, other, out_dir=tmp_path, progress=False)
    assert (tmp_path / RunDir.BEST).read_bytes() == before  # nothing was touched
    again = fit(build_model(run, blocks), blocks, other, out_dir=tmp_path, progress=False,
                overwrite=True)
    assert again["test"] != first["test"]
    with pytest.raises(RunError, match="give one of them"):
        fit(build_model(run, blocks), blocks, other, out_dir=tmp_path, resume=True, overwrite=True,
            progress=False)


def test_per_user_metrics_of_the_best_weights(tmp_path):
    blocks = make_block_dataset(n_blocks=1)  # no structure to learn: users' results differ
    run = resolve_config("lightgcn", FAST)
    model = build_model(run, blocks)
    result = fit(model, blocks, run.train, out_dir=tmp_path, progress=False)
    per_user = RunDir(tmp_path).read_per_user()
    np.testing.assert_array_equal(per_user["users"], np.flatnonzero(np.diff(blocks.test.indptr)))
    assert int(per_user["epoch"]) == result["best_epoch"]
    for key in ("recall@20", "ndcg@20", "recall@10", "ndcg@50", "precision@20", "hit@20"):
        assert per_user[key].shape == per_user["users"].shape
        assert per_user[key].mean() == pytest.approx(result["test"][key], abs=1e-12)
    # each user's Recall@10 recomputed by hand from the best weights (fit leaves them loaded)
    with torch.no_grad():
        users, items = model.full_representations()
        scores = (users @ items.T).numpy()
    scores[blocks.train.toarray() > 0] = -np.inf
    for k, u in enumerate(per_user["users"]):
        top = np.argsort(-scores[u], kind="stable")[:10]
        relevant = blocks.test[u].indices
        assert per_user["recall@10"][k] == pytest.approx(np.isin(relevant, top).mean())
    assert len(np.unique(per_user["recall@10"])) > 1  # the case under test: values differ by user
    # plain arrays only: readable without pickle
    with np.load(tmp_path / RunDir.PER_USER, allow_pickle=False) as z:
        assert set(z.files) >= {"users", "epoch", "recall@20", "ndcg@20"}


def test_a_model_with_nothing_to_train_writes_its_run_files(blocks, tmp_path):
    run = resolve_config("cb", {"epochs": "3"})
    result = fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path, progress=False)
    assert result["best_epoch"] == 0 and result["epochs_run"] == 0
    assert RunDir(tmp_path).load_best()["epoch"] == 0
    assert RunDir(tmp_path).read_per_user()["recall@20"].mean() == \
        pytest.approx(result["test"]["recall@20"], abs=1e-12)


def _tamper_checkpoint(folder, change):
    rd = RunDir(folder)
    ckpt = rd.load_checkpoint()
    change(ckpt)
    rd.save_checkpoint(ckpt)


def _first(weights):
    return weights[next(iter(weights))]


TAMPERED_CHECKPOINTS = [
    (lambda c: _first(c["model"]).__setitem__((0, 0), float("nan")), "its weights: .* NaN or infinite"),
    (lambda c: _first(c["best_model"]).fill_(float("inf")), "its best weights: .* NaN or infinite"),
    (lambda c: c["model"].update({k: v.long() for k, v in c["model"].items()}), "torch.int64"),
    (lambda c: c["best_model"].update({k: v.double() for k, v in c["best_model"].items()}),
     "its best weights: .*torch.float64"),
    (lambda c: _first(c["optimizer"]["state"]).update(exp_avg=torch.zeros(3)),
     "optimizer 'exp_avg' of parameter 0 has shape"),
    (lambda c: _first(c["optimizer"]["state"])["exp_avg_sq"].fill_(float("nan")),
     "optimizer 'exp_avg_sq' of parameter 0 holds NaN"),
    (lambda c: c["state"].update(epoch="3"), "malformed loop state: epoch='3'"),
    (lambda c: c["state"].update(best_recall=float("nan")), "malformed loop state: best_recall=nan"),
    (lambda c: c["state"].update(history="x"), "malformed loop state: history='x'"),
    (lambda c: c["state"].update(epoch=-2), "malformed loop state: epoch=-2"),
]


@pytest.mark.parametrize("change,msg", TAMPERED_CHECKPOINTS)
def test_resume_refuses_a_checkpoint_with_invalid_weights_optimizer_or_loop_state(blocks, tmp_path,
                                                                                  change, msg):
    """Shapes were all a resume checked: NaN weights, another dtype (cast silently by
    load_state_dict), a NaN best_recall (which silently kept every later epoch from counting as
    better) or Adam moments of the wrong shape were taken; a string epoch was a TypeError."""
    run = resolve_config("mf", FAST)
    fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path, progress=False)
    _tamper_checkpoint(tmp_path, change)
    with pytest.raises(RunError, match=msg):
        fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path, resume=True, progress=False)


def test_resume_refuses_a_checkpoint_or_best_file_of_another_model_config(tmp_path, capsys):
    """LightGCN's weights have the same shapes for any n_layers: a checkpoint (or best.pt) copied in
    from a run with another model config was resumed silently; now the files carry the config."""
    from latticerec.cli import main

    args = ["train", "--model", "lightgcn", "--data", "synthetic", "--epochs", "2", "--quiet",
            "--set", "embed_dim=8"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*args, "--out", str(a)]) == 0
    assert main([*args, "n_layers=1", "--out", str(b)]) == 0
    good = {name: (a / name).read_bytes() for name in (RunDir.CHECKPOINT, RunDir.BEST)}
    capsys.readouterr()
    for name, msg in ((RunDir.CHECKPOINT, "was trained with another model or model config"),
                      (RunDir.BEST, "holds the weights of another model config")):
        for other, data in good.items():
            (a / other).write_bytes(data)
        (a / name).write_bytes((b / name).read_bytes())
        assert main([*args, "--epochs", "3", "--out", str(a), "--resume"]) == 2
        err = capsys.readouterr().err
        assert str(a / name) in err and msg in err, err
    for other, data in good.items():
        (a / other).write_bytes(data)
    assert main([*args, "--epochs", "3", "--out", str(a), "--resume"]) == 0


def test_resume_refuses_a_best_file_of_the_right_epoch_with_altered_weights(blocks, tmp_path):
    run = resolve_config("mf", FAST)
    fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path, progress=False)
    best = RunDir(tmp_path).load_best()
    _rewrite_best(tmp_path, model={k: v + 1 for k, v in best["model"].items()})
    with pytest.raises(RunError, match="not the checkpoint's best weights"):
        fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path, resume=True, progress=False)
