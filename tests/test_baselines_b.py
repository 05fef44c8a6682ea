"""Model-specific tests of the baselines SGL, MMGCN, GRCN and BM3 (the shared contract is in
test_model_contract.py): known values on toy inputs and each model's defining mechanism."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from latticerec.config import make_config
from latticerec.graphs.sparse import to_torch_csr
from latticerec.models.bm3 import BM3, BM3Config
from latticerec.models.grcn import GRCN, EdgeGraph, GRCNConfig, fuse_scores, modality_scores
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
    (GRCNConfig, {"pruning": "gentle"}, "pruning"),
    (GRCNConfig, {"edge_score": "dot"}, "edge_score"),
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

OLD_GRCN = {"edge_score": "cosine", "confidence_of": "sender", "pruning": "hard", "aggregation": "mean",
            "content_parts": "convolved"}  # this module's behaviour before it followed the paper


def _tiny_graph():
    """2 users, 3 items; edges in R's CSR order: (0, 0), (0, 1), (1, 1), (1, 2)."""
    r = sp.csr_matrix((np.ones(4, dtype=np.float32), ([0, 0, 1, 1], [0, 1, 1, 2])), shape=(2, 3))
    return EdgeGraph(to_torch_csr(r))


def _grcn(blocks, **options):
    torch.manual_seed(0)
    values = {"embed_dim": "6", "content_dim": "4", **options}
    model = GRCN.from_inputs(make_config(GRCNConfig, values), _inputs(blocks))
    if hasattr(model, "confidence"):  # ρ of both signs and order one: soft and hard pruning differ
        with torch.no_grad():
            model.confidence.normal_()
    return model


def _grcn_by_loops(model, train):
    """GRCN's representations written node by node from the paper's equations (1-10) and the
    module's options, with Python loops over neighbour lists: an implementation independent of the
    vectorised one (which uses sampled products, CSR sums and segment softmaxes)."""
    n_users, n_items = model.n_users, model.n_items
    coo = train.tocoo()
    n_u = {u: [] for u in range(n_users)}
    n_i = {i: [] for i in range(n_items)}
    for u, i in zip(coo.row.tolist(), coo.col.tolist(), strict=True):
        n_u[u].append(i)
        n_i[i].append(u)
    with torch.no_grad():
        protos = []
        for m in model.names:
            lin = model.projection[m]
            feats = getattr(model, f"feat_{m}")
            items = [F.normalize(F.leaky_relu(lin.weight @ f + lin.bias), dim=0) for f in feats]  # eq. 1
            users = [F.normalize(p, dim=0) for p in model.preference[m]]
            for _ in range(model.routing_iters):  # eq. 2-4
                routed = []
                for u in range(n_users):
                    e = [math.exp(float(items[i] @ users[u])) for i in n_u[u]]
                    acc = users[u] + sum((w / sum(e) * items[i] for w, i in zip(e, n_u[u], strict=True)),
                                         torch.zeros_like(users[u]))
                    routed.append(acc / acc.norm())
                users = routed
            protos.append((users, items))
        n_mod = len(protos)

        def aff(u, i, k):
            return float(protos[k][0][u] @ protos[k][1][i])

        def score(receiver_is_user, u, i, k):  # eq. 5 (or the raw cosine)
            if model.edge_score == "cosine":
                return aff(u, i, k)
            if receiver_is_user:
                return math.exp(aff(u, i, k)) / sum(math.exp(aff(u, j, k)) for j in n_u[u])
            return math.exp(aff(u, i, k)) / sum(math.exp(aff(v, i, k)) for v in n_i[i])

        def fused(receiver_is_user, u, i):  # eq. 6-7 and the pruning
            s = [score(receiver_is_user, u, i, k) for k in range(n_mod)]
            if model.weighting == "mean":
                w = sum(s) / n_mod
            elif model.weighting == "max":
                w = max(s)
            else:
                receiver = u if receiver_is_user else n_users + i
                sender = n_users + i if receiver_is_user else u
                rho = model.confidence[receiver if model.confidence_of == "receiver" else sender]
                w = max(float(rho[k]) * s[k] for k in range(n_mod))
            return max(w, 0.0) if model.pruning == "hard" else w

        def convolve(x, w_user, w_item):  # eq. 8
            out = torch.zeros_like(x)
            for u in range(n_users):
                for i in n_u[u]:
                    out[u] += w_user(u, i) * x[n_users + i]
                    out[n_users + i] += w_item(u, i) * x[u]
            if model.aggregation == "mean":
                deg = [len(n_u[u]) for u in range(n_users)] + [len(n_i[i]) for i in range(n_items)]
                out /= torch.tensor(deg, dtype=x.dtype).clamp_min(1)[:, None]
            return out

        x = F.normalize(model.id_embedding.weight, dim=1)
        total = x.clone()
        for _ in range(model.n_layers):  # eq. 9
            x = convolve(x, lambda u, i: fused(True, u, i), lambda u, i: fused(False, u, i))
            total += x
        parts = [total]
        for k, (users, items) in enumerate(protos):  # eq. 10
            c = torch.cat([torch.stack(users), torch.stack(items)])
            if model.content_parts == "convolved":
                def prune(s):
                    return max(s, 0.0) if model.pruning == "hard" else s
                c = c + convolve(c, lambda u, i, k=k: prune(score(True, u, i, k)),
                                 lambda u, i, k=k: prune(score(False, u, i, k)))
            parts.append(c)
        out = torch.cat(parts, dim=1)
    return out[:n_users], out[n_users:]


