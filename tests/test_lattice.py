"""LATTICE: learned graphs, gradients, ablation flags, modality choice, graph modality, CLI."""

import dataclasses

import numpy as np
import pytest
import torch

from latticerec.cli import main
from latticerec.errors import ConfigError
from latticerec.graphs.knn import knn_graph
from latticerec.models.backbones import NGCF
from latticerec.train.build import build_model, resolve_config
from latticerec.train.sampling import BPRSampler
from latticerec.train.trainer import fit


def _lattice(data, **overrides):
    run = resolve_config("lattice", {"embed_dim": "16", **overrides})
    return build_model(run, data)


def _batch(data, seed=0):
    users, pos, neg = next(BPRSampler(data.train, seed=seed).epoch(0, 64))
    return torch.as_tensor(users), torch.as_tensor(pos), torch.as_tensor(neg)


def _loss(model, data):
    return sum(model.loss(*_batch(data)).values())


def test_gradients_reach_the_projections_only_on_the_rebuild_batch(blocks):
    model = _lattice(blocks)
    model.train()
    model.on_epoch_start(0)
    _loss(model, blocks).backward()
    for m, lin in model.structure.projections.items():
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0, m
    model.zero_grad(set_to_none=True)
    _loss(model, blocks).backward()  # second batch of the epoch: the graph is reused detached
    assert all(lin.weight.grad is None for lin in model.structure.projections.values())
    assert model.modal_scores.grad is not None  # modality weights learn from every batch


def test_initial_graph_is_the_knn_graph_of_the_raw_features(blocks):
    model = _lattice(blocks, knn_k="4")
    for m, feats in blocks.features.items():
        ref = knn_graph(torch.as_tensor(feats), 4).to_dense()
        assert torch.allclose(getattr(model.structure, f"initial_{m}").to_dense(), ref)


def test_structure_embedding_matches_the_formula(blocks):
    model = _lattice(blocks, lambda_coeff="0.7", item_layers="2")
    model.eval()
    h = model.item_structure_embedding()
    alpha = model.modal_weights()
    s = model.structure
    dense = sum(a * (0.7 * getattr(s, f"initial_{m}").to_dense()
                     + 0.3 * knn_graph(s.projected(m), s.knn_k).to_dense())
                for a, m in zip(alpha, s.names, strict=True))
    x = model.backbone.item_embedding.weight
    assert torch.allclose(h, dense @ (dense @ x), atol=1e-5)
    users, items = model.propagate()
    bu, bi = model.backbone.propagate()
    assert torch.allclose(items, bi + torch.nn.functional.normalize(h, dim=1), atol=1e-6)
    assert torch.equal(users, bu)


@pytest.mark.parametrize("model_name", ["lattice", "micro", "mmgef"])
def test_structure_weight_scales_the_unit_structure_signal(blocks, model_name):
    """``structure_weight`` w: items are ``x̃ + w h / ‖h‖`` (the papers' w = 1), for every structure
    model; MICRO's user preference vector gets the same weight."""
    run = resolve_config(model_name, {"embed_dim": "16", "structure_weight": "0.3"})
    model = build_model(run, blocks)
    model.eval()
    with torch.no_grad():
        h = model.item_structure_embedding()
        users, items = model.propagate()
        bu, bi = model.backbone.propagate()
    assert torch.allclose(items, bi + 0.3 * torch.nn.functional.normalize(h, dim=1), atol=1e-6)
    if model_name == "micro":
        with torch.no_grad():
            pref = model.user_preference(h)
        assert torch.allclose(users, bu + 0.3 * torch.nn.functional.normalize(pref, dim=1), atol=1e-6)
    else:
        assert torch.equal(users, bu)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_structure_weight_must_be_positive_and_finite(value):
    with pytest.raises(ConfigError, match="structure_weight"):
        resolve_config("lattice", {"structure_weight": value})


def test_lambda_one_uses_the_initial_graphs_only(blocks):
    model = _lattice(blocks, lambda_coeff="1")
    assert len(model.structure.projections) == 0
    s = model.structure
    a = sum(w * getattr(s, f"initial_{m}").to_dense() for w, m in zip(model.modal_weights(), s.names,
                                                                      strict=True))
    h = model.item_structure_embedding()
    assert torch.allclose(h, a @ model.backbone.item_embedding.weight, atol=1e-6)


def test_cf_feats_replaces_the_graph_by_transformed_features(blocks):
    model = _lattice(blocks, cf_feats="true")
    s = model.structure
    expected = sum(a * s.projected(m) for a, m in zip(model.modal_weights(), s.names, strict=True))
    assert torch.allclose(model.item_structure_embedding(), expected)
    # the ID embeddings no longer enter the item-structure branch
    model.backbone.item_embedding.weight.data.mul_(2)
    assert torch.allclose(model.item_structure_embedding(), expected)


def test_feats_input_feeds_features_to_the_graph_convolution(blocks):
    model = _lattice(blocks, feats_input="true", lambda_coeff="1")
    s = model.structure
    x = torch.stack([s.projected(m) for m in s.names]).mean(0)
    a = sum(w * getattr(s, f"initial_{m}").to_dense() for w, m in zip(model.modal_weights(), s.names,
                                                                      strict=True))
    assert torch.allclose(model.item_structure_embedding(), a @ x, atol=1e-6)
    plain = _lattice(blocks, lambda_coeff="1")
    assert not torch.allclose(plain.item_structure_embedding(), model.item_structure_embedding())


