"""Fold-in of a new item (latticerec.serve.foldin) against the model's own computation: placing a
trained item's features with that item left out of the candidates must give back its graph rows
(neighbours and weights) and, with its ID embedding zeroed, its structure embedding; for an item
without training interactions, its whole representation. Plus validation and the numpy-only import."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_block_dataset as _block_dataset

from latticerec.serve.foldin import fold_in_arrays, knn_row, load_fold_in
from latticerec.train.build import build_model, resolve_config
from latticerec.train.trainer import fit

ITEM = 7  # the trained item that is placed again


def make_block_dataset(**kwargs):
    """conftest's block data with features spread enough within a block that no two items' learned
    similarities to ITEM tie to float32 rounding (with the default noise, two near-identical
    projections made the k-th neighbour a matter of the BLAS's summation order, i.e. of the thread
    count)."""
    return _block_dataset(noise=0.5, **kwargs)


def _dense_row(csr: torch.Tensor, i: int) -> np.ndarray:
    return csr.to_dense()[i].numpy()


def _trained(model_name: str, data, epochs: int = 2, **overrides):
    """A model trained a few epochs; its learned graphs are then rebuilt from the final projections
    (what fold-in uses) and item ``ITEM``'s ID embedding is zeroed (a new item has none)."""
    run = resolve_config(model_name, {"embed_dim": "16", "knn_k": "5", "epochs": str(max(epochs, 1)),
                                      "eval_every": "1", **overrides})
    model = build_model(run, data)
    if epochs:
        fit(model, data, run.train, log=lambda _m: None, progress=False)
    model.structure.learned_ready.fill_(False)
    with torch.no_grad():
        model.backbone.item_embedding.weight[ITEM] = 0.0
    model.eval()
    return model


def _features(data, i=ITEM):
    return {m: f[i] for m, f in data.features.items()}


def _placer(model, data, cf_part="isolated"):
    """The placer of ``model``; ``cf_part="isolated"`` by default: the model's own output for an
    item without interactions, which these tests compare with exactly."""
    spec, arrays = fold_in_arrays(model, data, cf_part)
    return spec, arrays, load_fold_in(spec, arrays)


@pytest.mark.parametrize("model_name,overrides", [
    ("lattice", {"lambda_coeff": "0.7", "item_layers": "2"}),
    ("lattice", {"lambda_coeff": "1.0", "item_layers": "1"}),
    ("micro", {"lambda_coeff": "0.7", "item_layers": "2"}),
])
def test_graph_rows_of_a_trained_item_are_reproduced(model_name, overrides):
    data = make_block_dataset()
    model = _trained(model_name, data, **overrides)
    _, _, placer = _placer(model, data)
    st = model.structure
    with torch.no_grad():
        graphs = st.graphs()
    for m in st.names:
        want = sum(float(w) * _dense_row(g.csr if hasattr(g, "csr") else g, ITEM) for w, g in graphs[m])
        row = placer.modality_row(m, data.features[m][ITEM], exclude=ITEM)
        got = np.zeros(data.n_items, dtype=np.float32)
        got[row.index] = row.weight
        got[ITEM] += row.self_weight
        assert set(np.flatnonzero(got)) == set(np.flatnonzero(want)), m
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if st.learn:  # the learned graph's neighbours alone (eq. 4 on W f + b)
        m = st.names[0]
        learned = placer.learned[m]
        row = knn_row(*learned, placer._projected(m, data.features[m][ITEM]), st.knn_k, exclude=ITEM)
        nbr = getattr(st, f"learned_nbr_{m}")[ITEM].tolist()
        assert sorted(row.index.tolist() + [ITEM]) == sorted(nbr)


