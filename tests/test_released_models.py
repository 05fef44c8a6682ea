"""Model-side settings of ``protocol=released`` (docs/fidelity.md #14, #15, #17, #19, #22, #23, #29):
each against a hand-computed or dense reference, each rejected when misspelt."""

import math

import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from latticerec.errors import ConfigError
from latticerec.graphs.adjacency import normalized_bipartite_adjacency, released_bipartite_adjacency
from latticerec.graphs.knn import knn_rows
from latticerec.graphs.sparse import to_torch_csr
from latticerec.train.build import build_model, resolve_config
from latticerec.train.sampling import BPRSampler
from latticerec.train.trainer import fit

# 2 users x 3 items: u0 likes i0, i1; u1 likes i1, i2
TOY = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
# D^-1 (A + I) by hand; rows/cols: u0, u1, i0, i1, i2 (row degrees with the self-loop: 3, 3, 2, 3, 2)
TOY_RELEASED = torch.tensor([
    [1 / 3, 0, 1 / 3, 1 / 3, 0],
    [0, 1 / 3, 0, 1 / 3, 1 / 3],
    [1 / 2, 0, 1 / 2, 0, 0],
    [1 / 3, 1 / 3, 0, 1 / 3, 0],
    [0, 1 / 2, 0, 0, 1 / 2],
])


def _build(data, model="lattice", **overrides):
    run = resolve_config(model, {"embed_dim": "16", **{k: str(v) for k, v in overrides.items()}})
    return build_model(run, data)


def _batch(data, seed=0):
    return tuple(torch.as_tensor(a) for a in next(BPRSampler(data.train, seed=seed).epoch(0, 64)))


def _loss(model, data, seed=0):
    return sum(model.loss(*_batch(data, seed)).values())


def _dense(graph):
    return graph.to_dense()


# -- #15 adj_norm --------------------------------------------------------------------------------------

def test_released_adjacency_is_the_hand_computed_row_normalised_matrix():
    adj = released_bipartite_adjacency(to_torch_csr(sp.csr_matrix(TOY.numpy())))
    assert torch.allclose(adj.to_dense(), TOY_RELEASED)
    assert torch.allclose(adj.to_dense().sum(1), torch.ones(5))
    sym = normalized_bipartite_adjacency(to_torch_csr(sp.csr_matrix(TOY.numpy()))).to_dense()
    assert sym[0, 0] == 0 and torch.allclose(sym, sym.T)  # the default: no self-loop, symmetric


def test_lightgcn_propagates_and_backpropagates_over_the_released_adjacency(blocks):
    model = _build(blocks, "lightgcn", adj_norm="released", n_layers=1)
    dense = released_bipartite_adjacency(to_torch_csr(blocks.train)).to_dense()
    x = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    users, items = model.propagate()
    ref = (x + dense @ x) / 2
    assert torch.allclose(torch.cat([users, items]), ref, atol=1e-6)
    # the gradient needs Âᵀ (Â is not symmetric): compare with autograd through the dense matrix
    w = torch.randn_like(ref)
    (torch.cat(model.propagate()) * w).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    (((x_ref + dense @ x_ref) / 2) * w).sum().backward()
    grads = torch.cat([model.user_embedding.weight.grad, model.item_embedding.weight.grad])
    assert torch.allclose(grads, x_ref.grad, atol=1e-6)
    default = _build(blocks, "lightgcn", n_layers=1)
    assert not torch.allclose(torch.cat(default.propagate()), ref, atol=1e-4)


# -- #17 ngcf ------------------------------------------------------------------------------------------

def test_released_ngcf_layer_matches_the_formula(blocks):
    model = _build(blocks, "ngcf", ngcf="released", adj_norm="released", n_layers=2)
    model.eval()
    dense = model.adj.to_dense()
    x = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    layers = [x]
    for w1, w2 in zip(model.w_gc, model.w_bi, strict=True):
        side = dense @ x
        x = (F.leaky_relu(side @ w1.weight.T + w1.bias, 0.01)
             + F.leaky_relu((x * side) @ w2.weight.T + w2.bias, 0.01))
        layers.append(F.normalize(x, dim=1))
    ref = torch.stack(layers).mean(0)
    users, items = model.propagate()
    assert model.out_dim == 16 and items.shape == (blocks.n_items, 16)
    assert torch.allclose(torch.cat([users, items]), ref, atol=1e-5)
    # nn.Linear's default init: |W| <= 1/sqrt(fan_in) and a non-zero bias (Xavier: zero bias)
    bound = 1 / math.sqrt(16)
    assert all(lin.weight.abs().max() <= bound and lin.bias.abs().sum() > 0
               for lin in [*model.w_gc, *model.w_bi])
    default = _build(blocks, "ngcf", n_layers=2)
    assert default.out_dim == 48 and all(lin.bias.abs().sum() == 0 for lin in default.w_gc)


