"""The cold-start split (20% of items lose all training interactions, half valid, half test), its
folder (MMRec layout + ``cold_items.json``) read back by the reader, and evaluation that ranks only
the cold items of each split (or all items on request), trained end to end with MF and LightGCN."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latticerec.cli import main
from latticerec.data import make_synthetic
from latticerec.data.cold import COLD_FILE
from latticerec.data.readers import load_dataset
from latticerec.datasets.coldstart import cold_start_labels, cold_start_split
from latticerec.errors import DataError
from latticerec.evaluate.ranking import rank_top_k


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(n_users=300, n_items=200, seed=3)


def test_labels_follow_the_item_roles():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 6)
    items = rng.integers(0, 40, size=users.size)
    labels, valid, test = cold_start_labels(users, items, 40, np.random.default_rng(1))
    present = np.unique(items)
    assert len(valid) + len(test) == round(0.2 * len(present))
    assert len(valid) == (len(valid) + len(test)) // 2
    assert not set(valid) & set(test)
    assert set(items[labels == 1]) <= set(valid) and set(items[labels == 2]) <= set(test)
    assert not set(items[labels == 0]) & (set(valid) | set(test))
    assert np.array_equal(labels[np.isin(items, valid)], np.ones(np.isin(items, valid).sum()))
    again = cold_start_labels(users, items, 40, np.random.default_rng(1))
    assert np.array_equal(again[0], labels)
    with pytest.raises(DataError, match="fraction"):
        cold_start_labels(users, items, 40, rng, fraction=1.5)


def test_split_folder_round_trip(synthetic, tmp_path):
    out = tmp_path / "cold"
    summary = cold_start_split(synthetic, out, seed=7)
    assert summary["cold_valid_items"] == 20 and summary["cold_test_items"] == 20
    ds = load_dataset(out)
    total = synthetic.train.nnz + synthetic.valid.nnz + synthetic.test.nnz
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz == total
    cold = json.loads((out / COLD_FILE).read_text())
    np.testing.assert_array_equal(ds.cold_items["valid"], cold["valid"])
    np.testing.assert_array_equal(ds.candidates("test"), cold["test"])
    # cold items have no training interaction; every valid/test interaction is on a cold item
    assert ds.train[:, cold["valid"] + cold["test"]].nnz == 0
    assert set(ds.valid.indices) <= set(cold["valid"]) and set(ds.test.indices) <= set(cold["test"])
    np.testing.assert_array_equal(ds.features["image"], synthetic.features["image"])
    assert ds.summary()["cold_items"] == {"valid": 20, "test": 20}


def test_bad_cold_file_is_a_data_error(synthetic, tmp_path):
    out = tmp_path / "cold"
    cold_start_split(synthetic, out)
    obj = json.loads((out / COLD_FILE).read_text())
    obj["test"] = obj["test"] + [10_000]
    (out / COLD_FILE).write_text(json.dumps(obj))
    with pytest.raises(DataError, match=r"cold_items\.json: 'test' item ids must lie in \[0, 200\)"):
        load_dataset(out)


def test_rank_top_k_returns_only_candidates():
    users = torch.randn(5, 4)
    items = torch.randn(30, 4)
    cand = np.array([3, 17, 29, 8])
    for _, top, scores in rank_top_k(users, items, np.arange(5), 3, candidates=cand):
        assert set(top.flatten().tolist()) <= set(cand.tolist())
        assert torch.isfinite(scores).all()


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
def test_train_on_cold_split_ranks_cold_items(synthetic, tmp_path, model):
    data = tmp_path / "cold"
    cold_start_split(synthetic, data, seed=1)
    run = tmp_path / "run"
    assert main(["train", "--model", model, "--data", str(data), "--epochs", "2", "--quiet",
                 "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"]["cold_items"] == {"valid": 20, "test": 20}
    cold = metrics["test"]["recall@20"]
    # 20 candidates and top-20: every cold test item is retrieved, so recall is 1 by construction
    assert cold == pytest.approx(1.0)
    ranked_all = tmp_path / "cold-all"
    cold_start_split(synthetic, ranked_all, seed=1, rank="all")
    run_all = tmp_path / "run-all"
    assert main(["train", "--model", model, "--data", str(ranked_all), "--epochs", "2", "--quiet",
                 "--out", str(run_all)]) == 0
    all_items = json.loads((run_all / "metrics.json").read_text())
    assert all_items["dataset"]["rank"] == "all"
    assert all_items["test"]["recall@10"] < metrics["test"]["recall@10"]


def test_evaluate_split_rank_all_option(synthetic, tmp_path):
    from latticerec.train.build import build_model, resolve_config
    from latticerec.train.trainer import evaluate_split

    cold_start_split(synthetic, tmp_path / "c", seed=2)
    ds = load_dataset(tmp_path / "c")
    run = resolve_config("mf", {})
    model = build_model(run, ds)
    cold = evaluate_split(model, ds, "test", run.train)
    every = evaluate_split(model, ds, "test", run.train, rank_all=True)
    assert cold["recall@50"] == pytest.approx(1.0)   # 20 candidates: all in the top 50
    assert every["recall@50"] < 1.0


def test_cli_cold_start(tmp_path, capsys):
    src = tmp_path / "src"
    assert main(["data", "import-recbole", str(_tiny_recbole(tmp_path)), "--out", str(src),
                 "--quiet"]) == 0
    assert main(["data", "cold-start", str(src), "--out", str(tmp_path / "cold"), "--seed", "4"]) == 0
    assert "cold-start split: 2 valid and 2 test cold items" in capsys.readouterr().out
    assert (tmp_path / "cold" / "i_id_mapping.csv").read_text() == (src / "i_id_mapping.csv").read_text()


def _tiny_recbole(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["user_id:token\titem_id:token"]
    for u in range(30):
        for i in rng.choice(20, size=6, replace=False):
            rows.append(f"u{u}\ti{i}")
    path = tmp_path / "tiny.inter"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_split_refuses_its_input_or_a_used_folder(tmp_path):
    src = tmp_path / "src"
    assert main(["data", "synth", "--users", "20", "--items", "50", "--interactions", "200", "--dims",
                 "image=4", "--out", str(src)]) == 0
    before = sorted(p.name for p in src.iterdir())
    with pytest.raises(DataError, match="is or holds the input"):
        cold_start_split(load_dataset(src), src)
    assert sorted(p.name for p in src.iterdir()) == before
    load_dataset(src)  # still one .inter: readable
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="already holds files"):
        cold_start_split(load_dataset(src), tmp_path / "used")
