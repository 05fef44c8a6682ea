"""``protocol=released``: the preset, its validated training options, and their effect in ``fit``."""

import json

import pytest
import torch
from test_resume import _interrupted_run

from latticerec.cli import main
from latticerec.config import TrainConfig, make_config, to_dict
from latticerec.errors import ConfigError
from latticerec.train.build import build_model, config_from_dict, resolve_config
from latticerec.train.rundir import RunDir
from latticerec.train.trainer import fit

SMALL = {"embed_dim": "8", "batch_size": "64", "lr": "0.01"}


def test_default_config_is_unchanged():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.batch_size, cfg.topk, cfg.ndcg, cfg.eval_every, cfg.patience) == (
        1e-3, 2048, (10, 20, 50), "standard", 1, 20)
    assert (cfg.sampler, cfg.lr_schedule, cfg.zero_grad, cfg.reg_on, cfg.protocol) == (
        "interaction", "constant", "none", "ego", "latticerec")
    run = resolve_config("lattice")
    assert run.train == cfg and run.backbone_config.reg == 1e-4 and run.backbone_config.n_layers == 3


def test_released_preset_is_applied_and_overridable():
    run = resolve_config("lattice", {"protocol": "released"})
    t = run.train
    assert (t.lr, t.batch_size, t.sampler, t.lr_schedule, t.zero_grad, t.reg_on) == (
        5e-4, 1024, "user", "released", "zeros", "final")
    assert (t.topk, t.ndcg, t.eval_every, t.patience) == ((10, 20), "legacy", 5, 11)
    assert run.model_config.lambda_coeff == 0.9
    assert (run.backbone_config.reg, run.backbone_config.n_layers) == (1e-5, 2)
    over = resolve_config("lattice", {"protocol": "released", "lr": "1e-3", "n_layers": "3",
                                      "sampler": "interaction"})
    assert (over.train.lr, over.backbone_config.n_layers, over.train.sampler) == (1e-3, 3, "interaction")
    assert over.train.batch_size == 1024  # the rest of the preset stays
    assert resolve_config("micro", {"protocol": "released"}).model_config.lambda_coeff == 0.9
    mf = resolve_config("lattice", {"protocol": "released", "backbone": "mf"}).backbone_config
    assert mf.reg == 1e-5 and not hasattr(mf, "n_layers")
    assert resolve_config("cb", {"protocol": "released"}).train.sampler == "user"  # cb has no reg


@pytest.mark.parametrize("key", ["sampler", "lr_schedule", "zero_grad", "reg_on", "protocol"])
def test_each_new_option_is_validated(key):
    with pytest.raises(ConfigError, match=f"{key} must be one of"):
        make_config(TrainConfig, {key: "bogus"}, where="training")
    with pytest.raises(ConfigError, match=f"{key} must be one of"):
        resolve_config("mf", {key: "bogus"})


def test_old_saved_configs_load_with_the_defaults():
    saved = resolve_config("lightgcn").to_dict()
    for key in ("sampler", "lr_schedule", "zero_grad", "reg_on", "protocol"):
        del saved["train"][key]
    assert config_from_dict(saved).train == TrainConfig()
    released = resolve_config("lattice", {"protocol": "released"})
    assert config_from_dict(json.loads(json.dumps(released.to_dict()))) == released


def _record_adam_lrs(monkeypatch):
    lrs = []
    step = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    return lrs


def test_released_lr_schedule_reaches_the_optimiser(blocks, monkeypatch):
    lrs = _record_adam_lrs(monkeypatch)
    run = resolve_config("mf", {**SMALL, "epochs": "3", "lr_schedule": "released"})
    fit(build_model(run, blocks), blocks, run.train, progress=False)
    n = len(lrs) // 3  # batches per epoch
    assert len(lrs) == 3 * n and n > 1
    for e in range(3):
        assert lrs[e * n:(e + 1) * n] == [pytest.approx(0.01 * 0.96 ** (e / 50), rel=1e-12)] * n
    assert lrs[n] < lrs[0]