@pytest.mark.parametrize("model_name,overrides", [
    ("lattice", {"lambda_coeff": "0.7", "item_layers": "2"}),
    ("lattice", {"lambda_coeff": "0.9", "item_layers": "1", "backbone": "ngcf"}),
    ("lattice", {"lambda_coeff": "0.7", "item_layers": "1", "feats_input": "true"}),
    ("lattice", {"lambda_coeff": "0.7", "cf_feats": "true"}),
    ("micro", {"lambda_coeff": "0.7", "item_layers": "2"}),
    ("micro", {"lambda_coeff": "0.9", "item_layers": "1", "specific": "false"}),
    ("micro", {"lambda_coeff": "0.7", "item_layers": "2", "fusion": "false"}),
    ("micro", {"lambda_coeff": "0.7", "cf_feats": "true"}),
    ("micro", {"lambda_coeff": "0.7", "item_layers": "1", "feats_input": "true", "backbone": "mf"}),
])
def test_structure_embedding_of_a_trained_item_is_reproduced(model_name, overrides):
    data = make_block_dataset()
    model = _trained(model_name, data, **overrides)
    spec, _, placer = _placer(model, data)
    assert spec["kind"] == ("micro" if model_name == "micro" and overrides.get("fusion") != "false"
                            else "lattice")
    with torch.no_grad():
        h = F.normalize(model.item_structure_embedding(), dim=1)[ITEM].numpy()
    rep, neighbours = placer.place(_features(data), exclude=ITEM)
    reps = rep.shape[0] // h.shape[0]
    np.testing.assert_allclose(rep - placer.isolated, np.tile(h, reps), atol=2e-5)
    if overrides.get("cf_feats"):
        assert neighbours == []
    else:
        assert neighbours and all(0 <= j < data.n_items and j != ITEM for j, _ in neighbours)
        weights = [w for _, w in neighbours]
        assert weights == sorted(weights, reverse=True) and min(weights) > 0


def _without_training_interactions(data, item):
    train = data.train.tolil()
    train[:, item] = 0
    return dataclasses.replace(data, train=train.tocsr())


@pytest.mark.parametrize("model_name,backbone,extra", [
    ("lattice", "lightgcn", {}), ("lattice", "ngcf", {}), ("lattice", "mf", {}),
    ("micro", "lightgcn", {}), ("micro", "ngcf", {}),
    ("mmgef", "lightgcn", {}), ("mmgef", "ngcf", {"attention": "false"}),
    ("mmgef", "lightgcn", {"use_cf": "false", "feature_fusion": "concat"}),
    ("mmgef", "mf", {"lambda_coeff": "1.0", "feature_fusion": "mean"}),
    ("lattice", "lightgcn", {"structure_weight": "0.3"}), ("micro", "mf", {"structure_weight": "2.5"}),
    ("mmgef", "lightgcn", {"structure_weight": "0.4"}),
])
def test_whole_representation_of_an_item_without_interactions(model_name, backbone, extra):
    """An item with no training interaction and a zero ID embedding is exactly a new item: its
    representation (backbone part included, e.g. NGCF's bias layers; MM-GEF's co-occurrence row is
    then 0 too) is reproduced in full."""
    dims = (8, 8) if extra.get("feature_fusion") == "mean" else (8, 6)
    data = _without_training_interactions(make_block_dataset(dims=dims), ITEM)
    model = _trained(model_name, data, **{"backbone": backbone, "lambda_coeff": "0.7",
                                          "item_layers": "2", **extra})
    _, _, placer = _placer(model, data)
    _, items = model.full_representations()
    rep, _ = placer.place(_features(data), exclude=ITEM)
    assert rep.shape == (items.shape[1],) and rep.dtype == np.float32
    np.testing.assert_allclose(rep, items[ITEM].numpy(), atol=2e-5)
    if backbone == "ngcf":
        assert np.abs(placer.isolated).sum() > 0  # the biases give an isolated item a vector


@pytest.mark.parametrize("fusion,dims", [("norm_mean", (8, 6)), ("concat", (8, 6)), ("mean", (8, 8)),
                                         ("norm_mean", (8, 8))])
def test_cb_places_an_item_by_its_fused_feature(fusion, dims):
    data = make_block_dataset(dims=dims)
    model = build_model(resolve_config("cb", {"feature_fusion": fusion}), data)
    spec, _, placer = _placer(model, data)
    assert spec["kind"] == "cb" and spec["modalities"] == {"image": dims[0], "text": dims[1]}
    _, items = model.full_representations()
    for i in (0, ITEM, data.n_items - 1):
        rep, neighbours = placer.place(_features(data, i))
        np.testing.assert_allclose(rep, items[i].numpy(), atol=1e-5)
        assert neighbours == []


def test_a_single_modality_cb():
    data = make_block_dataset()
    model = build_model(resolve_config("cb", {"modalities": "text"}), data)
    spec, _, placer = _placer(model, data)
    assert spec["modalities"] == {"text": 6}
    np.testing.assert_allclose(placer.place({"text": data.features["text"][3]})[0],
                               model.full_representations()[1][3].numpy(), atol=1e-6)


