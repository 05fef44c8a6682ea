"""MM-GEF and CB: co-occurrence graph, early fusion, attention, ablation flags, contract-style checks.

The models are built directly (not through the registry) so these tests run before they are
registered; the shared contract test covers them once ``mmgef`` and ``cb`` are in ``MODELS``.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from latticerec.config import TrainConfig
from latticerec.data.dataset import Dataset
from latticerec.errors import ConfigError
from latticerec.graphs.cooccurrence import cooccurrence_counts, cooccurrence_graph, normalize_counts
from latticerec.graphs.fusion import fuse_features, random_projection
from latticerec.graphs.knn import knn_graph
from latticerec.graphs.sparse import to_torch_csr
from latticerec.models.backbones import GraphConfig, LightGCN
from latticerec.models.cb import CBConfig, ContentBased
from latticerec.models.mmgef import MMGEF, MMGEFConfig
from latticerec.train.build import model_inputs
from latticerec.train.sampling import BPRSampler
from latticerec.train.trainer import evaluate_split, fit


def _mmgef(data, seed=0, **cfg):
    torch.manual_seed(seed)
    inputs = model_inputs(data)
    backbone = LightGCN.from_inputs(GraphConfig(embed_dim=16), inputs)
    return MMGEF.from_inputs(MMGEFConfig(**cfg), inputs, backbone)


def _batch(data, seed=0, size=64):
    users, pos, neg = next(BPRSampler(data.train, seed=seed).epoch(0, size))
    return torch.as_tensor(users), torch.as_tensor(pos), torch.as_tensor(neg)


def _brute_cooccurrence(r: np.ndarray) -> np.ndarray:
    n = r.shape[1]
    c = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                c[i, j] = sum(1 for u in range(r.shape[0]) if r[u, i] and r[u, j])
    return c


@pytest.fixture
def small_r():
    rng = np.random.default_rng(3)
    return (rng.random((12, 9)) < 0.4).astype(np.float32)


# --- eq. 3-4: the collaborative graph ---------------------------------------------------------

@pytest.mark.parametrize("block_rows", [2, 4096])
def test_cooccurrence_equals_a_brute_force_count(small_r, block_rows):
    r = small_r.copy()
    r[r > 0] = 5.0  # stored values are interactions whatever they hold
    got = cooccurrence_counts(to_torch_csr(r), block_rows=block_rows).to_dense().numpy()
    np.testing.assert_array_equal(got, _brute_cooccurrence(small_r))
    assert np.all(np.diag(got) == 0)


def test_cooccurrence_topk_keeps_each_rows_largest_counts_ties_to_lower_columns(small_r):
    full = _brute_cooccurrence(small_r)
    k = 3
    got = cooccurrence_counts(to_torch_csr(small_r), topk=k, block_rows=4).to_dense().numpy()
    for i in range(full.shape[0]):
        nz = [j for j in range(full.shape[1]) if full[i, j] > 0]
        expect = sorted(nz, key=lambda j: (-full[i, j], j))[:k]
        assert sorted(np.flatnonzero(got[i]).tolist()) == sorted(expect), i
        np.testing.assert_array_equal(got[i, expect], full[i, expect])


def test_cooccurrence_graph_is_scaled_by_cmax(small_r):
    full = _brute_cooccurrence(small_r)
    train = to_torch_csr(small_r)
    graph = cooccurrence_graph(train).to_dense().numpy()
    np.testing.assert_allclose(graph, full / full.max(), rtol=1e-6)
    assert graph.max() == pytest.approx(1.0)
    sym = normalize_counts(to_torch_csr(full), "symmetric")
    sym = sym.to_dense().numpy()
    d = full.sum(1)
    np.testing.assert_allclose(sym, full / np.sqrt(np.outer(d, d)), rtol=1e-5)


# --- section 3.1: early fusion ----------------------------------------------------------------

def test_fusion_rules():
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.allclose(fuse_features([a, b], "mean"), (a + b) / 2)
    assert torch.allclose(fuse_features([a, b], "norm_mean"),
                          (F.normalize(a, dim=1) + F.normalize(b, dim=1)) / 2)
    cat = fuse_features([a, b], "concat")
    assert cat.shape == (5, 8) and torch.allclose(cat.norm(dim=1), torch.ones(5))
    # cosine of the concatenation = mean of the per-modality cosines
    cos = F.normalize(cat, dim=1) @ F.normalize(cat, dim=1).T
    per = (F.normalize(a, dim=1) @ F.normalize(a, dim=1).T + F.normalize(b, dim=1) @ F.normalize(b, dim=1).T)
    assert torch.allclose(cos, per / 2, atol=1e-6)


def test_norm_mean_projects_smaller_modalities_with_a_fixed_random_map():
    a, b = torch.randn(6, 8), torch.randn(6, 3)
    state = torch.get_rng_state()
    fused = fuse_features({"image": a, "text": b}, "norm_mean")
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is untouched
    assert fused.shape == (6, 8)
    p = random_projection(3, 8)
    assert torch.equal(p, random_projection(3, 8))  # fixed
    expect = (F.normalize(a, dim=1) + F.normalize(F.normalize(b, dim=1) @ p, dim=1)) / 2
    assert torch.allclose(fused, expect, atol=1e-6)
    assert torch.equal(fused, fuse_features({"image": a, "text": b}, "norm_mean"))
    with pytest.raises(ValueError, match="one dimension"):
        fuse_features([a, b], "mean")


# --- MM-GEF -----------------------------------------------------------------------------------

def test_content_graph_is_built_from_the_fused_feature(blocks):
    model = _mmgef(blocks, knn_k=4)
    fused = fuse_features({m: torch.as_tensor(f) for m, f in blocks.features.items()}, "norm_mean")
    assert torch.allclose(model.structure.initial_fused.to_dense(), knn_graph(fused, 4).to_dense())
    assert list(model.structure.projections) == ["fused"]
    assert model.structure.projections["fused"].in_features == fused.shape[1]


def test_attention_weights_sum_to_one_per_item_and_vary_by_item(blocks):
    model = _mmgef(blocks)
    model.eval()
    h, w = model.item_structure_embedding(return_weights=True)
    assert w.shape == (blocks.n_items, 2)
    assert torch.allclose(w.sum(1), torch.ones(blocks.n_items))
    assert (w > 0).all() and w[:, 0].std() > 0
    assert h.shape == (blocks.n_items, 16)


def test_structure_embedding_matches_eq_5_6(blocks):
    model = _mmgef(blocks, item_layers=2, lambda_coeff=0.7)
    model.eval()
    h, w = model.item_structure_embedding(return_weights=True)
    s = model.structure
    e_m = (0.7 * s.initial_fused.to_dense()
           + 0.3 * knn_graph(s.projected("fused"), s.knn_k).to_dense())
    e_c = cooccurrence_graph(model_inputs(blocks).train, 10, "symmetric").to_dense()  # the defaults
    e_u = w[:, :1] * e_m + w[:, 1:] * e_c
    x = model.backbone.item_embedding.weight
    assert torch.allclose(h, e_u @ (e_u @ x), atol=1e-5)


def test_without_attention_the_graphs_are_averaged(blocks):
    model = _mmgef(blocks, attention=False)
    model.eval()
    assert model.attention is None
    h, w = model.item_structure_embedding(return_weights=True)
    assert torch.equal(w, torch.full_like(w, 0.5))
    x = model.backbone.item_embedding.weight
    e_m = sum(wt * g.to_dense() for wt, g in model.content_terms())
    e_c = model.cf_graph.to_dense()
    assert torch.allclose(h, 0.5 * (e_m + e_c) @ x, atol=1e-6)


def test_each_ablation_flag_changes_exactly_its_part(blocks):
    full = _mmgef(blocks)
    no_att = _mmgef(blocks, attention=False)
    no_cf = _mmgef(blocks, use_cf=False)
    neither = _mmgef(blocks, use_cf=False, attention=False)
    names = {k: {n for n, _ in m.named_parameters()} for k, m in
             [("full", full), ("no_att", no_att), ("no_cf", no_cf), ("neither", neither)]}
    att = {n for n in names["full"] if n.startswith("attention.")}
    assert att and names["no_att"] == names["full"] - att  # w/o Att: only the attention goes
    assert names["no_cf"] == names["no_att"] == names["neither"]
    # shared parameters are identical (same seed), so any difference comes from the flag alone
    for m in (no_att, no_cf, neither):
        for n, p in m.named_parameters():
            assert torch.equal(p, dict(full.named_parameters())[n])
        m.eval()
    full.eval()
    assert full.use_cf and no_att.use_cf and not no_cf.use_cf and not neither.use_cf
    # w/o CF: E^u = E^m, no co-occurrence graph at all
    x = full.backbone.item_embedding.weight
    e_m = sum(wt * g.to_dense() for wt, g in no_cf.content_terms())
    assert not hasattr(no_cf, "cf_graph")
    assert torch.allclose(no_cf.item_structure_embedding(), e_m @ x, atol=1e-6)
    # w/o CF and w/o CF+Att are one model (eq. 5 over a single graph has weight 1)
    assert torch.equal(no_cf.item_structure_embedding(), neither.item_structure_embedding())
    # the content graph is the same in every variant; only the combination differs
    for m in (no_att, no_cf, neither):
        assert torch.equal(m.structure.initial_fused.to_dense(), full.structure.initial_fused.to_dense())
    assert not torch.allclose(full.item_structure_embedding(), no_att.item_structure_embedding())
    assert not torch.allclose(no_att.item_structure_embedding(), no_cf.item_structure_embedding())


def test_cooccurrence_options_reach_the_model(blocks):
    model = _mmgef(blocks, cooc_topk=2)
    counts = np.diff(model.cf_graph.crow_indices().numpy())
    assert counts.max() <= 2
    # top-k makes E^c directed: its transpose is kept for the backward pass
    assert torch.equal(model.cf_graph_t.to_dense(), model.cf_graph.to_dense().T)
    ref = cooccurrence_graph(model_inputs(blocks).train, topk=2, normalize="symmetric")
    assert torch.equal(model.cf_graph.to_dense(), ref.to_dense())
    paper = _mmgef(blocks, cooc_topk=0, cooc_norm="max")  # eq. 3-4 as printed
    assert paper.cf_graph_t is None  # the full graph is symmetric and is its own transpose
    eq_4 = cooccurrence_graph(model_inputs(blocks).train).to_dense()
    assert torch.allclose(paper.cf_graph.to_dense(), eq_4)


def test_default_cooccurrence_graph_is_at_the_content_graphs_scale(blocks):
    """The paper's ``C / C_max`` rows sum to many times the content graph's; the default's do not."""
    def median_row_sum(g):
        return float(g.to_dense().sum(1).median())

    model = _mmgef(blocks)
    content = median_row_sum(model.structure.initial_fused)
    assert 0.5 < median_row_sum(model.cf_graph) / content < 2
    paper = _mmgef(blocks, cooc_topk=0, cooc_norm="max")
    assert median_row_sum(paper.cf_graph) / content > 2


