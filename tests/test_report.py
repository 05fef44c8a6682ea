"""Figures: ``latticerec report`` (tables + PNGs of an experiment) and ``plot`` (a run's curves)."""

import json

import numpy as np
import pytest

from latticerec.cli import main
from latticerec.errors import LatticeRecError
from latticerec.experiment.plots import write_curves
from latticerec.experiment.report import sensitivity_groups, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def fake_summary(out, cells, metrics=("recall@20",)):
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"name": "fake", "description": "", "spec": "x.toml",
                                                  "metrics": list(metrics), "alpha": 0.05, "grid": {},
                                                  "model_grids": {}, "cells": cells}))


def cell(label, point="default", grid=None, mean=0.1, std=0.01, reference=None, significant=False):
    tests = {"recall@20": {"n": 10, "mean_a": mean, "mean_b": 0.1, "mean_diff": mean - 0.1, "t": 3.0,
                           "p_t": 0.01, "wilcoxon": 1.0, "p_wilcoxon": 0.02, "effect_size": 0.5,
                           "seeds": [0, 1], "significant": significant}} if reference else {}
    return {"label": label, "model": label, "dataset": "tiktok", "point": point, "grid": grid or {},
            "seeds": [0, 1], "planned_seeds": 2, "mean": {"recall@20": mean}, "std": {"recall@20": std},
            "reference": reference, "tests": tests}


def test_report_draws_a_sensitivity_line_and_bars_as_png(tmp_path):
    cells = [cell("lightgcn")] + [cell("lattice", f"knn_k={k}", {"knn_k": k}, 0.1 + k / 1000,
                                       reference="lightgcn", significant=k > 5) for k in (5, 10, 20)]
    fake_summary(tmp_path / "exp", cells)
    assert list(sensitivity_groups(json.loads((tmp_path / "exp" / "summary.json").read_text()))) == ["knn_k"]
    path = write_report(tmp_path / "exp")
    text = path.read_text()
    assert (path.parent / "sensitivity-knn_k.png").read_bytes().startswith(PNG)
    assert "](sensitivity-knn_k.png)" in text
    assert not (path.parent / "bars-tiktok.png").exists()  # lightgcn is the figure's dashed line
    fake_summary(tmp_path / "exp", [*cells, cell("micro", reference="lightgcn")])
    path = write_report(tmp_path / "exp")
    assert (path.parent / "bars-tiktok.png").read_bytes().startswith(PNG)
    assert "| lattice | knn_k=20 | 2/2 | 0.1200 ± 0.0100* | lightgcn |" in text
    assert "| lattice | knn_k=5 | 2/2 | 0.1050 ± 0.0100 | lightgcn |" in text


def test_report_of_a_table_without_a_grid_is_a_bar_chart(tmp_path, capsys):
    fake_summary(tmp_path / "exp", [cell("lightgcn"), cell("lattice", mean=0.2, reference="lightgcn",
                                                           significant=True), cell("micro", std=None)])
    assert main(["report", str(tmp_path / "exp"), "--out", str(tmp_path / "rep")]) == 0
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["bars-tiktok.png", "report.md"]
    assert (tmp_path / "rep" / "bars-tiktok.png").read_bytes().startswith(PNG)
    assert "| micro | default | 2/2 | 0.1000 | – |" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not an experiment output" in capsys.readouterr().err
    fake_summary(tmp_path / "bad", [{**cell("x"), "mean": None}])
    assert main(["report", str(tmp_path / "bad")]) == 2
    assert "cells[0]: missing or malformed mean" in capsys.readouterr().err


