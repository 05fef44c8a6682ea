"""An interrupted run resumed from its last checkpoint ends exactly where the uninterrupted one does."""

import pytest
import torch

from latticerec.train.build import build_model, resolve_config
from latticerec.train.trainer import fit


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("name", ["lightgcn", "ngcf"])
def test_resume_after_interrupt_gives_the_same_result(name, blocks, tmp_path):
    run = resolve_config(name, {"embed_dim": "8", "epochs": "7", "eval_every": "2",
                                "batch_size": "64", "lr": "0.01"})
    full = fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path / "a", progress=False)

    model = build_model(run, blocks)
    original = model.on_epoch_start

    def stop_at_five(epoch):
        if epoch == 5:  # checkpoint was written after epoch 4; epoch 5 is lost
            raise Interrupt
        original(epoch)

    model.on_epoch_start = stop_at_five
    with pytest.raises(Interrupt):
        fit(model, blocks, run.train, out_dir=tmp_path / "b", progress=False)

    resumed_model = build_model(run, blocks)
    resumed = fit(resumed_model, blocks, run.train, out_dir=tmp_path / "b", resume=True,
                  progress=False)
    assert resumed["epochs_run"] == full["epochs_run"] == 7
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resumed["test"] == full["test"]
    assert resumed["valid"] == full["valid"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_without_checkpoint_is_a_clear_error(blocks, tmp_path):
    run = resolve_config("mf", {"epochs": "1"})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
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