def test_gradients_reach_every_parameter_and_the_loss_is_finite(blocks):
    model = _mmgef(blocks, item_layers=2)
    model.train()
    model.on_epoch_start(0)
    terms = model.loss(*_batch(blocks))
    assert {"bpr", "reg"} <= set(terms)
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # later batches of the epoch reuse the content graph detached (LATTICE's rebuild pattern)
    model.zero_grad(set_to_none=True)
    sum(model.loss(*_batch(blocks, seed=1)).values()).backward()
    assert model.structure.projections["fused"].weight.grad is None
    assert model.attention.proj.weight.grad is not None


def test_the_learned_graph_is_restored_from_a_checkpoint(blocks):
    model = _mmgef(blocks)
    model.train()
    model.on_epoch_start(0)
    sum(model.loss(*_batch(blocks)).values()).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    ref = model.full_representations()
    other = _mmgef(blocks, seed=5)
    other.load_state_dict(model.state_dict())
    got = other.full_representations()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ref, got, strict=True))


@pytest.mark.parametrize("flags", [{}, {"use_cf": False, "attention": False}])
def test_mmgef_learns_the_blocks(blocks, flags):
    model = _mmgef(blocks, **flags)
    cfg = TrainConfig(lr=0.05, epochs=30, patience=30, batch_size=32, seed=0, eval_every=10)
    before = evaluate_split(model, blocks, "test", cfg)
    result = fit(model, blocks, cfg, progress=False)
    hist = result["history"]
    assert hist[-1]["loss_bpr"] < 0.7 * hist[0]["loss_bpr"]
    assert result["test"]["recall@10"] > 0.8
    assert result["test"]["recall@10"] > min(before["recall@10"] + 0.2, 0.99)


