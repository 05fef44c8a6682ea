"""The command line end to end on the synthetic dataset."""

import json

import pytest

from latticerec.cli import main
from latticerec.config import TrainConfig, make_config
from latticerec.errors import ConfigError


def test_train_evaluate_recommend(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", "lightgcn", "--data", "synthetic", "--epochs", "3", "--seed", "1",
               "--set", "embed_dim=16", "n_layers=2", "--out", str(out), "--quiet"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("model", "data", "best_epoch", "epochs_run", "train_seconds", "valid", "test",
                "config"):
        assert key in metrics
    for split in ("valid", "test"):
        for m in ("recall@20", "ndcg@20", "precision@20", "hit@20", "recall@10", "ndcg@50"):
            assert 0.0 <= metrics[split][m] <= 1.0
    assert metrics["epochs_run"] == 3
    assert metrics["config"]["model_config"]["n_layers"] == 2
    assert metrics["config"]["train"]["seed"] == 1
    assert (out / "checkpoint.pt").exists() and (out / "best.pt").exists()
    printed = capsys.readouterr().out
    assert "recall@20" in printed

    assert main(["evaluate", "--run", str(out), "--json"]) == 0
    evaluated = capsys.readouterr().out
    payload = json.loads(evaluated[evaluated.index("{"):])
    assert payload["test"]["recall@20"] == pytest.approx(metrics["test"]["recall@20"])

    assert main(["recommend", "--run", str(out), "--user", "3", "-k", "5"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "item" in ln and "score" in ln]
    assert len(lines) == 5


def test_resume_via_cli(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "mf", "--data", "synthetic", "--epochs", "2", "--out", str(out),
            "--quiet", "--set", "embed_dim=8"]
    assert main(args) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert main([*args, "--resume"]) == 0  # already finished: resumes to the same result
    again = json.loads((out / "metrics.json").read_text())
    assert again["test"] == first["test"]
    changed = ["train", "--model", "mf", "--data", "synthetic", "--epochs", "2", "--out", str(out),
               "--quiet", "--set", "embed_dim=16", "--resume"]
    assert main(changed) == 2
    assert "differ" in capsys.readouterr().err
    longer = [*args[:6], "3", *args[7:], "--set", "patience=50", "--resume"]  # --epochs 3
    assert main(longer) == 0  # the stopping rule may change: the run continues
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 3


def test_unknown_set_key_lists_valid_keys(tmp_path, capsys):
    rc = main(["train", "--model", "mf", "--data", "synthetic", "--set", "learning_rate=0.1",
               "--out", str(tmp_path), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "lr" in err and "embed_dim" in err


@pytest.mark.parametrize("pair,msg", [("lr=abc", "lr"), ("epochs=1.5", "epochs"),
                                      ("lr=-1", "lr must be > 0"), ("ndcg=foo", "ndcg"),
                                      ("novalue", "key=value")])
def test_bad_values_are_clear_errors(pair, msg, tmp_path, capsys):
    rc = main(["train", "--model", "mf", "--data", "synthetic", "--set", pair,
               "--out", str(tmp_path), "--quiet"])
    assert rc == 2
    assert msg in capsys.readouterr().err


def test_unknown_model_and_missing_data(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "nope", "--data", "synthetic"])
    assert main(["train", "--model", "mf", "--data", str(tmp_path / "missing"), "--quiet",
                 "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path)]) == 2
    assert main(["recommend", "--run", str(tmp_path), "--user", "0"]) == 2


def test_config_is_frozen_and_typed():
    cfg = make_config(TrainConfig, {"lr": "0.01", "topk": "5,20"})
    assert cfg.lr == 0.01 and cfg.topk == (5, 20)
    with pytest.raises(AttributeError):
        cfg.lr = 1.0  # frozen
    with pytest.raises(ConfigError, match="valid keys"):
        make_config(TrainConfig, {"lrr": 1})
    with pytest.raises(ConfigError, match="topk must include 20"):
        make_config(TrainConfig, {"topk": "5,10"})
