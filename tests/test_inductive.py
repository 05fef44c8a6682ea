"""The inductive cold-start split (``latticerec data cold-start --inductive``): the same cold items as
the transductive split of the same seed, a training folder without any trace of them (no
interaction, no feature row) that ``latticerec train`` reads unchanged, the cold side beside it, and
the end-to-end protocol (train, place every cold item by fold-in, rank the cold test items)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from latticerec.cli import main
from latticerec.data import make_synthetic
from latticerec.data.cold import COLD_DIR, INDUCTIVE_FILE, read_inductive_cold
from latticerec.data.readers import load_dataset
from latticerec.datasets.coldstart import cold_start_split, inductive_cold_start_split, warm_holdout
from latticerec.errors import DataError
from latticerec.evaluate.ranking import evaluate_ranking
from latticerec.serve.foldin import fold_in_arrays, load_fold_in
from latticerec.train.build import build_model, config_from_dict
from latticerec.train.rundir import RunDir


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(n_users=300, n_items=200, seed=3)


@pytest.fixture(scope="module")
def split(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("inductive") / "ind"
    summary = inductive_cold_start_split(synthetic, out, seed=5)
    return out, summary, json.loads((out / INDUCTIVE_FILE).read_text())


def _pairs(mat: sp.spmatrix) -> set[tuple[int, int]]:
    coo = sp.coo_matrix(mat)
    return set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))


def test_same_cold_items_as_the_transductive_split(synthetic, split, tmp_path):
    _, summary, info = split
    cold_start_split(synthetic, tmp_path / "trans", seed=5)
    trans = json.loads((tmp_path / "trans" / "cold_items.json").read_text())
    assert info["source_cold"] == trans["valid"] + trans["test"]
    assert summary["cold_valid_items"] == len(trans["valid"]) == info["cold_valid"] == 20


def test_training_folder_holds_nothing_of_the_cold_items(synthetic, split):
    out, summary, info = split
    ds = load_dataset(out)
    warm, users = np.asarray(info["source_items"]), np.asarray(info["source_users"])
    assert ds.n_items == len(warm) == synthetic.n_items - 40 and not set(warm) & set(info["source_cold"])
    for m, f in synthetic.features.items():  # feature rows: the warm items' only, in order
        np.testing.assert_array_equal(ds.features[m], f[warm])
    pooled = synthetic.train + synthetic.valid + synthetic.test
    source_pairs = _pairs(pooled)
    on_warm = {(u, i) for u, i in source_pairs if i in set(warm.tolist())}
    back = {(int(users[u]), int(warm[i])) for s in ("train", "valid", "test")
            for u, i in _pairs(ds.split(s))}
    assert back == {(u, i) for u, i in on_warm if u in set(users.tolist())}  # every warm pair, once
    assert summary["train_interactions"] == ds.train.nnz
    # the hold-out: one interaction of 20% of the eligible users each for valid and test
    assert ds.valid.nnz == ds.test.nnz > 0
    n_valid, n_test = np.diff(ds.valid.indptr), np.diff(ds.test.indptr)
    assert n_valid.max() == n_test.max() == 1 and not (n_valid & n_test).any()
    ids = (out / "i_id_mapping.csv").read_text().splitlines()[1:]
    assert [int(line.split("\t")[0]) for line in ids] == warm.tolist()


def test_cold_side_maps_back_to_the_source(synthetic, split):
    out, summary, info = split
    ds = load_dataset(out)
    cold = read_inductive_cold(out, ds.n_users)
    src_cold, users = np.asarray(info["source_cold"]), np.asarray(info["source_users"])
    for m, f in synthetic.features.items():
        np.testing.assert_array_equal(cold.features[m], f[src_cold])
    assert cold.ids == [str(i) for i in src_cold]
    assert cold.rows("valid").tolist() == list(range(20))
    assert cold.rows("test").tolist() == list(range(20, 40))
    pooled = synthetic.train + synthetic.valid + synthetic.test
    for split_name, mat in (("valid", cold.valid), ("test", cold.test)):
        assert set(mat.indices) <= set(cold.rows(split_name).tolist())
        back = {(int(users[u]), int(src_cold[c])) for u, c in _pairs(mat)}
        want = {(u, i) for u, i in _pairs(pooled[:, src_cold[cold.rows(split_name)]])}
        want = {(u, int(src_cold[cold.rows(split_name)][c])) for u, c in want if u in set(users.tolist())}
        assert back == want
    assert summary["cold_test_interactions"] == cold.test.nnz


def test_holdout_labels():
    users = np.repeat(np.arange(100), np.arange(100) % 6)  # users with 0..5 interactions
    labels = warm_holdout(users, np.random.default_rng(0), 0.2)
    eligible = np.flatnonzero(np.bincount(users, minlength=100) >= 3)
    per_user = np.bincount(users[labels > 0], minlength=100)
    assert per_user.max() == 1 and set(np.flatnonzero(per_user)) <= set(eligible)
    assert (labels == 1).sum() == (labels == 2).sum() == round(0.2 * len(eligible))
    assert not set(users[labels == 1]) & set(users[labels == 2])
    for bad in (0.0, 0.5, float("nan")):
        with pytest.raises(DataError, match="--holdout"):
            warm_holdout(users, np.random.default_rng(0), bad)


def test_tampered_cold_side_is_a_data_error(synthetic, tmp_path):
    out = tmp_path / "ind"
    inductive_cold_start_split(synthetic, out, seed=1)
    n_users = load_dataset(out).n_users
    inter = out / COLD_DIR / "cold.inter"
    good = inter.read_text()
    lines = good.splitlines()
    taken = {tuple(line.split("\t")[:2]) for line in lines[1:]}
    free = next(u for u in range(n_users) if (str(u), "3") not in taken)
    cases = [
        (lines + [f"{n_users}\t0\t1"], "user id .* out of range"),
        (lines + ["0\t40\t2"], "item id 40 out of range"),
        (lines + ["0\t0\t0"], r"valid \(1\) or test \(2\), not training"),
        (lines + [f"{free}\t3\t2"], "cold item 3 is a valid item"),
        (lines + [lines[1]], "duplicate"),
    ]
    for text, message in cases:
        inter.write_text("\n".join(text) + "\n")
        with pytest.raises(DataError, match=message):
            read_inductive_cold(out, n_users)
    inter.write_text(good)
    feat = out / COLD_DIR / "image_feat.npy"
    arr = np.load(feat)
    arr[2, 0] = np.nan
    np.save(feat, arr)
    with pytest.raises(DataError, match="NaN or inf"):
        read_inductive_cold(out, n_users)
    with pytest.raises(DataError, match="not an inductive cold-start split"):
        read_inductive_cold(tmp_path, n_users)


def test_cli_inductive(tmp_path, capsys):
    src = tmp_path / "src"
    assert main(["data", "cold-start", "synthetic", "--out", str(src), "--seed", "2", "--inductive",
                 "--holdout", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "inductive cold-start split:" in out and "80 valid and 80 test cold items" in out
    assert "1500 users, 640 warm items (28196/150/150 train/valid/test" in out
    assert (src / COLD_DIR / "cold.inter").is_file() and not (src / "cold_items.json").exists()
    assert main(["data", "cold-start", "synthetic", "--out", str(tmp_path / "x"), "--inductive",
                 "--rank-all"]) != 0
    assert "--rank-all applies to the transductive split only" in capsys.readouterr().err


def test_train_place_and_rank_the_cold_items(synthetic, split, tmp_path):
    """End to end: LATTICE trained by the CLI on the training folder, every cold item placed by
    fold-in, cold test items ranked; content carries the signal, so it beats a random ranking."""
    out, _, _ = split
    run = tmp_path / "run"
    assert main(["train", "--model", "lattice", "--data", str(out), "--epochs", "3", "--quiet",
                 "--set", "embed_dim=16", "--out", str(run)]) == 0
    rd = RunDir(run)
    ds = load_dataset(out)
    model = build_model(config_from_dict(rd.read_config()["config"]), ds)
    model.load_state_dict(rd.load_best()["model"])
    cold = read_inductive_cold(out, ds.n_users)
    placer = load_fold_in(*fold_in_arrays(model, ds))
    placed = np.stack([placer.place({m: cold.features[m][c] for m in placer.modalities})[0]
                       for c in range(len(cold.ids))])
    users, items = model.full_representations()
    n = ds.n_items
    target = sp.hstack([sp.csr_matrix((ds.n_users, n)), cold.test]).tocsr()
    scores = evaluate_ranking(users, torch.cat([items, torch.as_tensor(placed)]), target, topk=(5,),
                              candidates=n + cold.rows("test"))
    rng = np.random.default_rng(0)
    random = evaluate_ranking(users, torch.as_tensor(rng.normal(size=(n + 40, items.shape[1])),
                                                     dtype=torch.float32),
                              target, topk=(5,), candidates=n + cold.rows("test"))
    assert scores["recall@5"] > random["recall@5"] + 0.1


def test_benchmark_script_is_importable():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "inductive_coldstart.py"
    assert "FoldIn.place" in path.read_text()