# -- #19 train_features --------------------------------------------------------------------------------

def test_trainable_features_move_but_the_initial_graph_and_the_data_do_not(blocks):
    model = _build(blocks, train_features="true")
    params = dict(model.named_parameters())
    names = [f"structure.feat_{m}" for m in model.structure.names]
    assert all(n in params for n in names)
    frozen = _build(blocks)
    assert not any(n in dict(frozen.named_parameters()) for n in names)
    data_before = {m: f.copy() for m, f in blocks.features.items()}
    initial_before = {m: _dense(getattr(model.structure, f"initial_{m}")).clone()
                      for m in model.structure.names}
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model.train()
    model.on_epoch_start(0)
    # the L2 term is the same as without train_features: the features are not in it
    terms = model.loss(*_batch(blocks))
    assert torch.allclose(terms["reg"], frozen.loss(*_batch(blocks))["reg"])
    sum(terms.values()).backward()
    assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in names)
    before = {n: params[n].detach().clone() for n in names}
    opt.step()
    assert all(not torch.equal(before[n], params[n]) for n in names)
    for m in model.structure.names:
        assert (blocks.features[m] == data_before[m]).all()
        assert torch.equal(_dense(getattr(model.structure, f"initial_{m}")), initial_before[m])


# -- #22 lattice_graph ---------------------------------------------------------------------------------

def _joint_reference(model, lam):
    s = model.structure
    alpha = torch.softmax(model.modal_scores, 0)
    raw = []
    for m in s.names:
        nbr, val = knn_rows(s.projected(m), s.knn_k, normalize=False)
        raw.append(torch.zeros(nbr.shape[0], nbr.shape[0]).scatter(1, nbr, val))
    summed = sum(a * r for a, r in zip(alpha, raw, strict=True))
    d = summed.sum(1).rsqrt()
    learned = d[:, None] * summed * d[None, :]
    initial = sum(a * _dense(getattr(s, f"initial_{m}")) for a, m in zip(alpha, s.names, strict=True))
    return (1 - lam) * learned + lam * initial


@pytest.mark.parametrize("lam", [0.0, 0.6])
def test_joint_lattice_graph_equals_the_dense_released_formula(blocks, lam):
    model = _build(blocks, lattice_graph="joint", lambda_coeff=lam, knn_k=5)
    with torch.no_grad():
        model.modal_scores.copy_(torch.tensor([0.8, -0.4]))  # unequal α
    model.eval()
    with torch.no_grad():
        h = model.item_structure_embedding()
        ref = _joint_reference(model, lam) @ model.backbone.item_embedding.weight
    assert torch.allclose(h, ref, atol=1e-5)
    per_modality = _build(blocks, lambda_coeff=lam, knn_k=5)
    per_modality.load_state_dict(model.state_dict())
    per_modality.eval()
    with torch.no_grad():
        assert not torch.allclose(per_modality.item_structure_embedding(), ref, atol=1e-4)


def test_joint_graph_trains_the_projections_and_alpha_on_the_rebuild_batch(blocks):
    model = _build(blocks, lattice_graph="joint")
    model.train()
    model.on_epoch_start(0)
    _loss(model, blocks).backward()
    assert all(lin.weight.grad.abs().sum() > 0 for lin in model.structure.projections.values())
    assert model.modal_scores.grad.abs().sum() > 0


# -- #23 alpha_live ------------------------------------------------------------------------------------

def test_alpha_enters_only_the_graph_built_on_the_first_batch(blocks):
    model = _build(blocks, alpha_live="false")
    model.train()
    model.on_epoch_start(0)
    _loss(model, blocks).backward()
    assert model.modal_scores.grad is not None and model.modal_scores.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    _loss(model, blocks, seed=1).backward()  # second batch: α is the graph's, detached
    assert model.modal_scores.grad is None
    live = _build(blocks)
    live.train()
    live.on_epoch_start(0)
    _loss(live, blocks).backward()
    live.zero_grad(set_to_none=True)
    _loss(live, blocks, seed=1).backward()
    assert live.modal_scores.grad is not None  # the default: α live on every batch


