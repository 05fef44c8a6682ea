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


def test_a_run_saved_before_an_option_existed_resumes(tmp_path):
    """Options added later (here ``adj_norm``, ``rebuild_on_eval``) take their defaults when an older
    run folder is resumed, as when it is loaded."""
    out = tmp_path / "run"
    args = ["train", "--model", "lightgcn", "--data", "synthetic", "--epochs", "1", "--out", str(out),
            "--quiet", "--set", "embed_dim=8"]
    assert main(args) == 0
    saved = json.loads((out / "config.json").read_text())
    config = saved["config"]
    assert config["model_config"].pop("adj_norm") == "symmetric"
    assert config["train"].pop("rebuild_on_eval") is False
    (out / "config.json").write_text(json.dumps(saved))
    longer = [*args[:6], "2", *args[7:], "--resume"]
    assert main(longer) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 2


def test_unknown_set_key_lists_valid_keys(tmp_path, capsys):
    rc = main(["train", "--model", "mf", "--data", "synthetic", "--set", "learning_rate=0.1",
               "--out", str(tmp_path), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "lr" in err and "embed_dim" in err


BAD_OPTIONS = [
    (["--set", "lr=abc"], "lr"), (["--set", "epochs=1.5"], "epochs"),
    (["--set", "lr=-1"], "lr must be a finite number > 0"), (["--set", "ndcg=foo"], "ndcg"),
    (["--set", "novalue"], "key=value"),
    (["--set", "lr=nan"], "lr: 'nan' is not a finite number"),
    (["--set", "lr=inf"], "lr: 'inf' is not a finite number"),
    (["--set", "lr=-Infinity"], "lr: '-Infinity' is not a finite number"),
    (["--set", "reg=nan"], "reg: 'nan' is not a finite number"),  # a model field: checked generically
    (["--seed", "-1"], "seed must be an integer in [0, 4294967295], got -1"),
    (["--seed", "1e1"], "seed: expected int, got '1e1'"),
    (["--epochs", "0"], "epochs must be an integer in [1, 10000000], got 0"),
    (["--epochs", "1_9"], "epochs: expected int, got '1_9'"),
    (["--set", "batch_size=0"], "batch_size must be an integer in [1, 16777216]"),
    (["--set", "eval_batch_size=99999999999"], "eval_batch_size must be an integer"),
    (["--set", "embed_dim=1e1"], "embed_dim: expected int, got '1e1'"),
    (["--set", "topk=20,0"], "topk must list positive cut-offs"),
    (["--set", "topk=10,20,20"], "topk lists a cut-off twice: 10,20,20"),
    (["--set", "patience=true"], "patience: expected int"),
    # a key given twice: the last would win silently
    (["--set", "lr=0.1", "lr=0.2"], "--set lr: given twice (lr=0.1 and lr=0.2)"),
    (["--set", "lr=0.1", "--set", "lr=0.1"], "--set lr: given twice"),
    (["--epochs", "1", "--set", "epochs=5"], "--epochs 1 and --set epochs=5: give the option once"),
    (["--seed", "1", "--set", "seed=1"], "--seed 1 and --set seed=1"),
    (["--device", "bogus"], "--device 'bogus': expected cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "--device 'cuda:x': expected cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize("extra,msg", BAD_OPTIONS)
def test_bad_values_are_clear_errors(extra, msg, tmp_path, capsys, monkeypatch):
    import latticerec.data.readers as readers

    monkeypatch.setattr(readers, "load_dataset", _must_not_load)
    rc = main(["train", "--model", "mf", "--data", "synthetic", *extra,
               "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("latticerec: error: ") and msg in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_backbone_flag_and_set_backbone_is_an_error(tmp_path, capsys, monkeypatch):
    """``--backbone ngcf --set backbone=lightgcn`` trained NGCF without a word: refused like
    ``--epochs`` with ``--set epochs``."""
    import latticerec.data.readers as readers

    monkeypatch.setattr(readers, "load_dataset", _must_not_load)
    rc = main(["train", "--model", "lattice", "--data", "synthetic", "--backbone", "ngcf", "--set",
               "backbone=lightgcn", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 2
    assert "--backbone ngcf and --set backbone=lightgcn: give the option once" in capsys.readouterr().err


@pytest.mark.parametrize("choice", [["--backbone", "ngcf"], ["--set", "backbone=ngcf"]])
def test_a_config_file_is_checked_against_the_backbone_chosen_outside_it(tmp_path, capsys, monkeypatch,
                                                                         choice):
    """A file of NGCF options with ``--backbone ngcf`` was refused ("unknown option 'mess_dropout'"):
    the file was checked against the default backbone (LightGCN) before the flag was applied."""
    import json

    import latticerec.data.readers as readers

    cfg = tmp_path / "ngcf.json"
    cfg.write_text(json.dumps({"model": "lattice", "options": {"mess_dropout": 0.2}}))
    monkeypatch.setattr(readers, "load_dataset", _must_not_load)
    rc = main(["train", "--model", "lattice", "--data", "synthetic", "--config", str(cfg), *choice,
               "--set", "epochs=0", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "mess_dropout" not in err and "epochs" in err  # past the file, stopped at epochs=0
    rc = main(["train", "--model", "lattice", "--data", "synthetic", "--config", str(cfg),
               "--out", str(tmp_path / "run"), "--quiet"])  # without the choice: LightGCN has no such option
    assert rc == 2 and f"{cfg}: " in capsys.readouterr().err


def _must_not_load(*args, **kwargs):
    raise AssertionError("the data was loaded before the options were checked")


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
    # built in Python, not parsed: a bool is no learning rate, topk a tuple of integers
    for bad, msg in (({"lr": True}, "lr must be a finite number > 0"),
                     ({"topk": (20, 10.5)}, "topk must be a tuple of integers"),
                     ({"topk": (20, True)}, "topk must be a tuple of integers"),
                     ({"topk": [10, 20]}, "topk must be a tuple of integers")):
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**bad)


def test_help_texts_are_plain_text(capsys):
    for argv in (["--help"], ["train", "--help"], ["evaluate", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "``" not in text and ":func:" not in text and ":mod:" not in text, argv


TRAIN = ["train", "--model", "mf", "--data", "synthetic", "--epochs", "2", "--quiet",
         "--set", "embed_dim=8"]


def test_an_existing_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*TRAIN, "--seed", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds a run" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert main([*TRAIN, "--seed", "5", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["train"]["seed"] == 5
    assert main([*TRAIN, "--out", str(out), "--overwrite", "--resume"]) == 2
    assert "give one of them" in capsys.readouterr().err
    # --overwrite with a mistyped --data: the error, and the old run untouched (it used to be deleted
    # before the data was read); a good overwrite also removes the old run's curves
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "curves.png" in before
    typo = [a if a != "synthetic" else str(tmp_path / "no-such-data") for a in TRAIN]
    assert main([*typo, "--out", str(out), "--overwrite"]) == 2
    assert "no-such-data" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\nstale")
    pop = ["train", "--model", "pop", "--data", "synthetic", "--quiet"]  # nothing to train: no curves
    assert main([*pop, "--out", str(out), "--overwrite"]) == 0
    assert not (out / "curves.png").exists()  # the old run's figure went with it


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["best.pt", "checkpoint.pt"])
def test_a_crafted_pickle_in_a_run_folder_is_refused_without_running_it(tmp_path, capsys, name):
    import torch

    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "epoch": 2, "evil": Payload(marker)}, out / name)
    capsys.readouterr()
    commands = [["evaluate", "--run", str(out)]] if name == "best.pt" else []
    commands.append([*TRAIN, "--out", str(out), "--resume"])
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{out / name}" in err and "refused" in err, err
        assert not marker.exists(), argv


def test_unwritable_output_or_cache_folder_is_reported_before_the_data_load(tmp_path, capsys,
                                                                         monkeypatch):
    import latticerec.data.readers as readers

    monkeypatch.setattr(readers, "load_dataset", _must_not_load)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main([*TRAIN, "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert "run folder not writable" in err and str(blocker / "run") in err
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--cache-dir", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert "cache folder not writable" in err and str(blocker) in err
    assert not (tmp_path / "run").exists()
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--cache-dir", str(blocker)]) == 2
    assert "cache folder not writable" in capsys.readouterr().err


def test_a_full_disk_during_training_is_a_clear_error_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    import torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("latticerec: error: cannot write ") and "the disk is full" in last
    assert str(out / "checkpoint.pt") in last
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / ".lock").exists()


def test_evaluate_refuses_changed_data(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rows = [(u, i, lab) for u in range(6) for i, lab in ((u, 0), ((u + 1) % 6, 0), ((u + 2) % 6, 0),
                                                          ((u + 3) % 6, 1), ((u + 4) % 6, 2))]
    inter = data / "toy.inter"
    inter.write_text("userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t{x}\n" for u, i, x in rows))
    out = tmp_path / "run"
    assert main(["train", "--model", "mf", "--data", str(data), "--epochs", "1", "--quiet",
                 "--out", str(out), "--set", "embed_dim=4"]) == 0
    assert main(["evaluate", "--run", str(out)]) == 0
    rows[0] = (0, 5, 0)  # one training interaction moved
    inter.write_text("userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t{x}\n" for u, i, x in rows))
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out)]) == 2
    assert "the data changed" in capsys.readouterr().err
    assert main(["train", "--model", "mf", "--data", str(data), "--epochs", "2", "--quiet",
                 "--out", str(out), "--set", "embed_dim=4", "--resume"]) == 2
    assert "changed" in capsys.readouterr().err
    # a config.json without its hash (hand-edited, or an older writer): best.pt's hash still catches it
    meta = json.loads((out / "config.json").read_text())
    del meta["dataset_hash"]
    (out / "config.json").write_text(json.dumps(meta))
    assert main(["evaluate", "--run", str(out)]) == 2
    assert "content hash differs from best.pt's" in capsys.readouterr().err


def test_evaluate_says_when_a_run_is_unfinished_or_sampled(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--set", "eval_users=5"]) == 0
    (out / "metrics.json").unlink()  # as if training were still going (or was killed)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--json"]) == 0
    text = capsys.readouterr().out
    assert "the run has not finished (no metrics.json)" in text and "eval_users=5" in text
    assert json.loads(text[text.index("{"):])["finished"] is False


def test_train_help_names_every_registered_model_and_the_parser_imports_no_torch():
    import subprocess
    import sys

    from latticerec.cli import build_parser
    from latticerec.models.registry import MODELS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    model_help = next(a.help for a in train._actions if "--model" in a.option_strings)
    assert all(name in model_help for name in MODELS)
    code = ("import sys; from latticerec.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # `latticerec serve` starts without torch


def test_a_gpu_index_without_that_gpu_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """``--device cuda:N`` is checked like ``--device cuda``: no CUDA, or no GPU N, is an error
    before the data load (it was a torch message, 'not linked with support for cuda devices',
    from the first tensor moved)."""
    import torch

    import latticerec.data.readers as readers

    monkeypatch.setattr(readers, "load_dataset", _must_not_load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*TRAIN, "--device", "cuda:0", "--out", str(tmp_path / "run")]) == 2
    assert "--device cuda:0 was asked for but no CUDA GPU is available" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main([*TRAIN, "--device", "cuda:1", "--out", str(tmp_path / "run")]) == 2
    assert "--device cuda:1: this machine has 1 CUDA GPU(s)" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--device", "cuda:7"]) == 2
    assert "cuda:7" in capsys.readouterr().err


@pytest.mark.parametrize("edit,msg", [
    (lambda c: c.update(config={}), "run config: no 'model'"),
    (lambda c: c["config"].pop("train"), "run config: no 'train'"),
    (lambda c: c["config"].update(train=[1]), "'train' must be an object"),
    (lambda c: c["config"].update(model_config=[1]), "'model_config' must be an object"),
    (lambda c: c["config"].update(backbone_config={"embed_dim": 8}), "wraps no backbone"),
    (lambda c: c["config"]["model_config"].update(bogus=1), "model mf: unknown key(s) bogus"),
    (lambda c: c["config"]["train"].update(lr=float("nan")), "lr: nan is not a finite number"),
])
def test_a_hand_edited_config_json_is_an_error_naming_it(tmp_path, capsys, edit, msg):
    """--resume and evaluate read config.json back: a malformed one is one line naming the file
    (a missing key or a list for an object was a KeyError/TypeError traceback on --resume)."""
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    edit(saved)
    (out / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()
    for argv in ([*TRAIN, "--out", str(out), "--resume"], ["evaluate", "--run", str(out)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("latticerec: error: ") and str(out / "config.json") in err and msg in err, err
    (out / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # deeper than the JSON parser goes
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 2
    assert f"{out / 'config.json'}: unreadable (JSON nested too deeply)" in capsys.readouterr().err


def test_tampered_best_weights_are_refused_by_evaluate_and_export(tmp_path, capsys):
    """NaN, another dtype, or best.pt of another model config or other data: each refused naming
    best.pt (they were loaded, and evaluated or exported, silently)."""
    import shutil

    import torch

    out, other = tmp_path / "run", tmp_path / "other"
    assert main([*TRAIN, "--out", str(out)]) == 0
    assert main([*TRAIN, "--out", str(other), "--set", "reg=0.5"]) == 0  # same shapes, other config
    good = (out / "best.pt").read_bytes()

    def tamper(change):
        best = torch.load(out / "best.pt", weights_only=True)
        change(best)
        torch.save(best, out / "best.pt")

    def first(best):
        return next(iter(best["model"].values()))

    cases = [
        (lambda: tamper(lambda b: first(b).__setitem__((0, 0), float("nan"))), "holds NaN or infinite"),
        (lambda: tamper(lambda b: b["model"].update({k: v.double() for k, v in b["model"].items()})),
         "torch.float64"),
        (lambda: tamper(lambda b: b.update(dataset_hash="0" * 64)), "trained on other data"),
        (lambda: shutil.copy(other / "best.pt", out / "best.pt"), "another model config"),
    ]
    capsys.readouterr()
    for change, msg in cases:
        (out / "best.pt").write_bytes(good)
        change()
        for argv in (["evaluate", "--run", str(out)],
                     ["export", "--run", str(out), "--out", str(tmp_path / "model"), "--overwrite"]):
            assert main(argv) == 2, (argv, msg)
            err = capsys.readouterr().err
            assert str(out / "best.pt") in err and msg in err, err
    (out / "best.pt").write_bytes(good)
    assert main(["evaluate", "--run", str(out)]) == 0


def test_a_train_that_fails_before_writing_leaves_no_empty_run_folder(tmp_path, capsys):
    out = tmp_path / "new-run"
    assert main(["train", "--model", "mf", "--data", str(tmp_path / "typo"), "--out", str(out)]) == 2
    assert not out.exists()
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 2  # nothing to resume
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()  # a folder the user made is left as it was
    assert main(["train", "--model", "mf", "--data", str(tmp_path / "typo"), "--out", str(kept)]) == 2
    assert kept.is_dir()


def test_evaluate_finds_a_moved_dataset_with_data_and_checks_it_is_the_same(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["data", "synth", "--users", "40", "--items", "50", "--interactions", "400",
                 "--dims", "image=4", "--out", str(data)]) == 0
    out = tmp_path / "run"
    assert main(["train", "--model", "mf", "--data", str(data), "--epochs", "1", "--quiet",
                 "--out", str(out), "--set", "embed_dim=4"]) == 0
    data.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out)]) == 2
    err = capsys.readouterr().err
    assert "records is not there (moved or deleted); give its new path with --data" in err
    assert main(["evaluate", "--run", str(out), "--data", str(tmp_path / "moved")]) == 0
    other = tmp_path / "other"
    assert main(["data", "synth", "--users", "40", "--items", "50", "--interactions", "400",
                 "--dims", "image=4", "--seed", "1", "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--data", str(other)]) == 2
    assert f"{other}: the data changed" in capsys.readouterr().err


def test_an_empty_cache_dir_is_refused_not_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--cache-dir", ""]) == 2
    assert "--cache-dir: an empty path" in capsys.readouterr().err
    assert not (tmp_path / "graphs").exists() and not (tmp_path / "run").exists()