def test_user_sampler_draws_the_released_batches(blocks, monkeypatch):
    lrs = _record_adam_lrs(monkeypatch)
    for sampler in ("user", "interaction"):
        run = resolve_config("mf", {**SMALL, "epochs": "1", "batch_size": "48", "sampler": sampler})
        fit(build_model(run, blocks), blocks, run.train, progress=False)
    assert blocks.train.nnz % 48 == 0  # so that the two counts differ
    assert len(lrs) == (blocks.train.nnz // 48 + 1) + blocks.train.nnz // 48


def _projection_moves(blocks, zero_grad):
    """For each step of one LATTICE epoch: did the graph learner's projections change?"""
    run = resolve_config("lattice", {**SMALL, "epochs": "1", "batch_size": "16", "zero_grad": zero_grad})
    model = build_model(run, blocks)
    weights = [p for name, p in model.named_parameters() if name.startswith("structure.projections")]
    assert weights
    snapshots = []
    loss = model.loss

    def recording(*args):
        snapshots.append([w.detach().clone() for w in weights])
        return loss(*args)

    model.loss = recording
    fit(model, blocks, run.train, progress=False)
    snapshots.append([w.detach().clone() for w in weights])
    return [any(not torch.equal(a, b) for a, b in zip(s, t, strict=True))
            for s, t in zip(snapshots, snapshots[1:], strict=False)]


def test_zero_grad_zeros_moves_projections_on_every_step(blocks):
    zeros = _projection_moves(blocks, "zeros")
    none = _projection_moves(blocks, "none")
    assert len(zeros) == len(none) > 3
    assert all(zeros)  # Adam's momentum moves them after the first (rebuild) batch too
    assert none[0] and not any(none[1:])  # a None gradient: Adam skips them


@pytest.mark.parametrize("name", ["lightgcn", "lattice"])
def test_reg_on_final_is_the_released_formula(name, blocks):
    run = resolve_config(name, {"embed_dim": "8", "reg": "0.1"})
    model = build_model(run, blocks)
    users, pos, neg = torch.tensor([0, 3, 5]), torch.tensor([0, 3, 2]), torch.tensor([1, 4, 7])
    torch.manual_seed(0)
    ego = model.loss(users, pos, neg)
    model.reg_on = "final"
    torch.manual_seed(0)
    final = model.loss(users, pos, neg)
    user_all, item_all = model.propagate()
    u, p, n = user_all[users], item_all[pos], item_all[neg]
    by_hand = 0.1 * 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 3
    assert final["reg"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert final["bpr"].item() == pytest.approx(ego["bpr"].item(), rel=1e-6)
    assert final["reg"].item() != pytest.approx(ego["reg"].item(), rel=1e-3)


def test_fit_sets_reg_on_on_the_model_and_its_backbone(blocks):
    run = resolve_config("lattice", {**SMALL, "epochs": "1", "reg_on": "final"})
    model = build_model(run, blocks)
    fit(model, blocks, run.train, progress=False)
    assert model.reg_on == model.backbone.reg_on == "final"


def test_released_run_resumes_to_the_uninterrupted_result(blocks, tmp_path):
    run = resolve_config("lattice", {"protocol": "released", **SMALL, "epochs": "7", "eval_every": "2"})
    full = fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path / "a", progress=False)
    _interrupted_run(run, blocks, tmp_path / "b", 5)
    resumed = fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path / "b", resume=True,
                  progress=False)
    assert (resumed["epochs_run"], resumed["best_epoch"]) == (full["epochs_run"], full["best_epoch"])
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    a = RunDir(tmp_path / "a").load_checkpoint()["model"]
    b = RunDir(tmp_path / "b").load_checkpoint()["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_without_the_new_options_still_resumes(blocks, tmp_path):
    run = resolve_config("mf", {**SMALL, "epochs": "2"})
    fit(build_model(run, blocks), blocks, run.train, out_dir=tmp_path, progress=False)
    rd = RunDir(tmp_path)
    ckpt = rd.load_checkpoint()
    for key in ("sampler", "lr_schedule", "zero_grad", "reg_on", "protocol"):
        del ckpt["train_config"][key]
    rd.save_checkpoint(ckpt)
    longer = make_config(TrainConfig, {**to_dict(run.train), "epochs": 3})
    assert fit(build_model(run, blocks), blocks, longer, out_dir=tmp_path, resume=True,
               progress=False)["epochs_run"] == 3


def test_cli_train_with_the_released_protocol(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", "lattice", "--data", "synthetic", "--epochs", "2", "--quiet",
                 "--set", "protocol=released", "embed_dim=8", "eval_every=1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["config"]["train"]
    assert (train["protocol"], train["sampler"], train["lr"], train["topk"]) == (
        "released", "user", 5e-4, [10, 20])
    assert metrics["epochs_run"] == 2 and 0.0 <= metrics["test"]["recall@20"] <= 1.0
    assert "recall@50" not in metrics["test"]


def test_protocol_flag_is_the_preset(tmp_path):
    import json

    from latticerec.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "mf", "--protocol", "released", "--epochs", "1", "--quiet",
                 "--out", str(out), "--set", "embed_dim=8"]) == 0
    train = json.loads((out / "config.json").read_text())["config"]["train"]
    assert (train["protocol"], train["lr"], train["sampler"]) == ("released", 5e-4, "user")
    assert main(["train", "--model", "mf", "--protocol", "nope", "--out", str(tmp_path / "x")]) == 2
