"""Experiments from a spec: validation, the grid, skip and resume, results.csv, paired tests."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_dataset
from scipy import stats

from latticerec.cli import main
from latticerec.errors import ConfigError, LatticeRecError
from latticerec.experiment import runner
from latticerec.experiment.results import write_results
from latticerec.experiment.runner import RunTask, run_tasks
from latticerec.experiment.spec import load_spec, parse_spec, plan
from latticerec.experiment.tune import search_space

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "experiments"

TINY = """
name = "tiny"
datasets = ["synthetic"]
seeds = [0, 1]
reference = "mf"
[options]
epochs = 2
embed_dim = 8
[[models]]
label = "mf"
[[models]]
label = "lightgcn"
grid = { n_layers = [1, 2] }
"""


def write_spec(tmp_path, text=TINY, name="spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def count_fit(monkeypatch):
    """Counts the trainer's invocations (and whether each resumed)."""
    import latticerec.train.trainer as trainer

    calls = []
    real = trainer.fit

    def counting(*args, **kwargs):
        calls.append(kwargs.get("resume", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "fit", counting)
    return calls


@pytest.mark.parametrize("text, needle", [
    (TINY + "\nextra = 1\n", "unknown key(s) 'extra'"),
    (TINY.replace('label = "mf"', 'label = "mf"\nopts = {}'), "models[0] (mf): unknown key(s) 'opts'"),
    (TINY.replace("seeds = [0, 1]", "seeds = [0, 0]"), "seeds must be"),
    (TINY.replace('reference = "mf"', 'reference = "nope"'), "reference 'nope' is not a model label"),
    (TINY.replace("epochs = 2", "epochs = 2\nseed = 3"), "set seeds with the top-level 'seeds'"),
    (TINY.replace('datasets = ["synthetic"]', "datasets = []"), "datasets must be a non-empty list"),
    (TINY.replace("[options]", "metrics = ['mrr@5']\n[options]"), "metrics ['mrr@5']"),
    (TINY.replace("n_layers = [1, 2]", "n_layers = []"), "grid.n_layers: expected a non-empty list"),
    (TINY.replace("[options]", "metrics = ['recall@0']\n[options]"), "metrics ['recall@0']"),
    (TINY.replace('label = "mf"', f'label = "{"m" * 101}"\nmodel = "mf"'), "at most 100 characters"),
])
def test_a_bad_spec_is_an_error_naming_the_file_and_the_key(tmp_path, text, needle):
    path = write_spec(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_unknown_options_and_models_are_found_when_planned_naming_file_and_model(tmp_path, capsys):
    path = write_spec(tmp_path, TINY.replace("embed_dim = 8", "embedding = 8"))
    with pytest.raises(ConfigError) as err:
        plan(load_spec(path), tmp_path / "out")
    assert str(path) in str(err.value) and "(mf)" in str(err.value) and "'embedding'" in str(err.value)
    path = write_spec(tmp_path, TINY + '[[models]]\nlabel = "later"\nmodel = "not-registered-yet"\n')
    spec = load_spec(path)  # parses: the registry is checked at run time
    with pytest.raises(ConfigError, match="unknown model 'not-registered-yet'"):
        plan(spec, tmp_path / "out")
    with pytest.raises(ConfigError, match="--set seed"):
        plan(load_spec(write_spec(tmp_path, TINY, "ok.toml")), tmp_path / "out", extra={"seed": "3"})
    assert main(["experiment", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latticerec: error: ") and str(path) in err and "Traceback" not in err


def test_a_spec_metric_the_runs_do_not_evaluate_is_an_error_when_planned(tmp_path, capsys, count_fit):
    path = write_spec(tmp_path, TINY.replace("[options]", "metrics = ['recall@5', 'ndcg@20']\n[options]"))
    with pytest.raises(ConfigError) as err:  # not a summary of NaN (or a KeyError) after the training
        plan(load_spec(path), tmp_path / "out")
    assert str(path) in str(err.value) and "recall@5" in str(err.value) and "topk" in str(err.value)
    assert main(["experiment", str(path), "--out", str(tmp_path / "out"), "--check"]) == 2
    assert "recall@5" in capsys.readouterr().err and count_fit == []
    path = write_spec(tmp_path, TINY.replace("epochs = 2", "epochs = 2\ntopk = [5, 20]").replace(
        "[options]", "metrics = ['recall@5']\n[options]"), "ok.toml")
    assert plan(load_spec(path), tmp_path / "out")


def test_results_leave_out_a_foreign_run_left_in_a_planned_folder(tmp_path, capsys):
    text = TINY.replace("grid = { n_layers = [1, 2] }", "")
    old = write_spec(tmp_path, text.replace("seeds = [0, 1]", "seeds = [0]").replace(
        "epochs = 2", "epochs = 1"), "old.toml")
    assert main(["experiment", str(old), "--out", str(tmp_path / "out")]) == 0
    new = write_spec(tmp_path, text, "new.toml")  # epochs = 2: the old seed-0 runs are other runs
    assert main(["experiment", str(new), "--out", str(tmp_path / "out")]) == 2
    assert "holds a run with other options" in capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "out/results.csv").open()))
    assert [(r["label"], r["seed"], r["epochs"]) for r in rows] == [("mf", "1", "2"), ("lightgcn", "1", "2")]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert [c["seeds"] for c in summary["cells"]] == [[1], [1]]
    assert summary["cells"][1]["tests"]["recall@20"]["seeds"] == [1]


def test_grid_runs_and_a_second_call_skips_every_finished_run(tmp_path, count_fit):
    spec = load_spec(write_spec(tmp_path))
    tasks = plan(spec, tmp_path / "out")
    assert len(tasks) == 2 * 3  # (mf + lightgcn x 2 layers) x 2 seeds
    assert {Path(t.run_dir).relative_to(tmp_path / "out").as_posix() for t in tasks} >= {
        "runs/mf/synthetic/default/seed-0", "runs/lightgcn/synthetic/n_layers=2/seed-1"}
    outcomes = run_tasks(tasks, log=lambda m: None)
    assert [o["state"] for o in outcomes] == ["empty"] * 6 and len(count_fit) == 6
    outcomes = run_tasks(plan(spec, tmp_path / "out"), log=lambda m: None)
    assert [o["state"] for o in outcomes] == ["finished"] * 6 and len(count_fit) == 6  # none trained

    paths = write_results(spec, tasks, tmp_path / "out")
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 6
    for col in ("label", "model", "dataset", "point", "seed", "run_dir", "lr", "embed_dim", "n_layers",
                "epochs", "best_epoch", "epochs_run", "train_seconds", "seconds", "valid_recall@20",
                "test_recall@20", "test_ndcg@20", "test_precision@50"):
        assert col in rows[0], col
    assert {r["n_layers"] for r in rows if r["label"] == "lightgcn"} == {"1", "2"}
    assert all(r["epochs_run"] == "2" and r["embed_dim"] == "8" for r in rows)
    summary = paths["summary"].read_text()
    assert "| lightgcn | n_layers=1 | 2/2 |" in summary and "± " in summary


def test_a_cut_run_resumes_from_its_checkpoint_and_a_foreign_folder_is_never_overwritten(
        tmp_path, count_fit):
    spec = load_spec(write_spec(tmp_path))
    tasks = plan(spec, tmp_path / "out")[:2]
    run_tasks(tasks, log=lambda m: None)
    first = json.loads((Path(tasks[0].run_dir) / "metrics.json").read_text())
    for name in ("metrics.json", "per_user.npz"):  # killed after its checkpoint, before the end
        (Path(tasks[0].run_dir) / name).unlink()
    (Path(tasks[1].run_dir) / "checkpoint.pt").unlink()  # killed before its first evaluation
    for name in ("metrics.json", "per_user.npz", "best.pt"):
        (Path(tasks[1].run_dir) / name).unlink()
    count_fit.clear()
    outcomes = run_tasks(tasks, log=lambda m: None)
    assert [o["state"] for o in outcomes] == ["resumed", "cut"] and count_fit == [True, False]
    again = json.loads((Path(tasks[0].run_dir) / "metrics.json").read_text())
    assert again["test"] == first["test"] and again["epochs_run"] == 2

    changed = RunTask(**{**tasks[0].__dict__, "overrides": {**tasks[0].overrides, "lr": 0.01}})
    before = (Path(tasks[0].run_dir) / "best.pt").read_bytes()
    outcome = run_tasks([changed], log=lambda m: None)[0]
    assert outcome["state"] == "failed" and "other options" in outcome["error"]
    assert (Path(tasks[0].run_dir) / "best.pt").read_bytes() == before


def test_reuse_copies_a_finished_run_with_the_same_options_and_trains_the_others(
        tmp_path, count_fit, capsys):
    first = write_spec(tmp_path, TINY.replace("seeds = [0, 1]", "seeds = [0]"), "first.toml")
    assert main(["experiment", str(first), "--out", str(tmp_path / "a")]) == 0
    assert len(count_fit) == 3
    # a second spec: mf (same options: copied), lightgcn with 3 layers (new: trained), mf at another lr
    second = write_spec(tmp_path, TINY.replace("seeds = [0, 1]", "seeds = [0]").replace(
        "n_layers = [1, 2]", "n_layers = [2, 3]") + '[[models]]\nlabel = "mf-lr"\nmodel = "mf"\n'
        'options = { lr = 0.01 }\n', "second.toml")
    count_fit.clear()
    capsys.readouterr()
    assert main(["experiment", str(second), "--out", str(tmp_path / "b"), "--reuse", str(tmp_path / "a")]
                ) == 0
    assert len(count_fit) == 2  # lightgcn n_layers=3 and mf-lr; mf and lightgcn n_layers=2 copied
    assert capsys.readouterr().err.count("copied from the finished run") == 2
    cell = "runs/mf/synthetic/default/seed-0"
    src, dst = tmp_path / "a" / cell, tmp_path / "b" / cell
    for name in ("best.pt", "per_user.npz", "checkpoint.pt"):
        assert (src / name).read_bytes() == (dst / name).read_bytes()
    copied = json.loads((dst / "metrics.json").read_text())
    assert copied["test"] == json.loads((src / "metrics.json").read_text())["test"]
    assert copied["reused_from"] == str(src)
    rows = {(r["label"], r["point"]): r for r in csv.DictReader((tmp_path / "b/results.csv").open())}
    assert len(rows) == 4 and rows[("mf", "default")]["epochs_run"] == "2"
    # a second call skips all four; the copied folder is a finished run of the spec like any other
    count_fit.clear()
    assert main(["experiment", str(second), "--out", str(tmp_path / "b"), "--reuse", str(tmp_path / "a")]
                ) == 0
    assert count_fit == []


def test_reuse_skips_a_run_trained_on_other_data_content(tmp_path, count_fit):
    spec = load_spec(write_spec(tmp_path, TINY.replace("seeds = [0, 1]", "seeds = [0]")))
    tasks = plan(spec, tmp_path / "a")[:1]
    run_tasks(tasks, log=lambda m: None)
    meta = json.loads((Path(tasks[0].run_dir) / "config.json").read_text())
    meta["dataset_hash"] = "0" * len(meta["dataset_hash"])  # as if the data had changed since
    (Path(tasks[0].run_dir) / "config.json").write_text(json.dumps(meta))
    again = runner.attach_reuse(plan(spec, tmp_path / "b")[:1], [tmp_path / "a"])
    assert again[0].reuse_from == tasks[0].run_dir
    count_fit.clear()
    assert run_tasks(again, log=lambda m: None)[0]["state"] == "empty" and len(count_fit) == 1
    with pytest.raises(LatticeRecError, match="not a folder"):
        runner.attach_reuse(again, [tmp_path / "missing"])


def test_jobs_run_in_worker_processes(tmp_path):
    spec = load_spec(write_spec(tmp_path, TINY.replace("grid = { n_layers = [1, 2] }", "").replace(
        "seeds = [0, 1]", "seeds = [0]")))
    tasks = plan(spec, tmp_path / "out")
    outcomes = run_tasks(tasks, jobs=2, log=lambda m: None)
    assert sorted(o["state"] for o in outcomes) == ["empty"] * 2
    assert all((Path(t.run_dir) / "per_user.npz").exists() for t in tasks)


def _fake_run(run_dir: Path, recall: np.ndarray, seed: int) -> None:
    from latticerec.train.build import resolve_config
    from latticerec.train.rundir import RunDir

    rd = RunDir(run_dir)
    rd.write_config({"model": "mf", "data": "synthetic", "config": resolve_config("mf").to_dict()})
    users = np.arange(recall.size, dtype=np.int64)[::-1].copy()  # any order: aligned by user id
    rd.write_per_user(users, {"recall@20": recall[users]}, epoch=1)
    rd.write_metrics({"model": "mf", "best_epoch": 1, "epochs_run": 1, "train_seconds": 0.1,
                      "config": {"train": {"seed": seed}}, "test": {"recall@20": float(recall.mean())},
                      "history": []})


def test_summary_marks_a_known_significant_pair_and_matches_scipy(tmp_path):
    spec = parse_spec({"datasets": ["synthetic"], "seeds": [0, 1], "reference": "base",
                       "metrics": ["recall@20"], "models": [{"label": "base", "model": "mf"},
                                                            {"label": "better", "model": "mf"},
                                                            {"label": "same", "model": "mf"}]},
                      tmp_path / "known.toml")
    rng = np.random.default_rng(0)
    base = {s: rng.uniform(0, 0.5, 200) for s in (0, 1)}
    values = {"base": base, "better": {s: np.clip(base[s] + rng.uniform(0.0, 0.2, 200), 0, 1) for s in base},
              "same": {s: np.clip(base[s] + rng.normal(0, 0.01, 200), 0, 1) for s in base}}
    tasks = []
    for label in values:
        for seed in (0, 1):
            run_dir = tmp_path / "out" / label / f"seed-{seed}"
            _fake_run(run_dir, values[label][seed], seed)
            tasks.append(RunTask(label=label, model="mf", data="synthetic", seed=seed, run_dir=str(run_dir)))
    paths = write_results(spec, tasks, tmp_path / "out")
    cells = {c["label"]: c for c in json.loads(paths["json"].read_text())["cells"]}
    better = cells["better"]["tests"]["recall@20"]
    a = np.mean([values["better"][s] for s in (0, 1)], axis=0)
    b = np.mean([values["base"][s] for s in (0, 1)], axis=0)
    assert better["p_t"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
    assert better["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-9)
    assert better["effect_size"] == pytest.approx((a - b).mean() / (a - b).std(ddof=1))
    assert better["significant"] and better["seeds"] == [0, 1]
    assert not cells["same"]["tests"]["recall@20"]["significant"]
    assert cells["base"]["tests"] == {}
    table = paths["summary"].read_text()
    row = {ln.split("|")[1].strip(): ln for ln in reversed(table.splitlines()) if "| default | 2/2 |" in ln}
    assert row["better"].startswith("| better | default | 2/2 | ") and row["better"].endswith("* | base |")
    assert "*" not in row["same"]


def test_the_options_column_shows_a_cells_fixed_options_and_its_grid_point(tmp_path):
    spec = parse_spec({"datasets": ["synthetic"], "seeds": [0], "metrics": ["recall@20"],
                       "models": [{"label": "base", "model": "mf"},
                                  {"label": "long", "model": "mf", "options": {"patience": 100}},
                                  {"label": "grid", "model": "mf", "options": {"patience": 100},
                                   "grid": {"embed_dim": [8]}}]}, tmp_path / "opts.toml")
    tasks = []
    for label, grid in (("base", {}), ("long", {}), ("grid", {"embed_dim": 8})):
        run_dir = tmp_path / "out" / label / "seed-0"
        _fake_run(run_dir, np.full(10, 0.1), 0)
        tasks.append(RunTask(label=label, model="mf", data="synthetic", seed=0, grid=grid,
                             run_dir=str(run_dir)))
    table = write_results(spec, tasks, tmp_path / "out")["summary"].read_text()
    assert "| base | default | 1/1 |" in table
    assert "| long | patience=100 | 1/1 |" in table
    assert "| grid | patience=100,embed_dim=8 | 1/1 |" in table


def test_cli_experiment_writes_results_and_summary(tmp_path, capsys):
    path = write_spec(tmp_path, TINY.replace("seeds = [0, 1]", "seeds = [0]").replace(
        "grid = { n_layers = [1, 2] }", ""))
    out = tmp_path / "out"
    assert main(["experiment", str(path), "--out", str(out), "--set", "epochs=1"]) == 0
    assert (out / "results.csv").exists() and (out / "summary.md").exists()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["epochs_run"] for r in rows] == ["1", "1"]
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_the_shipped_specs_are_valid(path, tmp_path):
    from latticerec.experiment.optfile import write_options_file
    from latticerec.experiment.spec import plan_studies
    from latticerec.models.registry import MODELS

    spec = load_spec(path)
    assert spec.path == str(path) and spec.models
    if all(m.model in MODELS for m in spec.models):
        for study in plan_studies(spec, tmp_path):  # as if tuned to the defaults
            write_options_file(Path(study.out) / "best_config.json", study.model, study.fixed)
        assert plan(spec, tmp_path)  # every option resolves against the registry
    else:  # baselines merged later: the unknown model is named, with the spec file
        with pytest.raises(ConfigError, match="unknown model"):
            plan(spec, tmp_path)


def test_the_runner_caches_one_dataset_per_process():
    assert runner.load_data("synthetic") is runner.load_data("synthetic")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_workers_end_when_the_runner_is_killed(tmp_path):
    """SIGKILL to the runner: its pool workers must not go on training (and holding their locks)."""
    spec = write_spec(tmp_path, TINY.replace("epochs = 2", "epochs = 100000\npatience = 100000").replace(
        "seeds = [0, 1]", "seeds = [0]").replace('grid = { n_layers = [1, 2] }', ""))
    out = str(tmp_path / "out")
    code = ("from latticerec.experiment.runner import run_tasks; "
            "from latticerec.experiment.spec import load_spec, plan; "
            f"run_tasks(plan(load_spec({str(spec)!r}), {out!r}), jobs=2, log=lambda m: None)")
    runner_proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    group = runner_proc.pid
    try:
        deadline = time.monotonic() + 120
        while len(list((tmp_path / "out").rglob("config.json"))) < 2:  # both workers are training
            assert runner_proc.poll() is None and time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
        os.kill(runner_proc.pid, signal.SIGKILL)
        runner_proc.wait()
        deadline = time.monotonic() + 30
        while _group_alive(group):
            assert time.monotonic() < deadline, "a worker outlived the runner by 30 s"
            time.sleep(0.2)
    finally:
        if _group_alive(group):
            os.killpg(group, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


TUNED = """
name = "tuned"
datasets = ["synthetic"]
seeds = [0, 1]
reference = "pop"
[options]
epochs = 2
[tune]
trials = 3
epochs = 2
[[models]]
label = "pop"
[[models]]
label = "mf"
options = { embed_dim = 8 }
"""


@pytest.mark.parametrize("table, needle", [
    ("[tune]\nepochs = 2\n", "tune: missing 'trials'"),
    ("[tune]\ntrials = 0\n", "tune: trials must be a positive integer"),
    ("[tune]\ntrials = 2\nmetric = \"recall@10\"\n", "tune: metric 'recall@10'"),
    ("[tune]\ntrials = 2\nmodels = [\"ngcf\"]\n", "tune: models ['ngcf']: not model labels"),
    ("[tune]\ntrials = 2\nbudget = 1\n", "tune: unknown key(s) 'budget'"),
])
def test_a_bad_tune_table_is_an_error_naming_the_file(tmp_path, table, needle):
    text = TINY.replace("[[models]]", table + "[[models]]", 1)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_spec(write_spec(tmp_path, text))


def test_tuned_cells_get_the_same_budget_their_seeds_train_with_the_choice_and_test_is_never_read(
        tmp_path, capsys, monkeypatch):
    import latticerec.train.trainer as trainer
    from latticerec.experiment import spec as spec_module

    spec_path, out = write_spec(tmp_path, TUNED), tmp_path / "out"
    real_studies, real_split = spec_module.plan_studies, trainer.evaluate_split
    tuning = []

    def guard(model, dataset, split, *a, **k):  # no test evaluation while a study runs
        assert not (tuning and split == "test"), "a study evaluated the test split"
        return real_split(model, dataset, split, *a, **k)

    monkeypatch.setattr(trainer, "evaluate_split", guard)
    import latticerec.experiment.runner as runner_module
    real_run_studies = runner_module.run_studies

    def watched(*a, **k):
        tuning.append(True)
        try:
            return real_run_studies(*a, **k)
        finally:
            tuning.clear()

    monkeypatch.setattr(runner_module, "run_studies", watched)
    # before its study, --check builds a tuned cell with the spec's options alone
    assert main(["experiment", str(spec_path), "--out", str(out), "--check"]) == 0 and not out.exists()
    assert main(["experiment", str(spec_path), "--out", str(out)]) == 0
    studies = real_studies(load_spec(spec_path), out)
    assert [s.label for s in studies] == ["mf"]  # pop declares no search space: not tuned
    best = json.loads((Path(studies[0].out) / "best_trial.json").read_text())
    assert sum(best["trials"].values()) == 3 and best["test"] is None
    assert set(best["best_params"]) == set(search_space("mf"))
    for seed in (0, 1):
        saved = json.loads((out / "runs" / "mf" / "synthetic" / "default" / f"seed-{seed}" /
                            "config.json").read_text())["config"]
        assert saved["train"]["lr"] == pytest.approx(best["best_params"]["lr"])
        assert saved["model_config"]["reg"] == pytest.approx(best["best_params"]["reg"])
        assert saved["train"]["epochs"] == 2 and saved["train"]["seed"] == seed
    summary = (out / "summary.md").read_text()
    counts = f"{best['trials']['complete']} / {best['trials']['pruned']} / {best['trials']['fail']}"
    assert "Tuned on validation only" in summary and f"| mf | embed_dim=8 | {counts} |" in summary
    capsys.readouterr()
    assert main(["experiment", str(spec_path), "--out", str(out)]) == 0  # resumes: nothing new to run
    err = capsys.readouterr().err
    assert "study of 3 trials" in err and err.count("already finished, skipped") == 4


def test_a_tuned_cell_whose_study_has_not_run_is_not_planned(tmp_path):
    spec = load_spec(write_spec(tmp_path, TUNED))
    with pytest.raises(ConfigError, match="mf.*tuned, but its study has not finished"):
        plan(spec, tmp_path / "out")


def test_a_bad_option_of_a_tuned_cell_names_the_spec_and_the_model(tmp_path):
    from latticerec.experiment.spec import plan_studies

    spec = load_spec(write_spec(tmp_path, TUNED.replace("options = { embed_dim = 8 }",
                                                        "options = { embed_dim = 0 }")))
    with pytest.raises(ConfigError, match=r"spec\.toml: models \(mf\), default: .*embed_dim"):
        plan_studies(spec, tmp_path / "out")


def test_models_and_datasets_run_part_of_the_grid_and_the_results_cover_every_finished_run(tmp_path, capsys):
    path, out = write_spec(tmp_path, TINY.replace("seeds = [0, 1]", "seeds = [0]")), tmp_path / "out"
    assert main(["experiment", str(path), "--out", str(out), "--models", "mf", "--set", "epochs=1"]) == 0
    assert [r["label"] for r in csv.DictReader((out / "results.csv").open())] == ["mf"]
    assert not (out / "runs" / "lightgcn").exists()
    assert main(["experiment", str(path), "--out", str(out), "--models", "lightgcn",
                 "--datasets", "synthetic", "--set", "epochs=1"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted((r["label"], r["point"]) for r in rows) == [
        ("lightgcn", "n_layers=1"), ("lightgcn", "n_layers=2"), ("mf", "default")]
    assert "| lightgcn | n_layers=2 | 1/1 |" in (out / "summary.md").read_text()
    capsys.readouterr()
    assert main(["experiment", str(path), "--out", str(out), "--models", "ngcf"]) == 2
    err = capsys.readouterr().err
    assert "--models ngcf: not in the spec (it has: mf, lightgcn)" in err and str(path) in err
    assert main(["experiment", str(path), "--out", str(out), "--datasets", "baby"]) == 2
    assert "--datasets baby: not in the spec (it has: synthetic)" in capsys.readouterr().err


def test_a_partial_grid_leaves_out_the_tuned_cells_whose_study_has_not_run(tmp_path):
    spec = load_spec(write_spec(tmp_path, TUNED))
    tasks = plan(spec, tmp_path / "out", untuned="skip")
    assert [(t.label, t.seed) for t in tasks] == [("pop", 0), ("pop", 1)]


PUBLISHED = TINY.replace("seeds = [0, 1]", "seeds = [0]").replace('grid = { n_layers = [1, 2] }', "") + """
[published.synthetic]
source = "a paper's Table 2"
lightgcn = { "recall@20" = 0.0653 }
mf = { "recall@20" = 0.0346, "ndcg@20" = 0.013 }
"""


def test_published_figures_are_shown_beside_the_measured_ones(tmp_path):
    path, out = write_spec(tmp_path, PUBLISHED), tmp_path / "out"
    assert main(["experiment", str(path), "--out", str(out), "--set", "epochs=1"]) == 0
    summary = (out / "summary.md").read_text()
    assert "| reference | published recall@20 / ndcg@20 |" in summary
    assert re.search(r"\| mf \| default \| 1/1 \| .* \| 0\.0346 / 0\.0130 \|", summary)
    assert re.search(r"\| lightgcn \| default \| 1/1 \| .* \| 0\.0653 / – \|", summary)
    assert "Published figures (synthetic): a paper's Table 2." in summary
    cells = json.loads((out / "summary.json").read_text())["cells"]
    assert {c["label"]: c["published"] for c in cells} == {
        "mf": {"recall@20": 0.0346, "ndcg@20": 0.013}, "lightgcn": {"recall@20": 0.0653}}


@pytest.mark.parametrize("table, needle", [
    ('[published.baby]\nsource = "x"\n', "published.baby: not a dataset of the spec (synthetic)"),
    ('[published.synthetic]\nmf = { "recall@20" = 0.1 }\n', "published.synthetic: needs source"),
    ('[published.synthetic]\nsource = "x"\nngcf = { "recall@20" = 0.1 }\n', "'ngcf' is not a model label"),
    ('[published.synthetic]\nsource = "x"\nmf = { "recall@50" = 0.1 }\n', "'recall@50' is not one of"),
    ('[published.synthetic]\nsource = "x"\nmf = { "recall@20" = 1.5 }\n', "must be a number in [0, 1]"),
])
def test_a_bad_published_table_is_an_error_naming_the_file(tmp_path, table, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_spec(write_spec(tmp_path, TINY + table))


def test_a_finished_run_saved_before_an_option_was_added_is_still_finished(tmp_path, count_fit):
    spec = load_spec(write_spec(tmp_path))
    tasks = plan(spec, tmp_path / "out")[:1]
    run_tasks(tasks, log=lambda m: None)
    path = Path(tasks[0].run_dir) / "config.json"
    saved = json.loads(path.read_text())
    for key in ("rank_loss", "rank_tau"):  # options added after the run was saved: absent from it
        del saved["config"]["train"][key]
    path.write_text(json.dumps(saved))
    count_fit.clear()
    assert [o["state"] for o in run_tasks(tasks, log=lambda m: None)] == ["finished"] and not count_fit
    saved["config"]["train"]["rank_loss"] = "softmax"  # a saved value that differs is another run
    path.write_text(json.dumps(saved))
    outcome = run_tasks(tasks, log=lambda m: None)[0]
    assert outcome["state"] == "failed" and "other options" in outcome["error"]


def test_check_trains_nothing_and_names_each_cell_that_cannot_run_on_its_data(tmp_path, capsys, count_fit):
    text = TINY + ('[[models]]\nlabel = "lattice-nope"\nmodel = "lattice"\n'
                   'options = { modalities = ["nope"] }\n')
    spec, out = write_spec(tmp_path, text), tmp_path / "out"
    assert main(["experiment", str(spec), "--out", str(out), "--models", "mf"]) == 0
    capsys.readouterr()
    trained = len(count_fit)
    assert main(["experiment", str(spec), "--out", str(out), "--check"]) == 2
    err = capsys.readouterr().err
    assert "mf/synthetic/default: 2 finished: ok" in err
    assert "lightgcn/synthetic/n_layers=1: 2 to train: ok" in err
    assert "lattice-nope/synthetic/default: 2 to train: FAILS: modalities: nope not in the dataset" in err
    assert "1 of 4 cells cannot run: lattice-nope/synthetic/default" in err
    assert len(count_fit) == trained and not (out / "runs" / "lightgcn").exists()
    assert main(["experiment", str(spec), "--out", str(out), "--check", "--models", "mf", "lightgcn"]) == 0
    assert "every cell of 3 can run (6 runs" in capsys.readouterr().out


def test_check_on_baby_passes_its_graph_spec_and_fails_a_lattice_that_would_learn_a_graph(
        tmp_path, capsys, monkeypatch):
    shared_dataset("baby")
    monkeypatch.chdir(CONFIGS.parents[1])  # the specs name ../shared/data/... from the repository root
    common = ["--check", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert main(["experiment", str(CONFIGS / "baby_graph.toml"), "--models", "lattice-mf", *common]) == 0
    spec = write_spec(tmp_path, 'datasets = ["../shared/data/baby"]\nseeds = [0]\n'
                      '[[models]]\nlabel = "lattice"\n')
    capsys.readouterr()
    assert main(["experiment", str(spec), *common]) == 2
    err = capsys.readouterr().err
    assert "lattice/baby/default: 1 to train: FAILS:" in err and "set lambda_coeff=1" in err


STARTED = """
name = "started"
datasets = ["synthetic"]
seeds = [0]
[options]
epochs = 1
embed_dim = 8
[tune]
trials = 2
[[models]]
label = "lattice"
tune_start = "lightgcn"
[[models]]
label = "lightgcn"
"""


@pytest.mark.parametrize("change, needle", [
    (("[tune]\ntrials = 2\n", ""), "models (lattice): tune_start needs a [tune] table"),
    (('tune_start = "lightgcn"', 'tune_start = "lgcn"'), "tune_start 'lgcn' is not another model's label"),
    (('tune_start = "lightgcn"', 'tune_start = "lattice"'), "tune_start 'lattice' is not another model"),
    (('tune_start = "lightgcn"', "tune_start = 3"), "tune_start must be a model label, got 3"),
    (("trials = 2\n", 'trials = 2\nmodels = ["lattice"]\n'), "tune_start 'lightgcn': lightgcn not tuned"),
    (('label = "lightgcn"', 'label = "lightgcn"\ntune_start = "lattice"'), "starts from 'lattice' in turn"),
    (('label = "lightgcn"', 'label = "lightgcn"\ngrid = { n_layers = [1, 2] }'),
     "models (lightgcn): a tune_start model cannot have a grid of its own"),
])
def test_a_bad_tune_start_is_an_error_naming_the_file(tmp_path, change, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as err:
        load_spec(write_spec(tmp_path, STARTED.replace(*change)))
    assert "spec.toml" in str(err.value)


def test_a_tune_start_study_runs_after_the_one_it_starts_from_and_begins_at_its_best(tmp_path, capsys):
    import optuna

    from latticerec.experiment.spec import plan_studies

    spec_path, out = write_spec(tmp_path, STARTED), tmp_path / "out"
    studies = plan_studies(load_spec(spec_path), out)
    assert [(s.label, s.start_from) for s in studies] == [
        ("lattice", str(out / "tune" / "lightgcn" / "synthetic" / "default")), ("lightgcn", None)]
    # alone, before the study it starts from has finished: a clear error, nothing trained
    assert main(["experiment", str(spec_path), "--out", str(out), "--models", "lattice"]) == 2
    assert "best_trial.json is missing (the study has not finished)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"models \(lattice\): tune_start 'lightgcn' is not tuned"):
        plan_studies(load_spec(write_spec(tmp_path, STARTED.replace('label = "lightgcn"',
                                                                    'label = "lightgcn"\nmodel = "pop"'),
                                          "pop.toml")), out)
    assert main(["experiment", str(spec_path), "--out", str(out), "--jobs", "2"]) == 0  # lightgcn first
    best = json.loads((out / "tune" / "lightgcn" / "synthetic" / "default" / "best_trial.json").read_text())
    db = out / "tune" / "lattice" / "synthetic" / "default" / "study.db"
    first = optuna.load_study(study_name="lattice-synthetic", storage=f"sqlite:///{db}").trials[0]
    assert {k: first.params[k] for k in best["best_params"]} == best["best_params"]
