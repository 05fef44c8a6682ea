import hashlib

import numpy as np
import pytest

from latticerec.data.readers import load_dataset
from latticerec.datasets.synth import parse_dims, write_synthetic
from latticerec.errors import DataError


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_synth_writes_a_readable_dataset_deterministically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    kwargs = dict(n_users=300, n_items=200, n_interactions=3000, dims={"image": 16, "text": 8}, seed=3,
                  block_users=64, block_items=50)
    report = write_synthetic(a, **kwargs)
    write_synthetic(b, **kwargs)
    assert _digest(a) == _digest(b)
    ds = load_dataset(str(a))
    assert (ds.n_users, ds.n_items) == (300, 200)
    assert ds.features["image"].shape == (200, 16) and ds.features["text"].shape == (200, 8)
    assert all(np.isfinite(f).all() for f in ds.features.values())
    total = ds.train.nnz + ds.valid.nnz + ds.test.nnz
    assert total == report["interactions"]
    assert abs(total - 3000) / 3000 < 0.2
    assert not list(a.glob(".*.tmp"))  # no temporary file left behind


def test_synth_content_predicts_behaviour(tmp_path):
    write_synthetic(tmp_path, n_users=400, n_items=300, n_interactions=6000, dims={"image": 32}, seed=0)
    ds = load_dataset(str(tmp_path))
    x = ds.features["image"] / np.linalg.norm(ds.features["image"], axis=1, keepdims=True)
    train = ds.train.tocsr()
    rng = np.random.default_rng(0)
    co, rand = [], []
    for u in range(ds.n_users):
        items = train.indices[train.indptr[u]:train.indptr[u + 1]]
        if len(items) >= 2:
            i, j = rng.choice(items, 2, replace=False)
            co.append(x[i] @ x[j])
            rand.append(x[rng.integers(300)] @ x[rng.integers(300)])
    # items a user consumed together are far more alike in content than random pairs
    assert np.mean(co) > np.mean(rand) + 0.2


@pytest.mark.parametrize("text", ["image", "image=abc", "1x=3", "image=0", "image=3,image=4"])
def test_parse_dims_rejects_bad_specs(text):
    with pytest.raises(DataError, match="--dims"):
        parse_dims(text)


def test_parse_dims():
    assert parse_dims("image=512, text=384") == {"image": 512, "text": 384}


def test_synth_rejects_bad_sizes(tmp_path):
    with pytest.raises(DataError, match="--items"):
        write_synthetic(tmp_path, n_users=10, n_items=1, n_interactions=10, dims={"image": 4})


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_users=3, n_items=3, n_interactions=1000), "--interactions 1000 exceeds"),
    (dict(n_users=5, n_items=10, n_interactions=30, n_clusters=0), "--clusters"),
    (dict(n_users=5, n_items=10, n_interactions=30, n_clusters=-3), "--clusters"),
    (dict(n_users=5, n_items=10, n_interactions=30, seed=-1), "--seed"),
])
def test_synth_rejects_bad_options(tmp_path, kwargs, match):
    with pytest.raises(DataError, match=match):
        write_synthetic(tmp_path / "o", dims={"image": 4}, **kwargs)


def test_synth_refuses_a_dataset_without_valid_or_test_split(tmp_path):
    # 3 items in 8 clusters: every user draws the same item again and again -> no valid/test item
    with pytest.raises(DataError, match="too few distinct interactions"):
        write_synthetic(tmp_path / "o", n_users=3, n_items=3, n_interactions=6, dims={"image": 4})
    assert list(tmp_path.iterdir()) == []  # no folder, no partial files, nothing hidden


def test_synth_never_overwrites_a_folder_or_file(tmp_path):
    kwargs = dict(n_users=20, n_items=30, n_interactions=150, dims={"image": 4})
    write_synthetic(tmp_path / "a", **kwargs)
    before = _digest(tmp_path / "a")
    with pytest.raises(DataError, match="already holds files"):
        write_synthetic(tmp_path / "a", **{**kwargs, "n_users": 5})
    assert _digest(tmp_path / "a") == before
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        write_synthetic(tmp_path / "f", **kwargs)