def test_stored_alpha_is_kept_until_the_next_build(blocks):
    model = _build(blocks, alpha_live="false")
    model.eval()
    with torch.no_grad():
        first = model.item_structure_embedding()
        assert torch.allclose(model.graph_alpha, torch.full((2,), 0.5))
        model.modal_scores.copy_(torch.tensor([2.0, -2.0]))
        assert torch.allclose(model.item_structure_embedding(), first)  # built graph, old α
        model.before_evaluation()  # the next build takes the current α
        assert not torch.allclose(model.item_structure_embedding(), first, atol=1e-4)
        assert torch.allclose(model.graph_alpha, torch.softmax(model.modal_scores, 0))


# -- #14 rebuild_on_eval -------------------------------------------------------------------------------

def _learned_values(model):
    return {m: getattr(model.structure, f"learned_val_{m}").clone() for m in model.structure.names}


def test_before_evaluation_rebuilds_the_learned_graphs_from_the_current_projections(blocks):
    model = _build(blocks)
    model.train()
    model.on_epoch_start(0)
    _loss(model, blocks).backward()
    built = _learned_values(model)
    with torch.no_grad():
        for lin in model.structure.projections.values():
            lin.weight.add_(0.5 * torch.randn_like(lin.weight))
    model.eval()
    model.full_representations()
    assert all(torch.equal(built[m], v) for m, v in _learned_values(model).items())  # reused
    model.before_evaluation()
    for m in model.structure.names:
        _, ref = knn_rows(model.structure.projected(m).detach(), model.structure.knn_k)
        assert torch.allclose(getattr(model.structure, f"learned_val_{m}"), ref, atol=1e-6)
        assert not torch.allclose(built[m], ref, atol=1e-4)


@pytest.mark.parametrize("rebuild", [False, True])
def test_fit_calls_the_rebuild_before_each_evaluation_when_asked(blocks, monkeypatch, rebuild):
    run = resolve_config("lattice", {"embed_dim": "8", "epochs": "2", "batch_size": "64",
                                     "rebuild_on_eval": str(rebuild)})
    model = build_model(run, blocks)
    calls = []
    original = model.before_evaluation
    monkeypatch.setattr(model, "before_evaluation", lambda: (calls.append(1), original()))
    fit(model, blocks, run.train)
    assert len(calls) == (3 if rebuild else 0)  # 2 validations + the test
    if rebuild:  # the test saw the graph of the best weights' projections
        for m in model.structure.names:
            _, ref = knn_rows(model.structure.projected(m).detach(), model.structure.knn_k)
            assert torch.allclose(getattr(model.structure, f"learned_val_{m}"), ref, atol=1e-6)


# -- #29 att_init --------------------------------------------------------------------------------------

def test_micro_attention_init(blocks):
    torch_init = _build(blocks, "micro", att_init="torch")
    bound = 1 / math.sqrt(16)
    assert torch_init.att_w.weight.abs().max() <= bound and torch_init.att_w.bias.abs().sum() > 0
    xavier = _build(blocks, "micro")
    assert xavier.att_w.bias.abs().sum() == 0


# -- validation and the preset -------------------------------------------------------------------------

@pytest.mark.parametrize("model,key,value", [
    ("lightgcn", "adj_norm", "row"), ("ngcf", "ngcf", "paper"), ("lattice", "lattice_graph", "sum"),
    ("lattice", "alpha_live", "maybe"), ("lattice", "train_features", "2"), ("micro", "att_init", "he"),
    ("lattice", "rebuild_on_eval", "sometimes")])
def test_unknown_values_are_rejected_naming_the_option(model, key, value):
    with pytest.raises(ConfigError, match=key):
        resolve_config(model, {key: value})


def test_defaults_keep_todays_behaviour():
    run = resolve_config("lattice")
    cfg = run.model_config
    assert (cfg.lattice_graph, cfg.alpha_live, cfg.train_features) == ("per_modality", True, False)
    assert run.backbone_config.adj_norm == "symmetric" and run.train.rebuild_on_eval is False
    assert resolve_config("ngcf").model_config.ngcf == "latticerec"
    assert resolve_config("micro").model_config.att_init == "xavier"


