"""Tuning on validation only: trials, SQLite resume, the best config, and never the test split."""

import json
import os

import optuna
import pytest

from latticerec.cli import main
from latticerec.errors import ConfigError
from latticerec.experiment import runner
from latticerec.experiment.tune import search_space, tune
from latticerec.models.registry import MODELS
from latticerec.train.build import resolve_config

FIXED = {"embed_dim": 8}


def run_tune(tmp_path, trials, **kw):
    return tune("lattice", "synthetic", trials, tmp_path / "study", epochs=2, fixed=FIXED, warmup=1,
                log=lambda m: None, **kw)


@pytest.mark.parametrize("name", sorted(m for m in MODELS if getattr(MODELS[m], "SEARCH_SPACE", None)))
def test_every_declared_search_space_resolves_at_its_bounds(name):
    space = search_space(name)
    for end in (0, -1):
        values = {k: (spec[1][end] if spec[0] == "choice" else spec[1:][end]) for k, spec in space.items()}
        resolve_config(name, values)  # every key is an option of the model, every bound valid


def test_a_model_without_search_space_is_a_clear_error():
    with pytest.raises(ConfigError, match="declares no SEARCH_SPACE"):
        search_space("cb")


def test_three_trials_then_the_sqlite_study_resumes(tmp_path, monkeypatch):
    record = run_tune(tmp_path, 3)
    assert record["trials"]["complete"] + record["trials"]["pruned"] == 3
    assert record["test"] is not None and 0 <= record["test"]["recall@20"] <= 1
    assert record["best_valid"] == pytest.approx(record["valid"]["recall@20"])  # same weights, re-read
    best = json.loads((tmp_path / "study" / "best_config.json").read_text())
    assert best["model"] == "lattice" and set(best["options"]) == {"embed_dim", *search_space("lattice")}

    # a killed process left a trial running: it is marked failed and replaced
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    study = optuna.load_study(study_name="lattice-synthetic", storage=storage)
    dead = study.ask()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a process id that is surely gone
    dead.set_user_attr("owner", f"{pid} {__import__('socket').gethostname()}")

    import latticerec.train.trainer as trainer

    calls = []
    real = trainer.fit
    monkeypatch.setattr(trainer, "fit", lambda *a, **k: calls.append(1) or real(*a, **k))
    record = run_tune(tmp_path, 4)
    assert len(calls) == 1  # only the missing trial ran
    assert record["trials"]["fail"] == 1 and record["trials"]["complete"] + record["trials"]["pruned"] == 4
    assert run_tune(tmp_path, 4)["best_trial"] == record["best_trial"] and len(calls) == 1

    with pytest.raises(Exception, match="other settings"):  # same study, other settings
        tune("lattice", "synthetic", 4, tmp_path / "study", epochs=3, fixed=FIXED, log=lambda m: None)


def test_the_objective_never_evaluates_the_test_split(tmp_path, monkeypatch):
    """Fails if any trial ranks the test split: the test-split evaluation raises."""
    import latticerec.train.trainer as trainer

    real_split, real_rank = trainer.evaluate_split, trainer.evaluate_ranking
    test_matrix = runner.load_data("synthetic").test  # the dataset object the trials use

    def split_guard(model, dataset, split, *a, **k):
        if split == "test":
            raise AssertionError("the tuning objective evaluated the test split")
        return real_split(model, dataset, split, *a, **k)

    def rank_guard(users, items, truth, *a, **k):
        if truth is test_matrix:
            raise AssertionError("the tuning objective ranked the test split")
        return real_rank(users, items, truth, *a, **k)

    monkeypatch.setattr(trainer, "evaluate_split", split_guard)
    monkeypatch.setattr(trainer, "evaluate_ranking", rank_guard)
    record = run_tune(tmp_path, 3, evaluate_test=False)
    assert record["test"] is None and record["trials"]["complete"] + record["trials"]["pruned"] == 3
    with pytest.raises(AssertionError, match="test split"):  # the guard is live: the end reads test
        run_tune(tmp_path, 3, evaluate_test=True)