@pytest.mark.parametrize("options", [
    {},  # the paper's GRCN: eq. 5 softmax scores, receiver's ρ, soft pruning, sums, raw modality parts
    {"pruning": "hard"},  # GRCN_hard
    {"modality_weighting": "max", "aggregation": "mean"},
    {"modality_weighting": "mean", "content_parts": "convolved"},
    {"confidence_of": "sender", "content_parts": "convolved"},  # as the released code (but soft)
    OLD_GRCN,
    {**OLD_GRCN, "modality_weighting": "mean"},
], ids=["paper", "hard", "max-mean", "mean-convolved", "sender", "old", "old-mean"])
def test_grcn_representations_equal_a_loop_implementation_of_the_equations(blocks, options):
    model = _grcn(blocks, **options)
    users, items = model.propagate()
    ref_users, ref_items = _grcn_by_loops(model, blocks.train)
    assert torch.allclose(users, ref_users, atol=1e-5) and torch.allclose(items, ref_items, atol=1e-5)


def test_grcn_eq5_scores_are_softmaxes_over_the_receiving_nodes_neighbours():
    graph = _tiny_graph()
    ln2, ln3 = math.log(2.0), math.log(3.0)
    affinity = torch.tensor([[0.0, ln2], [ln3, 0.0], [0.0, ln2], [0.0, 0.0]])  # 4 edges, 2 modalities
    to_user, to_item = modality_scores(affinity, graph.users, graph.items, 2, 3, "softmax")
    # user 0 receives from items 0, 1; user 1 from items 1, 2
    expected = torch.tensor([[1 / 4, 2 / 3], [3 / 4, 1 / 3], [1 / 2, 2 / 3], [1 / 2, 1 / 3]])
    assert torch.allclose(to_user, expected)
    # item 0 receives from user 0 only, item 1 from users 0, 1, item 2 from user 1 only
    assert torch.allclose(to_item, torch.tensor([[1.0, 1.0], [3 / 4, 1 / 3], [1 / 4, 2 / 3], [1.0, 1.0]]))
    same = modality_scores(affinity, graph.users, graph.items, 2, 3, "cosine")
    assert all(torch.equal(s, affinity) for s in same)
    # the softmax is shift-invariant per receiving node and stable for large affinities
    big = modality_scores(affinity + 500.0, graph.users, graph.items, 2, 3, "softmax")
    assert torch.allclose(big[0], to_user) and torch.allclose(big[1], to_item)