@pytest.mark.parametrize("name", ["mf", "lightgcn", "ngcf"])
def test_models_without_a_fold_in_have_kind_none(name):
    data = make_block_dataset()
    model = build_model(resolve_config(name, {"embed_dim": "8"}), data)
    spec, arrays = fold_in_arrays(model, data)
    assert spec["kind"] == "none" and spec["reason"] and arrays == {}
    assert load_fold_in(spec, arrays) is None


@pytest.mark.parametrize("name,options", [("lattice", {"lattice_graph": "joint"}),
                                          ("lattice", {"knn_relu": "false"}),
                                          ("micro", {"knn_relu": "false"}), ("mmgef", {"knn_relu": "false"})])
def test_released_graph_options_are_refused_by_name_not_placed_wrongly(name, options):
    data = make_block_dataset()
    model = build_model(resolve_config(name, {"embed_dim": "8", **options}), data)
    spec, arrays = fold_in_arrays(model, data)
    assert spec["kind"] == "none" and arrays == {}
    assert "=".join(next(iter(options.items()))) in spec["reason"]


def test_a_precomputed_graph_modality_cannot_place_a_new_item():
    data = make_block_dataset()
    pairs = np.stack([np.arange(data.n_items), (np.arange(data.n_items) + 3) % data.n_items], axis=1)
    data = dataclasses.replace(data, item_graphs={"graph": pairs})
    model = build_model(resolve_config("lattice", {"embed_dim": "8", "lambda_coeff": "1.0"}), data)
    spec, arrays = fold_in_arrays(model, data)
    assert spec["kind"] == "none" and "graph" in spec["reason"] and arrays == {}


@pytest.fixture(scope="module")
def lattice_placer():
    data = make_block_dataset()
    model = _trained("lattice", data, epochs=0, lambda_coeff="0.7")
    spec, arrays, placer = _placer(model, data)
    return data, spec, arrays, placer


@pytest.mark.parametrize("features,message", [
    ({"image": np.ones(8)}, "'text' is missing"),
    ({"image": np.ones(8), "text": np.ones(5)}, "'text': expected a vector of length 6"),
    ({"image": np.ones((1, 8)), "text": np.ones(6)}, "'image': expected a vector of length 8"),
    ({"image": [1.0] * 7 + [float("nan")], "text": np.ones(6)}, "'image'.*NaN or inf"),
    ({"image": np.ones(8), "text": [float("inf")] * 6}, "'text'.*NaN or inf"),
    ({"image": np.ones(8), "text": ["a"] * 6}, "'text': the feature vector must be a list of numbers"),
    ({"image": np.ones(8), "text": ["1"] * 6}, "'text': the feature vector must be a list of numbers"),
    ({"image": [[1.0], 2.0] * 4, "text": np.ones(6)}, "'image': the feature vector must be a list"),
    ({"image": [1e300] * 8, "text": np.ones(6)}, "'image'.*beyond float32"),
    ({"image": [3e37] * 8, "text": np.ones(6)}, "'image': the feature vector's norm exceeds 1e\\+30"),
    ({"image": np.ones(8), "text": np.ones(6), "audio": np.ones(3)}, "'audio' is not one of"),
    ([1.0, 2.0], "features must be an object"),
])
def test_bad_features_name_the_modality(lattice_placer, features, message):
    placer = lattice_placer[3]
    assert placer.modalities == {"image": 8, "text": 6}
    with pytest.raises(ValueError, match=message):
        placer.place(features)


def test_exclude_must_be_a_trained_item(lattice_placer):
    data, _, _, placer = lattice_placer
    for bad in (-1, data.n_items, 2.0):
        with pytest.raises(ValueError, match="exclude must be a trained item index"):
            placer.place(_features(data), exclude=bad)


def test_a_new_item_lands_in_its_content_block(lattice_placer):
    """An unseen vector near block 1's features gets block-1 neighbours only."""
    data, _, _, placer = lattice_placer
    block1 = np.arange(data.n_items) % 3 == 1
    feats = {m: f[block1].mean(0) for m, f in data.features.items()}
    rep, neighbours = placer.place(feats)
    assert np.isfinite(rep).all() and neighbours
    assert all(block1[j] for j, _ in neighbours)