def test_config_rejects_bad_values(blocks):
    for bad in ({"feature_fusion": "max"}, {"cooc_norm": "l1"}, {"cooc_topk": -1}, {"item_layers": 0},
                {"knn_k": 0}, {"lambda_coeff": 1.5}, {"modalities": ("image", "image")}):
        with pytest.raises(ValueError):
            MMGEFConfig(**bad)
    with pytest.raises(ConfigError, match="audio"):
        _mmgef(blocks, modalities=("audio",))
    with pytest.raises(ValueError, match="one dimension"):
        _mmgef(blocks, feature_fusion="mean")  # image 8-d, text 6-d


def test_modality_subsets_and_fusions(blocks):
    image_only = _mmgef(blocks, modalities=("image",), feature_fusion="mean")
    raw = torch.as_tensor(blocks.features["image"])
    assert torch.allclose(image_only.structure.feat_fused, raw)
    cat = _mmgef(blocks, feature_fusion="concat")
    assert cat.structure.feat_fused.shape[1] == 14


# --- CB ---------------------------------------------------------------------------------------

def _hand_dataset():
    #            item 0    item 1    item 2     item 3
    feats = np.array([[1, 0], [0, 2], [3, 3], [1, -1]], dtype=np.float32)
    train = sp.csr_matrix(np.array([[1, 0, 0, 0],   # user 0 bought item 0
                                    [1, 1, 0, 0],   # user 1 bought items 0 and 1
                                    [0, 0, 0, 0]], dtype=np.float32))  # user 2: nothing
    valid = sp.csr_matrix(np.array([[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0]], dtype=np.float32))
    return Dataset(name="hand", train=train, valid=valid, test=test, features={"image": feats})


