"""Model-specific tests of the baselines SGL, MMGCN, GRCN and BM3 (the shared contract is in
test_model_contract.py): known values on toy inputs and each model's defining mechanism."""

import math

import pytest
import torch
import torch.nn.functional as F

from latticerec.config import make_config
from latticerec.models.bm3 import BM3, BM3Config
from latticerec.models.grcn import GRCN, GRCNConfig, refine_weights
from latticerec.models.losses import bootstrap_cosine_loss, cross_view_info_nce
from latticerec.models.mmgcn import MMGCN, MMGCNConfig, mean_adjacency
from latticerec.models.sgl import SGL, SGLConfig
from latticerec.train.build import model_inputs
from latticerec.train.sampling import BPRSampler


def _inputs(data):
    return model_inputs(data)


def _batch(data, size=64):
    users, pos, neg = next(BPRSampler(data.train, seed=0).epoch(0, size))
    return torch.as_tensor(users), torch.as_tensor(pos), torch.as_tensor(neg)


# -- losses -------------------------------------------------------------------------------------


def test_cross_view_info_nce_equals_the_hand_computed_value():
    # unit vectors: cos(a0, b0) = 1, cos(a0, b1) = 0, cos(a1, b0) = 0.6, cos(a1, b1) = 0.8
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    b = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # scale must not matter (cosine)
    tau = 0.5
    row0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0 / tau)))
    row1 = -math.log(math.exp(0.8 / tau) / (math.exp(0.6 / tau) + math.exp(0.8 / tau)))
    got = cross_view_info_nce(a, b, torch.tensor([0, 1]), tau)
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # one anchor: only its own row of the mean
    assert cross_view_info_nce(a, b, torch.tensor([1]), tau).item() == pytest.approx(row1, rel=1e-6)


def test_cross_view_info_nce_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        cross_view_info_nce(torch.ones(2, 2), torch.ones(3, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="anchor"):
        cross_view_info_nce(torch.ones(2, 2), torch.ones(2, 2), torch.tensor([], dtype=torch.long))


def test_bootstrap_cosine_loss_value_and_stop_gradient():
    online = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    loss = bootstrap_cosine_loss(online, target)
    assert loss.item() == pytest.approx((0.0 + (1 - 1 / math.sqrt(2))) / 2, rel=1e-6)
    loss.backward()
    assert online.grad is not None and target.grad is None


# -- configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, values, message", [
    (SGLConfig, {"tau": "0"}, "tau"),
    (SGLConfig, {"drop_ratio": "1"}, "drop_ratio"),
    (SGLConfig, {"augmentation": "walk"}, "augmentation"),
    (SGLConfig, {"ssl_negatives": "some"}, "ssl_negatives"),
    (MMGCNConfig, {"combination": "sum"}, "combination"),
    (MMGCNConfig, {"embed_dim": "0"}, "embed_dim"),
    (MMGCNConfig, {"modalities": "image,image"}, "twice"),
    (GRCNConfig, {"modality_weighting": "vote"}, "modality_weighting"),
    (GRCNConfig, {"routing_iters": "-1"}, "routing_iters"),
    (BM3Config, {"dropout": "1.0"}, "dropout"),
    (BM3Config, {"reg": "-1"}, "reg"),
    (BM3Config, {"ssl_weight": "1"}, "ssl_weight"),  # an SGL option: unknown to BM3
])
def test_configs_reject_invalid_values_and_unknown_keys(cls, values, message):
    with pytest.raises(Exception, match=message):
        make_config(cls, values)


# -- SGL ----------------------------------------------------------------------------------------


def _sgl(blocks, **options):
    return SGL.from_inputs(make_config(SGLConfig, {"embed_dim": 8, **options}), _inputs(blocks))


def _dense(adj):
    return adj.to_dense()


@pytest.mark.parametrize("augmentation", ["edge", "node"])
def test_sgl_views_differ_from_each_other_and_are_seeded(blocks, augmentation):
    model = _sgl(blocks, drop_ratio="0.3", augmentation=augmentation)
    torch.manual_seed(11)
    model.on_epoch_start(0)
    first = [_dense(v) for v in model.views]
    assert not torch.equal(first[0], first[1])  # two different views
    full = _dense(model.adj)
    for view in first:  # a view only drops edges of the training graph
        assert ((view != 0) <= (full != 0)).all() and (view != 0).sum() < (full != 0).sum()
    torch.manual_seed(11)
    model.on_epoch_start(5)
    assert all(torch.equal(a, _dense(b)) for a, b in zip(first, model.views, strict=True))
    torch.manual_seed(12)
    model.on_epoch_start(1)
    assert not torch.equal(first[0], _dense(model.views[0]))  # a new epoch, new views