def test_grcn_eq7_fuses_with_the_base_vector_and_prunes_softly_or_hard():
    to_user = torch.tensor([[0.25, 0.75], [0.5, 0.5]])  # 2 edges, 2 modalities
    to_item = torch.tensor([[1.0, 0.5], [0.2, 0.4]])
    rho_user = torch.tensor([[2.0, -1.0], [-1.0, -1.0]])
    rho_item = torch.tensor([[1.0, 1.0], [0.5, 3.0]])
    w_u, w_i = fuse_scores(to_user, to_item, "confidence", "soft", rho_user, rho_item)
    assert torch.allclose(w_u, torch.tensor([0.5, -0.5])) and torch.allclose(w_i, torch.tensor([1.0, 1.2]))
    w_u, w_i = fuse_scores(to_user, to_item, "confidence", "hard", rho_user, rho_item)
    assert torch.allclose(w_u, torch.tensor([0.5, 0.0])) and torch.allclose(w_i, torch.tensor([1.0, 1.2]))
    w_u, w_i = fuse_scores(to_user, to_item, "mean")
    assert torch.allclose(w_u, torch.tensor([0.5, 0.5])) and torch.allclose(w_i, torch.tensor([0.75, 0.3]))
    w_u, _ = fuse_scores(to_user - 0.6, to_item, "max", "hard")
    assert torch.allclose(w_u, torch.tensor([0.15, 0.0]))
    with pytest.raises(ValueError, match="base vectors"):
        fuse_scores(to_user, to_item, "confidence")


def test_grcn_confidence_of_picks_the_receiving_or_the_sending_node(blocks):
    receiver, sender = _grcn(blocks), _grcn(blocks, confidence_of="sender")
    affinity = torch.rand(receiver.edge_users.numel(), 2)
    rho = receiver.confidence.detach()
    w_u, w_i = receiver.edge_weights(affinity)
    s_u, s_i = modality_scores(affinity, receiver.edge_users, receiver.edge_items, receiver.n_users,
                               receiver.n_items)
    assert torch.allclose(w_u, (rho[receiver.edge_users] * s_u).amax(1))
    assert torch.allclose(w_i, (rho[receiver.n_users + receiver.edge_items] * s_i).amax(1))
    w_u, w_i = sender.edge_weights(affinity)
    assert torch.allclose(w_u, (rho[receiver.n_users + receiver.edge_items] * s_u).amax(1))
    assert torch.allclose(w_i, (rho[receiver.edge_users] * s_i).amax(1))


def test_grcn_edge_operations_have_exact_values_and_gradients():
    graph = _tiny_graph()
    torch.manual_seed(0)
    users = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    items = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    edges = [(0, 0), (0, 1), (1, 1), (1, 2)]
    assert torch.allclose(graph.dot(users, items), torch.stack([users[u] @ items[i] for u, i in edges]))
    r_w = torch.zeros(2, 3, dtype=torch.float64)
    for e, (u, i) in enumerate(edges):
        r_w[u, i] = w[e]
    assert torch.allclose(graph.to_users(w, items), r_w @ items)
    assert torch.allclose(graph.to_items(w, users), r_w.T @ users)
    assert torch.autograd.gradcheck(graph.dot, (users, items))
    assert torch.autograd.gradcheck(graph.to_users, (w, items))
    assert torch.autograd.gradcheck(graph.to_items, (w, users))


def test_grcn_hard_pruning_carries_no_message_over_a_pruned_edge(blocks):
    model = _grcn(blocks, modality_weighting="mean", edge_score="cosine", pruning="hard", n_layers="1")
    n_edges = model.edge_users.numel()
    affinity = torch.ones(n_edges, 1)
    affinity[0] = -0.5  # the first training edge (user 0, its first item) is a false positive
    w_u, w_i = model.edge_weights(affinity)
    assert w_u[0] == 0 and w_i[0] == 0 and (w_u[1:] > 0).all()
    u0, i0 = int(model.edge_users[0]), int(model.edge_items[0])
    x = torch.zeros(model.n_users + model.n_items, 3)
    x[model.n_users + i0] = 1.0  # only the pruned edge's item carries a signal
    assert model.convolve(x, w_u, w_i)[u0].abs().sum() == 0  # ... and it does not reach the user
    soft = _grcn(blocks, modality_weighting="mean", edge_score="cosine", n_layers="1")
    w_u, w_i = soft.edge_weights(affinity)
    assert w_u[0] == -0.5  # soft pruning keeps the (negative) weight
    assert torch.allclose(soft.convolve(x, w_u, w_i)[u0], torch.full((3,), -0.5))