def _cb(data, **cfg):
    return ContentBased.from_inputs(CBConfig(**cfg), model_inputs(data))


def test_cb_ranks_by_cosine_on_a_hand_example():
    data = _hand_dataset()
    model = _cb(data)
    users, items = model.full_representations()
    scores = users @ items.T
    s2 = 2 ** -0.5
    # user 0's profile is (1, 0): cosines 1, 0, 1/√2, 1/√2
    np.testing.assert_allclose(scores[0].numpy(), [1, 0, s2, s2], atol=1e-6)
    # user 1's profile is the mean of (1, 0) and (0, 1), direction (1, 1): cosines 1/√2, 1/√2, 1, 0
    np.testing.assert_allclose(scores[1].numpy(), [s2, s2, 1, 0], atol=1e-6)
    np.testing.assert_allclose(scores[2].numpy(), 0, atol=0)  # no training items: no preference
    assert not list(model.parameters()) and model.trainable is False
    cfg = TrainConfig(topk=(1, 20))
    test = evaluate_split(model, data, "test", cfg)
    # user 0: item 0 masked, best unseen item is 2 or 3 (tie at 1/√2), test item 3
    # user 1: items 0, 1 masked, item 2 scores 1 and is the test item -> hit
    assert test["recall@20"] == pytest.approx(1.0)
    assert test["recall@1"] >= 1 / 3


def test_cb_profiles_are_means_of_unit_features_not_raw_ones():
    data = _hand_dataset()
    model = _cb(data)
    # raw mean of (1, 0) and (0, 2) points towards item 1; the unit-feature mean is (0.5, 0.5)
    assert torch.allclose(model.profiles()[1], torch.tensor([0.5, 0.5]))


def test_cb_learns_nothing_but_ranks_the_blocks(blocks):
    model = _cb(blocks)
    cfg = TrainConfig(seed=0)
    result = evaluate_split(model, blocks, "test", cfg)
    assert result["recall@10"] > 0.8  # features encode the blocks
    terms = model.loss(*_batch(blocks))
    assert set(terms) == {"bpr", "reg"} and torch.isfinite(sum(terms.values()))
    assert not sum(terms.values()).requires_grad
    assert evaluate_split(_cb(blocks, feature_fusion="concat"), blocks, "test", cfg)["recall@10"] > 0.8
    with pytest.raises(ValueError, match="one dimension"):
        _cb(blocks, feature_fusion="mean")  # image 8-d, text 6-d


def test_cb_uses_the_chosen_modalities(blocks):
    text_only = _cb(blocks, modalities=("text",))
    ref = F.normalize(torch.as_tensor(blocks.features["text"]), dim=1)
    assert torch.allclose(text_only.item_unit, ref)
    with pytest.raises(ValueError):
        CBConfig(feature_fusion="sum")
    with pytest.raises(ConfigError, match="audio"):
        _cb(blocks, modalities=("audio",))


def test_feature_fusion_has_one_name_and_old_runs_still_load():
    from latticerec.train.build import config_from_dict, resolve_config

    for model in ("mmgef", "cb"):
        run = resolve_config(model, {"feature_fusion": "concat"})
        assert run.model_config.feature_fusion == "concat"
        with pytest.raises(ConfigError, match="feature_fusion"):  # the error lists the valid name
            resolve_config(model, {"fusion": "concat"})
        saved = run.to_dict()
        saved["model_config"]["fusion"] = saved["model_config"].pop("feature_fusion")  # a run saved before
        assert config_from_dict(saved).model_config == run.model_config
    assert resolve_config("micro", {"fusion": "false"}).model_config.fusion is False  # MICRO's bool