def test_plot_writes_the_curves_of_a_run_and_train_writes_them_at_the_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "lattice", "--data", "synthetic", "--epochs", "3", "--set",
                 "embed_dim=8",
                 "eval_every=2", "--out", str(out), "--quiet"]) == 0
    assert (out / "curves.png").read_bytes().startswith(PNG)
    assert "curves" in capsys.readouterr().out
    (out / "curves.png").unlink()
    assert main(["plot", "--run", str(out)]) == 0
    assert (out / "curves.png").read_bytes().startswith(PNG)
    assert write_curves(out, tmp_path / "other.png").read_bytes().startswith(PNG)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["history"] = [{"no": "epoch"}]
    (out / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(LatticeRecError, match="no valid 'history'"):
        write_curves(out)
    assert main(["plot", "--run", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_a_model_with_nothing_to_train_has_no_curves(tmp_path, capsys):
    out = tmp_path / "cb"
    assert main(["train", "--model", "cb", "--data", "synthetic", "--out", str(out), "--quiet"]) == 0
    assert not (out / "curves.png").exists()
    assert main(["plot", "--run", str(out)]) == 0 and "no epochs" in capsys.readouterr().out
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["test"]["recall@20"])


@pytest.mark.parametrize("change, needle", [
    (lambda s: s.update(name=5), "a name, an alpha and metric names"),
    (lambda s: s.update(alpha="x"), "a name, an alpha and metric names"),
    (lambda s: s.update(metrics=[3]), "a name, an alpha and metric names"),
    (lambda s: s["cells"][1]["tests"].update({"recall@20": {"significant": True}}),
     "cells[1]: tests.recall@20: missing or malformed"),
    (lambda s: s["cells"][1].update(reference=3), "cells[1]: malformed reference"),
])
def test_a_tampered_summary_is_an_error_naming_the_file_not_a_traceback(tmp_path, capsys, change, needle):
    fake_summary(tmp_path / "exp", [cell("lightgcn"), cell("lattice", reference="lightgcn")])
    summary = json.loads((tmp_path / "exp" / "summary.json").read_text())
    change(summary)
    (tmp_path / "exp" / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latticerec: error: ") and "summary.json" in err and needle in err


def test_plot_of_a_tampered_history_is_an_error_naming_the_file(tmp_path, capsys):
    from latticerec.train.rundir import RunDir

    run = RunDir(tmp_path / "run")
    for history in ([{"epoch": "x", "loss_bpr": 0.5}], [{"epoch": 1, "loss_bpr": "a"}],
                    [{"epoch": 1, "loss_bpr": 0.5, "valid_recall@20": None}]):
        run.write_metrics({"model": "mf", "data": "synthetic", "best_epoch": 1, "history": history})
        assert main(["plot", "--run", str(run.path)]) == 2
        err = capsys.readouterr().err
        assert "metrics.json: no valid 'history'" in err and "Traceback" not in err
    # a record without one of the two validation metrics is drawn with a gap
    run.write_metrics({"model": "mf", "data": "synthetic", "best_epoch": 1,
                       "history": [{"epoch": 1, "loss_bpr": 0.5, "valid_recall@20": 0.1}]})
    assert main(["plot", "--run", str(run.path)]) == 0
    assert (run.path / "curves.png").read_bytes().startswith(PNG)


def test_plot_refuses_to_overwrite_what_is_not_its_figure_and_non_finite_history(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "mf", "--data", "synthetic", "--epochs", "2", "--quiet", "--out",
                 str(run), "--set", "embed_dim=4"]) == 0
    metrics = (run / "metrics.json").read_bytes()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "fake.png").write_text("not a png")
    for out, says in ((run / "metrics.json", "give a .png file name"),
                      (tmp_path / "notes.txt", "give a .png file name"),
                      (tmp_path / "fake.png", "exists and is not a PNG figure"),
                      ("", "give a .png file name")):
        capsys.readouterr()
        assert main(["plot", "--run", str(run), "--out", str(out)]) == 2
        assert says in capsys.readouterr().err
    assert (run / "metrics.json").read_bytes() == metrics and (tmp_path / "notes.txt").read_text() == "mine"
    assert main(["plot", "--run", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert main(["plot", "--run", str(run), "--out", str(tmp_path / "c.png")]) == 0  # its own figure
    record = json.loads(metrics)
    for bad in (float("nan"), float("inf")):
        record["history"][0]["loss_bpr"] = bad
        (run / "metrics.json").write_text(json.dumps(record))
        assert main(["plot", "--run", str(run)]) == 2
        assert "finite numbers" in capsys.readouterr().err
    record["history"][0]["loss_bpr"] = 0.5
    record["history"][0]["epoch"] = 10 ** 300
    (run / "metrics.json").write_text(json.dumps(record))
    assert main(["plot", "--run", str(run)]) == 2
    assert "increasing order" in capsys.readouterr().err