@pytest.mark.parametrize("change,message", [
    (lambda s, a: a.pop("raw_degree.image"), "'raw_degree.image' is missing"),
    (lambda s, a: a.__setitem__("alpha", a["alpha"].astype(np.float64)), "'alpha': dtype float64"),
    (lambda s, a: a.__setitem__("hidden.0", a["hidden.0"][:-1]), "'hidden.0': shape"),
    (lambda s, a: a["proj_bias.text"].__setitem__(0, np.nan), "'proj_bias.text' holds NaN"),
    (lambda s, a: s.__setitem__("kind", "magic"), "unknown kind 'magic'"),
    (lambda s, a: s.__setitem__("modalities", {"image": -1}), "'modalities' must map"),
    (lambda s, a: s.pop("k"), "missing or invalid field"),
])
def test_a_malformed_export_is_refused(lattice_placer, change, message):
    _, spec, arrays, _ = lattice_placer
    spec, arrays = json.loads(json.dumps(spec)), {k: v.copy() for k, v in arrays.items()}
    change(spec, arrays)
    with pytest.raises(ValueError, match=message):
        load_fold_in(spec, arrays)


def test_the_placing_side_never_imports_torch(lattice_placer, tmp_path):
    data, spec, arrays, placer = lattice_placer
    np.savez(tmp_path / "arrays.npz", **arrays)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    feats = {m: f[3].tolist() for m, f in data.features.items()}
    (tmp_path / "features.json").write_text(json.dumps(feats))
    code = (
        "import json, sys, numpy as np\n"
        "from latticerec.serve.foldin import load_fold_in\n"
        f"d = {str(tmp_path)!r}\n"
        "z = np.load(d + '/arrays.npz', allow_pickle=False)\n"
        "p = load_fold_in(json.load(open(d + '/spec.json')), {k: z[k] for k in z.files})\n"
        "rep, nbrs = p.place(json.load(open(d + '/features.json')))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(json.dumps({'rep': rep.tolist(), 'nbrs': nbrs}))\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    rep, nbrs = placer.place(feats)
    np.testing.assert_allclose(out["rep"], rep, atol=1e-6)
    assert [tuple(x) for x in out["nbrs"]] == [(j, pytest.approx(w)) for j, w in nbrs]


@pytest.mark.parametrize("model_name", ["lattice", "micro", "mmgef"])
def test_neighbours_cf_part_is_the_weighted_mean_of_the_neighbours_backbone_output(model_name):
    data = make_block_dataset()
    model = _trained(model_name, data, lambda_coeff="0.7")
    _, _, isolated = _placer(model, data)
    spec, arrays, placer = _placer(model, data, "neighbours")
    assert spec["cf_part"] == "neighbours"
    with torch.no_grad():
        x_cf = model.backbone.propagate()[1].numpy()
    np.testing.assert_allclose(arrays["item_cf"], x_cf, atol=1e-6)
    feats = _features(data)
    rep, nbrs = placer.place(feats, exclude=ITEM)
    base, same = isolated.place(feats, exclude=ITEM)
    assert nbrs == same and nbrs and all(j != ITEM for j, _ in nbrs)
    w = np.array([w for _, w in nbrs])
    want_cf = (w / w.sum()) @ x_cf[[j for j, _ in nbrs]]
    # the two placements differ by the collaborative part only (isolated: 0 for LightGCN)
    np.testing.assert_allclose(rep - base, want_cf - arrays["isolated"], atol=1e-5)


def test_cf_part_is_checked():
    data = make_block_dataset()
    model = _trained("lattice", data, epochs=0)
    with pytest.raises(ValueError, match="cf_part: expected one of"):
        fold_in_arrays(model, data, "mean")
    spec, arrays = fold_in_arrays(model, data)
    with pytest.raises(ValueError, match="cf_part must be one of"):
        load_fold_in({**spec, "cf_part": "x"}, arrays)
    with pytest.raises(ValueError, match="'item_cf'"):
        load_fold_in(spec, {k: v for k, v in arrays.items() if k != "item_cf"})
    with pytest.raises(ValueError, match="'item_cf'"):
        load_fold_in(spec, {**arrays, "item_cf": arrays["item_cf"][:-1]})
    old = {k: v for k, v in spec.items() if k != "cf_part"}  # an export made before cf_part
    assert load_fold_in(old, arrays).cf_part == "isolated"


def test_a_content_model_without_fold_in_says_so():
    data = make_block_dataset()
    model = build_model(resolve_config("vbpr", {"embed_dim": "8"}), data)
    spec, arrays = fold_in_arrays(model, data)
    assert spec["kind"] == "none" and "uses content features" in spec["reason"] and arrays == {}