def test_each_trial_reports_its_validation_curve_to_the_median_pruner(tmp_path):
    record = tune("mf", "synthetic", 7, tmp_path / "study", epochs=4, fixed=FIXED, warmup=0,
                  log=lambda m: None)
    db = f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    study = optuna.load_study(study_name="mf-synthetic", storage=db)
    for t in study.trials:  # the validation curve, epoch by epoch; a pruned trial stops early
        steps = sorted(t.intermediate_values)
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 1
        assert len(steps) == 4 or t.state == optuna.trial.TrialState.PRUNED
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(max(t.intermediate_values.values()))  # best valid epoch
    assert record["trials"]["complete"] + record["trials"]["pruned"] == 7


def test_train_config_round_trip(tmp_path, capsys):
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps({"model": "lightgcn", "options": {"embed_dim": 8, "n_layers": 1, "lr": 0.002}}))
    out = tmp_path / "run"
    assert main(["train", "--model", "lightgcn", "--config", str(cfg), "--set", "n_layers=2", "--epochs", "1",
                 "--out", str(out), "--quiet"]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["model_config"] == {"embed_dim": 8, "reg": 1e-4, "n_layers": 2,
                                     "adj_norm": "symmetric"}  # --set on top
    assert saved["train"]["lr"] == 0.002 and saved["train"]["epochs"] == 1
    toml = tmp_path / "best.toml"
    toml.write_text('model = "lightgcn"\n[options]\nembed_dim = 8\nlearning_rate = 0.1\n')
    assert main(["train", "--model", "lightgcn", "--config", str(toml), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert str(toml) in err and "'learning_rate'" in err and "Traceback" not in err
    for text, needle in (('{"model": "mf", "options": {}}', "written for model 'mf'"),
                         ('{"options": {}, "extra": 1}', "unknown key(s) extra"), ("{", "unreadable")):
        cfg.write_text(text)
        args = ["train", "--model", "lightgcn", "--config", str(cfg), "--out", str(tmp_path / "r3")]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert str(cfg) in err and needle in err


def test_train_takes_the_model_from_the_config_file_and_names_the_file_when_it_has_none(tmp_path, capsys):
    cfg = tmp_path / "best.toml"
    cfg.write_text('model = "lightgcn"\n[options]\nembed_dim = 8\nn_layers = 1\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == "lightgcn" and saved["config"]["model_config"]["n_layers"] == 1
    for text, needle in (("[options]\nembed_dim = 8\n", "names no model; give --model"),
                         ('model = "latice"\n', "model 'latice' is not in the registry")):
        cfg.write_text(text)
        assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r2")]) == 2
        err = capsys.readouterr().err
        assert str(cfg) in err and needle in err and "Traceback" not in err
    assert main(["train", "--out", str(tmp_path / "r3")]) == 2
    assert "give --model MODEL, or --config FILE" in capsys.readouterr().err


def test_cli_tune_writes_a_best_config_that_train_takes(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tune", "--model", "mf", "--data", "synthetic", "--trials", "2", "--epochs", "1",
                 "--out", str(out), "--set", "embed_dim=8"]) == 0
    printed = capsys.readouterr().out
    assert "best trial" in printed and "test metrics (read once" in printed
    assert main(["train", "--model", "mf", "--config", str(out / "best_config.json"), "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 0
    best = json.loads((out / "best_trial.json").read_text())
    trained = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert trained["train"]["lr"] == pytest.approx(best["best_options"]["lr"])


def test_study_settings_with_tuples_match_after_storage_round_trip(tmp_path):
    from latticerec.experiment.tune import _check_study

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    settings = {"space": {"cooc_topk": ["choice", (0, 10, 50)]}, "fixed": {"modalities": ("image",)}}
    _check_study(study, settings, "db")
    _check_study(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}"), settings, "db")
    with pytest.raises(Exception, match="other settings \\(fixed\\)"):
        _check_study(study, {**settings, "fixed": {}}, "db")


def test_a_wrapping_model_also_tunes_its_backbones_options():
    assert search_space("lattice")["n_layers"] == search_space("lightgcn")["n_layers"]
    assert "n_layers" not in search_space("lattice", {"backbone": "mf"})
    ngcf = search_space("mmgef", {"backbone": "ngcf"})
    assert ngcf["mess_dropout"] == search_space("ngcf")["mess_dropout"] and "cooc_topk" in ngcf
    assert "n_layers" not in search_space("lattice", {"n_layers": 2})  # held fixed: not tuned
    assert search_space("lattice")["item_layers"] == ("int", 1, 6)  # the model's own space is kept


def test_a_study_starts_from_another_studys_best_then_samples_within_the_same_budget(tmp_path, capsys):
    from latticerec.experiment.tune import start_point

    backbone = tune("lightgcn", "synthetic", 2, tmp_path / "lgcn", epochs=1, fixed=FIXED, log=lambda m: None)
    best = backbone["best_params"]
    assert set(best) == {"lr", "reg", "n_layers"}
    assert start_point(tmp_path / "lgcn") == best == start_point(tmp_path / "lgcn" / "best_trial.json")
    out = tmp_path / "lattice"
    assert main(["tune", "--model", "lattice", "--data", "synthetic", "--trials", "2", "--epochs", "1",
                 "--out", str(out), "--set", "embed_dim=8", "--start-from", str(tmp_path / "lgcn")]) == 0
    capsys.readouterr()
    study = optuna.load_study(study_name="lattice-synthetic", storage=f"sqlite:///{out / 'study.db'}")
    first, second = study.trials
    defaults = resolve_config("lattice").model_config
    assert first.params == {**best, "knn_k": defaults.knn_k, "lambda_coeff": defaults.lambda_coeff,
                            "item_layers": defaults.item_layers,
                            "structure_weight": defaults.structure_weight}
    assert second.params != first.params  # then TPE samples
    assert study.user_attrs["settings"]["start"] == first.params
    # resumed with one more trial: the start point is not trained twice
    record = tune("lattice", "synthetic", 3, out, epochs=1, fixed=FIXED, log=lambda m: None, start=best)
    trials = optuna.load_study(study_name="lattice-synthetic", storage=f"sqlite:///{out / 'study.db'}").trials
    assert sum(record["trials"].values()) == 3 and [t.params for t in trials].count(first.params) == 1
    with pytest.raises(Exception, match="other settings \\(start\\)"):  # another start: another study
        tune("lattice", "synthetic", 3, out, epochs=1, fixed=FIXED, log=lambda m: None,
             start={**best, "n_layers": 1 + best["n_layers"] % 4})


def test_a_bad_start_point_is_a_clear_error(tmp_path):
    from latticerec.experiment.tune import start_point, start_trial

    space = search_space("lattice")
    with pytest.raises(ConfigError, match="best_trial.json is missing"):
        start_point(tmp_path)
    (tmp_path / "best_trial.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable best_trial.json"):
        start_point(tmp_path)
    (tmp_path / "best_trial.json").write_text(json.dumps({"best_params": {"lr": [1]}}))
    with pytest.raises(ConfigError, match="'best_params' must be"):
        start_point(tmp_path / "best_trial.json")
    with pytest.raises(ConfigError, match=r"lr=0\.5 is outside lattice's search space \(log \[0\.0001"):
        start_trial("lattice", space, {"lr": 0.5}, {})
    with pytest.raises(ConfigError, match="n_layers=2.5 is outside"):
        start_trial("lattice", space, {"n_layers": 2.5}, {})
    with pytest.raises(ConfigError, match="none of its options \\(knn_k_typo\\) is tuned"):
        start_trial("lattice", space, {"knn_k_typo": 10}, {})
    # an option the space does not tune is left out; a default out of range is left to the sampler
    assert start_trial("lattice", {"lr": ("log", 1e-4, 1e-2), "knn_k": ("int", 5, 50)},
                       {"lr": 1e-3, "mess_dropout": 0.1}, {"knn_k": 100}) == {"lr": 1e-3}


def test_a_start_trial_lost_with_a_killed_process_is_trained_again(tmp_path):
    from latticerec.experiment.runner import flat_options
    from latticerec.experiment.tune import start_trial, suggest

    space = search_space("lattice", FIXED)
    start = start_trial("lattice", space, {"lr": 2e-3, "reg": 1e-3, "n_layers": 2},
                        flat_options(resolve_config("lattice", FIXED).to_dict()))
    storage = f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    (tmp_path / "study").mkdir()
    study = optuna.create_study(study_name="lattice-synthetic", storage=storage, direction="maximize")
    study.enqueue_trial(start)
    lost = study.ask()
    assert suggest(lost, space) == start  # the start trial, running ...
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    lost.set_user_attr("owner", f"{pid} {__import__('socket').gethostname()}")  # ... in a dead process
    record = run_tune(tmp_path, 1, start=start)
    trials = optuna.load_study(study_name="lattice-synthetic", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and trials[1].params == start
    assert trials[0].user_attrs["killed"] and record["best_trial"] == 1


def test_a_resumed_study_does_not_draw_the_values_of_its_first_trials_again(tmp_path):
    run_tune(tmp_path, 2)
    run_tune(tmp_path, 4)  # a new process would restart the sampler's random stream
    trials = optuna.load_study(study_name="lattice-synthetic",
                               storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}").trials
    drawn = [tuple(sorted(t.params.items())) for t in trials]
    assert len(drawn) == 4 and len(set(drawn)) == 4
    first = [t.params for t in trials[:2]]
    fresh = tmp_path / "again"  # a fresh study with the same seed draws the same first trials
    tune("lattice", "synthetic", 2, fresh, epochs=2, fixed=FIXED, warmup=1, log=lambda m: None)
    again = optuna.load_study(study_name="lattice-synthetic", storage=f"sqlite:///{fresh / 'study.db'}")
    assert [t.params for t in again.trials] == first


def test_a_bad_storage_or_an_out_holding_another_study_is_a_clear_error(tmp_path, capsys):
    base = ["tune", "--model", "mf", "--data", "synthetic", "--trials", "1", "--epochs", "1"]
    for extra, needle in ((["--storage", "not-a-url"], "--storage: cannot open the optuna storage"),
                          (["--storage", f"sqlite:///{tmp_path}/missing/dir/s.db"], "cannot open")):
        assert main([*base, "--out", str(tmp_path / "a"), *extra]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as exit_:  # an option argparse checks
        main([*base, "--out", str(tmp_path / "a"), "--warmup", "-1"])
    assert exit_.value.code == 2 and "--warmup: must be >= 0" in capsys.readouterr().err
    done = tmp_path / "done"  # a finished study of another model: its best config is not replaced
    done.mkdir()
    (done / "best_trial.json").write_text(json.dumps({"study": "lightgcn-synthetic"}))
    (done / "best_config.json").write_text('{"model": "lightgcn", "options": {}}')
    assert main([*base, "--out", str(done)]) == 2
    assert "holds the study 'lightgcn-synthetic'" in capsys.readouterr().err
    assert json.loads((done / "best_config.json").read_text())["model"] == "lightgcn"
    running = tmp_path / "running"  # a study under way (no best_trial.json yet): its trials/ are its own
    running.mkdir()
    optuna.create_study(storage=f"sqlite:///{running / 'study.db'}", study_name="lightgcn-synthetic")
    assert main([*base, "--out", str(running)]) == 2
    assert "holds the study 'lightgcn-synthetic'" in capsys.readouterr().err
    assert optuna.get_all_study_names(f"sqlite:///{running / 'study.db'}") == ["lightgcn-synthetic"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main([*base, "--out", str(afile)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_a_config_file_with_a_non_string_model_or_a_key_given_twice_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "best.toml"
    cfg.write_text('model = ["mf"]\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "is not in the registry" in err and "Traceback" not in err
    cfg = tmp_path / "best.json"  # JSON would keep the last: TOML's rule, an error
    cfg.write_text('{"model": "mf", "options": {"epochs": 1}, "model": "lightgcn"}')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "'model' given twice" in err and not (tmp_path / "r2").exists()