def test_grcn_routing_moves_prototypes_toward_the_users_items(blocks):
    none = _grcn(blocks, modalities="image", routing_iters="0")
    routed = _grcn(blocks, modalities="image", routing_iters="3")
    with torch.no_grad():
        s0 = none.graph.dot(*none.prototypes("image")).mean()
        s3 = routed.graph.dot(*routed.prototypes("image")).mean()
    assert s3 > s0 + 0.1  # routed prototypes agree with the items the users interacted with


def test_grcn_representation_concatenates_id_and_every_modality(blocks):
    model = GRCN.from_inputs(make_config(GRCNConfig, {"embed_dim": 8, "content_dim": 4}), _inputs(blocks))
    users, items = model.propagate()
    assert users.shape[1] == items.shape[1] == 8 + 2 * 4
    # eq. 10: the modality parts are the prototypes and contents themselves
    u_img, i_img = model.prototypes("image")
    assert torch.allclose(users[:, 8:12], u_img) and torch.allclose(items[:, 8:12], i_img)


def test_grcn_confidence_init_ones_starts_at_the_plain_softmax_weights(blocks):
    xavier = _grcn(blocks)  # the helper redraws ρ; the constructor's own draw is checked here
    torch.manual_seed(0)
    released = GRCN.from_inputs(make_config(GRCNConfig, {"embed_dim": "6", "confidence_init": "xavier"}),
                                _inputs(blocks))
    assert released.confidence.abs().max() < 1.0 and released.confidence.std() > 0  # Xavier-normal
    ones = GRCN.from_inputs(make_config(GRCNConfig, {"embed_dim": "6"}), _inputs(blocks))  # default
    assert torch.equal(ones.confidence.detach(), torch.ones(ones.n_users + ones.n_items, 2))
    affinity = torch.rand(xavier.edge_users.numel(), 2)
    s_u, s_i = modality_scores(affinity, ones.edge_users, ones.edge_items, ones.n_users, ones.n_items)
    w_u, w_i = ones.edge_weights(affinity)
    assert torch.allclose(w_u, s_u.amax(1)) and torch.allclose(w_i, s_i.amax(1))


@pytest.mark.parametrize("option", ["modality_weighting", "edge_score", "confidence_of", "pruning",
                                    "aggregation", "content_parts", "confidence_init"])
def test_grcn_rejects_an_unknown_value_of_every_option(blocks, option):
    with pytest.raises(ValueError, match=f"{option} must be one of .*'bogus'"):
        GRCNConfig(**{option: "bogus"})
    with pytest.raises(Exception, match=option):
        make_config(GRCNConfig, {option: "bogus"})
    with pytest.raises(ValueError, match=f"{option} must be one of"):
        GRCN(_inputs(blocks), **{option: "bogus"})


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


def test_a_grcn_run_saved_before_the_paper_formulas_loads_with_the_formulas_it_was_trained_with():
    from latticerec.train.build import LEGACY, config_from_dict, resolve_config

    saved = resolve_config("grcn", {}).to_dict()
    for key in LEGACY["grcn"]:
        del saved["model_config"][key]  # as written by the code before these options existed
    old = config_from_dict(saved).model_config
    assert {k: getattr(old, k) for k in LEGACY["grcn"]} == LEGACY["grcn"]
    assert config_from_dict(resolve_config("grcn", {}).to_dict()).model_config.pruning == "soft"