def test_sgl_node_dropout_removes_all_edges_of_a_dropped_node(blocks):
    model = _sgl(blocks, drop_ratio="0.5", augmentation="node")
    torch.manual_seed(0)
    view = _dense(model.sample_view())
    n_users = blocks.n_users
    user_deg = (view[:n_users, n_users:] != 0).sum(1)
    full_deg = (_dense(model.adj)[:n_users, n_users:] != 0).sum(1)
    assert (user_deg == 0).any()  # some users dropped with their edges
    assert ((user_deg == 0) | (user_deg <= full_deg)).all()


def test_sgl_without_dropout_is_lightgcn_plus_the_ssl_term(blocks):
    model = _sgl(blocks, drop_ratio="0", ssl_weight="0.5", tau="0.2")
    model.on_epoch_start(0)
    users, pos, neg = _batch(blocks)
    terms = model.loss(users, pos, neg)
    assert set(terms) == {"bpr", "reg", "ssl"}
    u, i = model.propagate()  # both views are the full graph: the ssl term is computable by hand
    expected = 0.5 * (cross_view_info_nce(u, u, users.unique(), 0.2)
                      + cross_view_info_nce(i, i, pos.unique(), 0.2))
    assert terms["ssl"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_sgl_batch_negatives_use_only_the_anchors(blocks):
    model = _sgl(blocks, drop_ratio="0", ssl_negatives="batch")
    u, _ = model.propagate()
    anchors = torch.tensor([0, 3, 7])
    got = model.view_loss(u, u, anchors)
    expected = cross_view_info_nce(u[anchors], u[anchors], torch.arange(3), model.tau)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


# -- MMGCN --------------------------------------------------------------------------------------


def test_mmgcn_mean_adjacency_averages_the_neighbours(blocks):
    adj = mean_adjacency(_inputs(blocks).train).to_dense()
    sums = adj.sum(1)
    has_edges = sums > 0
    assert torch.allclose(sums[has_edges], torch.ones(int(has_edges.sum())))
    n_users = blocks.n_users
    assert (adj[:n_users, :n_users] == 0).all() and (adj[n_users:, n_users:] == 0).all()  # bipartite


def test_mmgcn_sums_one_representation_per_modality(blocks):
    inputs = _inputs(blocks)
    torch.manual_seed(0)
    model = MMGCN.from_inputs(make_config(MMGCNConfig, {"embed_dim": 8}), inputs)
    assert model.names == ["image", "text"]  # every modality of the dataset
    users, items = model.propagate()
    per_modality = [model.modality_representation(m) for m in model.names]
    assert torch.allclose(torch.cat([users, items]), per_modality[0] + per_modality[1], atol=1e-6)
    torch.manual_seed(0)
    image_only = MMGCN.from_inputs(make_config(MMGCNConfig, {"embed_dim": 8, "modalities": "image"}), inputs)
    assert image_only.names == ["image"] and "text" not in image_only.preference


def test_mmgcn_element_combination_builds_and_learns(blocks):
    model = MMGCN.from_inputs(make_config(MMGCNConfig, {"embed_dim": 8, "combination": "element"}),
                              _inputs(blocks))
    assert model.layers["image"][0].w3.in_features == 8
    sum(model.loss(*_batch(blocks)).values()).backward()
    assert model.layers["image"][0].w3.weight.grad.abs().sum() > 0


# -- GRCN ---------------------------------------------------------------------------------------


def test_grcn_pruning_drops_an_edge_whose_affinity_is_negative():
    affinity = torch.tensor([[0.5, 0.2], [-0.4, -0.1], [-0.3, 0.6]])  # 3 edges, 2 modalities
    w_ui, w_iu = refine_weights(affinity, "mean")
    assert torch.allclose(w_ui, torch.tensor([0.35, 0.0, 0.15])) and torch.equal(w_ui, w_iu)
    w_ui, _ = refine_weights(affinity, "max")
    assert torch.allclose(w_ui, torch.tensor([0.5, 0.0, 0.6]))  # edge 1 is negative everywhere
    conf = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    w_ui, w_iu = refine_weights(affinity, "confidence", conf, torch.ones(3, 2))
    assert torch.allclose(w_ui, torch.tensor([0.5, 0.0, 0.3]))
    assert torch.allclose(w_iu, torch.tensor([0.5, 0.0, 0.6]))


def test_grcn_refined_graph_carries_no_message_over_a_pruned_edge(blocks):
    inputs = _inputs(blocks)
    torch.manual_seed(0)
    model = GRCN.from_inputs(make_config(GRCNConfig, {"embed_dim": 4, "content_dim": 4, "n_layers": 1,
                                                      "modality_weighting": "mean"}), inputs)
    n_edges = model.edge_users.numel()
    affinity = torch.ones(n_edges, 1)
    affinity[0] = -0.5  # the first training edge (user 0, its first item) is a false positive
    w_ui, w_iu = model.refined_weights(affinity)
    assert w_ui[0] == 0 and w_iu[0] == 0 and (w_ui[1:] > 0).all()
    u0, i0 = int(model.edge_users[0]), int(model.edge_items[0])
    x = torch.zeros(model.n_users + model.n_items, 3)
    x[model.n_users + i0] = 1.0  # only the pruned edge's item carries a signal
    out = model.convolve(x, w_ui, w_iu)
    assert out[u0].abs().sum() == 0  # ... and it does not reach the user
    kept = model.convolve(x, torch.ones(n_edges), torch.ones(n_edges))
    assert kept[u0].abs().sum() > 0


def test_grcn_routing_moves_prototypes_toward_the_users_items(blocks):
    inputs = _inputs(blocks)
    cfg = {"embed_dim": 4, "content_dim": 4, "modalities": "image"}
    torch.manual_seed(0)
    none = GRCN.from_inputs(make_config(GRCNConfig, {**cfg, "routing_iters": "0"}), inputs)
    torch.manual_seed(0)
    routed = GRCN.from_inputs(make_config(GRCNConfig, {**cfg, "routing_iters": "3"}), inputs)
    with torch.no_grad():
        s0 = none.edge_scores(*none.prototypes("image")).mean()
        s3 = routed.edge_scores(*routed.prototypes("image")).mean()
    assert s3 > s0 + 0.1  # routed prototypes agree with the items the users interacted with


def test_grcn_representation_concatenates_id_and_every_modality(blocks):
    model = GRCN.from_inputs(make_config(GRCNConfig, {"embed_dim": 8, "content_dim": 4}), _inputs(blocks))
    users, items = model.propagate()
    assert users.shape[1] == items.shape[1] == 8 + 2 * 4


# -- BM3 ----------------------------------------------------------------------------------------


def _bm3(blocks, **options):
    torch.manual_seed(0)
    return BM3.from_inputs(make_config(BM3Config, {"embed_dim": 8, **options}), _inputs(blocks))


def test_bm3_target_branch_gets_no_gradient(blocks):
    model = _bm3(blocks)
    model.train()
    users, pos, neg = _batch(blocks)
    h_u, _ = model.encoder.propagate()
    target = model.target(h_u)
    assert not target.requires_grad and target.grad_fn is None
    # the reconstruction term through the target side only: no gradient reaches the encoder
    online = model.predictor(torch.randn(len(users), 8))
    bootstrap_cosine_loss(online, model.target(h_u[users])).backward()
    assert model.encoder.user_embedding.weight.grad is None
    assert model.encoder.item_embedding.weight.grad is None
    assert model.predictor.weight.grad is not None


def test_bm3_gradient_equals_the_online_branch_alone(blocks):
    """With dropout 0 the target equals the online representation; the loss's gradient must be that
    of the online branch with the target held constant (stop-gradient), not of both branches."""
    model = _bm3(blocks, dropout="0")
    model.train()
    users, pos, neg = _batch(blocks)
    model.loss(users, pos, neg)["rec"].backward()
    got = model.encoder.user_embedding.weight.grad.clone()
    model.zero_grad()
    h_u, h_i = model.encoder.propagate()
    const_u, const_i = h_u.detach()[users], h_i.detach()[pos]
    rec = (1 - F.cosine_similarity(model.predictor(h_u[users]), const_i)).mean() \
        + (1 - F.cosine_similarity(model.predictor(h_i[pos]), const_u)).mean()
    rec.backward()
    assert torch.allclose(got, model.encoder.user_embedding.weight.grad, atol=1e-7)


def test_bm3_ignores_negatives_and_has_no_bpr(blocks):
    model = _bm3(blocks, dropout="0")
    model.eval()  # no dropout: deterministic
    users, pos, neg = _batch(blocks)
    a = model.loss(users, pos, neg)
    b = model.loss(users, pos, torch.zeros_like(neg))
    assert set(a) == {"rec", "align", "mask", "reg"} and BM3.main_term == "rec"
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bm3_scores_are_the_predictor_views(blocks):
    model = _bm3(blocks)
    users, items = model.full_representations()
    h_u, h_i = model.encoder.propagate()
    assert torch.allclose(users, model.predictor(h_u).detach())
    assert torch.allclose(items, model.predictor(h_i).detach())