def test_released_preset_sets_the_model_side_options():
    lat = resolve_config("lattice", {"protocol": "released"})
    assert (lat.model_config.lattice_graph, lat.model_config.alpha_live, lat.model_config.train_features) == (
        "joint", False, True)
    assert lat.train.rebuild_on_eval and lat.backbone_config.adj_norm == "released"
    ngcf = resolve_config("lattice", {"protocol": "released", "backbone": "ngcf"}).backbone_config
    assert (ngcf.ngcf, ngcf.adj_norm, ngcf.n_layers) == ("released", "released", 2)
    mic = resolve_config("micro", {"protocol": "released"})
    assert (mic.model_config.att_init, mic.model_config.train_features, mic.train.rebuild_on_eval) == (
        "torch", True, True)
    assert (mic.model_config.specific, mic.model_config.preference, mic.model_config.cl_batch,
            mic.model_config.cl_negatives) == (False, False, 0, "all")
    over = resolve_config("lattice", {"protocol": "released", "lattice_graph": "per_modality",
                                      "rebuild_on_eval": "false"})
    assert over.model_config.lattice_graph == "per_modality" and not over.train.rebuild_on_eval
    assert resolve_config("lightgcn", {"protocol": "released"}).model_config.adj_norm == "released"


# -- #20 knn_relu --------------------------------------------------------------------------------------

# three items in the plane at 0, 40 and 130 degrees: cos(0, 130) = -0.64, the one negative pair
ANGLES = torch.tensor([0.0, 40.0, 130.0]) * math.pi / 180
PLANE = torch.stack([torch.cos(ANGLES), torch.sin(ANGLES)], dim=1)


def test_knn_relu_false_keeps_the_negative_cosines_of_the_released_graph():
    from latticerec.graphs.ann import KnnSearch

    cos = F.normalize(PLANE, dim=1) @ F.normalize(PLANE, dim=1).T
    assert cos[0, 2] < -0.6
    nbr, raw = knn_rows(PLANE, 3, normalize=False, backend=KnnSearch(relu=False))
    assert torch.equal(nbr, torch.arange(3).expand(3, 3))  # k = N: every item, columns ascending
    assert torch.allclose(raw, cos, atol=1e-6)  # negatives kept (the released top-k values)
    _, sup = knn_rows(PLANE, 3, normalize=False)
    assert torch.allclose(sup, cos.clamp_min(0), atol=1e-6) and sup[0, 2] == 0  # eq. 1's default
    # the released normalisation of the raw top-k: d^-1/2 S d^-1/2 with the signed row sums
    _, normed = knn_rows(PLANE, 3, backend=KnnSearch(relu=False))
    d = cos.sum(1)
    assert (d > 0).all()
    assert torch.allclose(normed, cos / torch.sqrt(d[:, None] * d[None, :]), atol=1e-6)
    assert KnnSearch(relu=False).signature(3) != KnnSearch().signature(3)  # separate cache entries


def test_knn_relu_reaches_the_initial_and_learned_graphs_and_the_preset(blocks):
    model = _build(blocks, "lattice", knn_relu="false")
    assert model.structure.search.relu is False
    with pytest.raises(ConfigError, match="knn_relu"):
        resolve_config("lattice", {"knn_relu": "2"})
    assert resolve_config("lattice").model_config.knn_relu is True
    for name in ("lattice", "micro"):
        assert resolve_config(name, {"protocol": "released"}).model_config.knn_relu is False


# -- #11 eval_phase ------------------------------------------------------------------------------------

@pytest.mark.parametrize("every,phase,expected", [(5, 1, [1, 6, 11, 12]), (5, 0, [5, 10, 12]),
                                                  (1, 1, list(range(1, 13))), (5, 6, [1, 6, 11, 12])])
def test_eval_phase_picks_the_validated_epochs(blocks, every, phase, expected):
    run = resolve_config("mf", {"embed_dim": "8", "epochs": "12", "batch_size": "256", "patience": "100",
                                "eval_every": str(every), "eval_phase": str(phase)})
    result = fit(build_model(run, blocks), blocks, run.train, progress=False)
    assert [h["epoch"] for h in result["history"] if "valid_recall@20" in h] == expected


def test_released_lattice_validates_after_epochs_1_6_11():
    lat = resolve_config("lattice", {"protocol": "released"}).train
    assert (lat.eval_every, lat.eval_phase) == (5, 1)
    assert resolve_config("micro", {"protocol": "released"}).train.eval_phase == 0  # after 5, 10, ...
    with pytest.raises(ConfigError, match="eval_phase"):
        resolve_config("mf", {"eval_phase": "-1"})