def test_modalities_option_selects_a_subset(blocks):
    model = _lattice(blocks, modalities="text")
    assert model.structure.names == ["text"]
    assert list(model.structure.projections) == ["text"]
    with pytest.raises(ConfigError, match="audio"):
        _lattice(blocks, modalities="image,audio")


def test_precomputed_item_graph_as_a_modality(blocks):
    pairs = np.array([[i, j] for i in range(blocks.n_items) for j in range(blocks.n_items)
                      if i % 3 == j % 3 and abs(i - j) <= 6])
    data = dataclasses.replace(blocks, features={}, item_graphs={"graph": pairs})
    model = _lattice(data, lambda_coeff="1")
    assert model.structure.names == ["graph"]
    result = fit(model, data, resolve_config("lattice", {"epochs": "3"}).train, progress=False)
    assert np.isfinite(result["test"]["recall@20"])
    with pytest.raises(ConfigError, match="lambda_coeff=1"):
        _lattice(data, lambda_coeff="0.9")


def test_backbones_are_wrapped_by_composition(blocks):
    for name in ("mf", "lightgcn", "ngcf"):
        model = _lattice(blocks, backbone=name)
        users, items = model.full_representations()
        assert users.shape == (blocks.n_users, model.backbone.out_dim) == (users.shape[0], items.shape[1])
    ngcf = _lattice(blocks, backbone="ngcf", n_layers="2")
    assert isinstance(ngcf.backbone, NGCF) and ngcf.backbone.out_dim == 16 * 3
    with pytest.raises(ConfigError, match="unknown backbone"):
        resolve_config("lattice", {"backbone": "svd"})
    with pytest.raises(ConfigError, match="unknown option 'mess_dropout'"):
        resolve_config("lattice", {"backbone": "lightgcn", "mess_dropout": "0.1"})


def test_a_checkpoint_restores_the_learned_graph(blocks):
    model = _lattice(blocks)
    fit(model, blocks, resolve_config("lattice", {"epochs": "2"}).train, progress=False)
    users, items = model.full_representations()
    fresh = _lattice(blocks)
    fresh.load_state_dict(model.state_dict())
    u2, i2 = fresh.full_representations()
    assert torch.equal(users, u2) and torch.equal(items, i2)


def test_loading_a_state_replaces_the_learned_graph_a_model_had_cached(blocks):
    cfg = resolve_config("lattice", {"epochs": "2"}).train
    a, b = _lattice(blocks), _lattice(blocks)
    fit(a, blocks, cfg, progress=False)
    fit(b, blocks, dataclasses.replace(cfg, lr=0.01), progress=False)
    b.eval()
    b.full_representations()  # b now holds its own learned graph, transposed, between rebuilds
    b.load_state_dict(a.state_dict())
    a.eval()
    for got, want in zip(b.full_representations(), a.full_representations(), strict=True):
        assert torch.equal(got, want)


def test_cli_trains_lattice_with_a_backbone_and_caches_graphs(tmp_path, capsys):
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    args = ["train", "--model", "lattice", "--backbone", "mf", "--data", "synthetic", "--epochs", "2",
            "--out", str(out), "--quiet", "--cache-dir", str(cache), "--set", "embed_dim=16"]
    assert main(args) == 0
    assert len(list((cache / "graphs").glob("knn-*.npz"))) == 2  # image and text
    assert (out / "metrics.json").exists()
    assert main(["evaluate", "--run", str(out)]) == 0
    assert main(["train", "--model", "lightgcn", "--backbone", "mf", "--epochs", "1",
                 "--out", str(tmp_path / "x")]) == 2
    assert "does not wrap a backbone" in capsys.readouterr().err


def test_a_diverged_learned_graph_is_a_training_error_with_the_hint(tmp_path, capsys):
    # lr 1e38 sends the projections to inf: the learned graph's rebuild is the first to see it, and
    # must say "diverged, lower lr" like the loss check, not blame the features
    args = ["train", "--model", "lattice", "--data", "synthetic", "--epochs", "4",
            "--out", str(tmp_path / "r"), "--quiet", "--cache-dir", str(tmp_path / "c"),
            "--set", "lr=1e38", "batch_size=100000"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the projections of the learned graph (eq. 4) became NaN or infinite; lower lr" in err
    assert "epoch " in err and "Traceback" not in err


@pytest.mark.parametrize("model", ["lattice", "micro", "mmgef", "freedom"])
def test_knn_k_above_the_number_of_items_is_a_config_error(blocks, model):
    # the block dataset has 30 items: knn_k=31 names the option and the bound; 30 still builds
    with pytest.raises(ConfigError, match=r"knn_k=31 .* 30 items"):
        build_model(resolve_config(model, {"embed_dim": "8", "knn_k": "31"}), blocks)
    build_model(resolve_config(model, {"embed_dim": "8", "knn_k": "30"}), blocks)
