"""MICRO: InfoNCE (eq. 9-10), orthogonality (eq. 13), fusion (eq. 7-15), preference (eq. 16-17),
ablation flags, equality of ``fusion=false`` with LATTICE, gradients, CLI."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latticerec.cli import main
from latticerec.errors import ConfigError
from latticerec.graphs.knn import knn_graph
from latticerec.models.losses import info_nce, orthogonality_loss
from latticerec.models.micro import Micro
from latticerec.train.build import build_model, resolve_config
from latticerec.train.sampling import BPRSampler
from latticerec.train.trainer import fit


def _build(model, data, **overrides):
    return build_model(resolve_config(model, {"embed_dim": "16", **overrides}), data)


def _batch(data, seed=0, size=64):
    users, pos, neg = next(BPRSampler(data.train, seed=seed).epoch(0, size))
    return torch.as_tensor(users), torch.as_tensor(pos), torch.as_tensor(neg)


def _eq10_loop(h_m, h_c, tau, anchors):
    """Eq. 9-10 for one modality transcribed literally: loops, explicit sums, cosine critic."""
    def theta(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    n, total = h_m.shape[0], 0.0
    for i in anchors:
        pos = math.exp(theta(h_m[i], h_c[i]) / tau)
        neg = sum(math.exp(theta(h_m[i], h_c[j]) / tau) + math.exp(theta(h_m[i], h_m[j]) / tau)
                  for j in range(n) if j != i)
        total += -math.log(pos / (pos + neg))
    return total / len(anchors)


def test_info_nce_equals_a_transcription_of_eq_10():
    gen = torch.Generator().manual_seed(0)
    h_m, h_c = torch.randn(7, 5, generator=gen, dtype=torch.float64), torch.randn(7, 5, generator=gen,
                                                                                  dtype=torch.float64)
    for tau in (0.5, 0.2, 0.02):  # 0.02: the exact row-max shift
        assert info_nce(h_m, h_c, tau).item() == pytest.approx(_eq10_loop(h_m, h_c, tau, range(7)), rel=1e-10)
    anchors = torch.tensor([5, 1, 2])
    assert info_nce(h_m, h_c, 0.5, anchors).item() == pytest.approx(
        _eq10_loop(h_m, h_c, 0.5, [5, 1, 2]), rel=1e-10)


def test_info_nce_chunked_equals_unchunked_values_and_gradients():
    gen = torch.Generator().manual_seed(1)
    base = [torch.randn(50, 8, generator=gen, dtype=torch.float64) for _ in range(2)]
    anchors = torch.tensor([3, 7, 0, 49, 12, 30, 31])
    results = []
    for chunk in (1000, 3):  # one chunk vs. several checkpointed chunks
        h_m, h_c = (t.clone().requires_grad_() for t in base)
        for rows in (None, anchors):
            loss = info_nce(h_m, h_c, 0.5, rows, chunk_size=chunk)
            loss.backward()
            results.append((loss.detach(), h_m.grad.clone(), h_c.grad.clone()))
            h_m.grad = h_c.grad = None
    for one, many in zip(results[:2], results[2:], strict=True):
        for a, b in zip(one, many, strict=True):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_info_nce_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(4)
    h_m = torch.randn(9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    h_c = torch.randn(9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    anchors = torch.tensor([2, 2, 8, 0])  # a repeated anchor counts twice
    for chunk in (100, 3):
        assert torch.autograd.gradcheck(lambda a, b, c=chunk: info_nce(a, b, 0.3, anchors, c), (h_m, h_c))
        assert torch.autograd.gradcheck(lambda a, b, c=chunk: info_nce(a, b, 0.5, None, c), (h_m, h_c))


def test_orthogonality_loss_is_the_pairwise_sum_of_eq_13():
    gen = torch.Generator().manual_seed(2)
    s = torch.randn(3, 10, 4, generator=gen)
    expected = sum(((s[a] * s[b]).sum(-1) ** 2).mean() for a, b in [(0, 1), (0, 2), (1, 2)])
    assert torch.allclose(orthogonality_loss(s), expected)
    # two modalities: exactly eq. 13
    assert torch.allclose(orthogonality_loss(s[:2]), ((s[0] * s[1]).sum(-1) ** 2).mean())
    assert orthogonality_loss(s[:1]).item() == 0.0


def test_identical_modalities_have_no_specific_part(blocks):
    same = dataclasses.replace(blocks, features={"image": blocks.features["image"],
                                                 "text": blocks.features["image"].copy()})
    model = _build("micro", same, lambda_coeff="1")  # identical features -> identical graphs
    model.eval()
    modal = model.modality_embeddings()
    assert torch.equal(modal[0], modal[1])
    parts = model.fuse(modal)
    assert torch.allclose(parts["common"], modal[0], atol=1e-7)
    assert parts["specific"].abs().max() < 1e-6
    assert orthogonality_loss(parts["specific"]).item() < 1e-20
    model.train()
    assert model.loss(*_batch(same))["orthogonal"].item() < 1e-20


def test_attention_weights_sum_to_one_per_item(blocks):
    model = _build("micro", blocks)
    parts = model.fuse(model.modality_embeddings())
    assert parts["alpha"].shape == (2, blocks.n_items) and parts["beta"].shape == (3, blocks.n_items)
    assert torch.allclose(parts["alpha"].sum(0), torch.ones(blocks.n_items))
    assert torch.allclose(parts["beta"].sum(0), torch.ones(blocks.n_items))
    assert (parts["alpha"] > 0).all() and (parts["beta"] > 0).all()
    assert parts["alpha"].std() > 0  # per-item weights, not one weight per modality


def test_representations_follow_eq_6_to_17(blocks):
    model = _build("micro", blocks, lambda_coeff="0.7", item_layers="2")
    model.eval()
    s = model.structure
    x = model.backbone.item_embedding.weight
    modal = []
    for m in s.names:
        a = 0.7 * getattr(s, f"initial_{m}").to_dense() + 0.3 * knn_graph(s.projected(m), s.knn_k).to_dense()
        modal.append(a @ (a @ x))  # eq. 6, L = 2
    modal = torch.stack(modal)
    assert torch.allclose(model.modality_embeddings(), modal, atol=1e-6)
    scores = torch.stack([model.att_q1(torch.tanh(model.att_w(h))).squeeze(-1) for h in modal])
    alpha = torch.softmax(scores, 0)  # eq. 7
    h_c = alpha[0, :, None] * modal[0] + alpha[1, :, None] * modal[1]  # eq. 8
    h_s = [modal[0] - h_c, modal[1] - h_c]  # eq. 11-12
    cand = [h_c, *h_s]
    beta = torch.softmax(torch.stack([model.att_q2(c).squeeze(-1) for c in cand]), 0)  # eq. 14
    h = sum(b[:, None] * c for b, c in zip(beta, cand, strict=True))  # eq. 15
    train = torch.as_tensor(blocks.train.toarray(), dtype=torch.float32)
    h_u = (train @ h) / train.sum(1, keepdim=True)  # eq. 16
    bu, bi = model.backbone.propagate()
    users, items = model.propagate()
    assert torch.allclose(items, bi + F.normalize(h, dim=1), atol=1e-5)  # eq. 17
    assert torch.allclose(users, bu + F.normalize(h_u, dim=1), atol=1e-5)


@pytest.mark.parametrize("graph", [{}, {"lattice_graph": "joint", "alpha_live": "false"}],
                         ids=["per_modality", "released-joint"])
def test_without_fusion_is_lattice_with_the_same_parameters(blocks, graph):
    lattice = _build("lattice", blocks, lambda_coeff="0.7", backbone="lightgcn", **graph)
    fit(lattice, blocks, resolve_config("lattice", {"epochs": "2", **graph}).train, progress=False)
    with torch.no_grad():  # LATTICE's modality weights away from their uniform start
        lattice.modal_scores.copy_(torch.tensor([0.3, -0.4]))
    micro = _build("micro", blocks, fusion="false", lambda_coeff="0.7", backbone="lightgcn", **graph)
    assert micro.joint == lattice.joint == bool(graph) and micro.alpha_live == lattice.alpha_live
    micro.load_state_dict(lattice.state_dict())  # strict: the same parameter and buffer names
    for model in (lattice, micro):  # alpha_live=false: both take the α of the next graph build
        model.on_epoch_start(2)
    for a, b in zip(lattice.full_representations(), micro.full_representations(), strict=True):
        assert torch.equal(a, b)
    lattice.train()
    micro.train()
    lattice.on_epoch_start(5)
    micro.on_epoch_start(5)
    batch = _batch(blocks, seed=3)
    lt, mt = lattice.loss(*batch), micro.loss(*batch)
    assert set(mt) == {"bpr", "reg"} and all(torch.equal(lt[k], mt[k]) for k in lt)
    assert not any(n.startswith("att_") for n, _ in micro.named_parameters())


def test_without_fusion_the_defaults_are_lattices(blocks):
    """``fusion=false`` alone is LATTICE with LATTICE's defaults (λ = 0.9, not MICRO's 0.7)."""
    lattice = _build("lattice", blocks)
    fit(lattice, blocks, resolve_config("lattice", {"epochs": "2"}).train, progress=False)
    micro = _build("micro", blocks, fusion="false")
    assert micro.structure.lam == lattice.structure.lam == 0.9
    micro.load_state_dict(lattice.state_dict())
    micro.on_epoch_start(2)
    lattice.on_epoch_start(2)  # rebuild the learned graphs: λ weighs them against the initial ones
    for a, b in zip(lattice.full_representations(), micro.full_representations(), strict=True):
        assert torch.equal(a, b)
    assert _build("micro", blocks).structure.lam == 0.7  # MICRO's own default with fusion
    assert _build("micro", blocks, fusion="false", lambda_coeff="0.5").structure.lam == 0.5
    assert _build("micro", blocks, lambda_coeff="0.9").structure.lam == 0.9


def test_lattice_graph_options_need_fusion_false_and_the_released_preset_gives_them_to_it():
    with pytest.raises(ConfigError, match="apply with fusion=false only"):
        resolve_config("micro", {"lattice_graph": "joint"})
    with pytest.raises(ConfigError, match="apply with fusion=false only"):
        resolve_config("micro", {"alpha_live": "false"})
    lattice = resolve_config("lattice", {"protocol": "released"})
    for fusion in ("false", False, "no"):  # MICRO w/o fusion under the released protocol: LATTICE's preset
        micro = resolve_config("micro", {"protocol": "released", "fusion": fusion})
        assert micro.model_config.lattice_graph == lattice.model_config.lattice_graph == "joint"
        assert micro.model_config.alpha_live is lattice.model_config.alpha_live is False
        assert micro.train == lattice.train and micro.train.eval_phase == 1
    fused = resolve_config("micro", {"protocol": "released"})
    assert fused.model_config.lattice_graph == "per_modality" and fused.model_config.alpha_live
    assert fused.train.eval_phase == 0 and fused.model_config.cl_negatives == "all"


def test_specific_flag(blocks):
    model = _build("micro", blocks, specific="false")
    assert model.att_q2 is None
    parts = model.fuse(model.modality_embeddings())
    assert "specific" not in parts and parts["item"] is parts["common"]
    assert set(model.loss(*_batch(blocks))) == {"bpr", "reg", "contrastive"}
    full = _build("micro", blocks)
    assert set(full.loss(*_batch(blocks))) == {"bpr", "reg", "contrastive", "orthogonal"}
    full_parts = full.fuse(full.modality_embeddings())
    assert not torch.allclose(full_parts["item"], full_parts["common"])


def test_preference_flag(blocks):
    model = _build("micro", blocks, preference="false")
    users, _ = model.propagate()
    assert torch.equal(users, model.backbone.propagate()[0])
    with_pref = _build("micro", blocks)
    assert not torch.allclose(with_pref.propagate()[0], with_pref.backbone.propagate()[0])


def test_feats_flags(blocks):
    feats = _build("micro", blocks, feats_input="true", lambda_coeff="1")
    s = feats.structure
    x = torch.stack([s.projected(m) for m in s.names]).mean(0)
    expected = torch.stack([getattr(s, f"initial_{m}").to_dense() @ x for m in s.names])
    assert torch.allclose(feats.modality_embeddings(), expected, atol=1e-6)

    cf = _build("micro", blocks, cf_feats="true")
    expected = torch.stack([cf.structure.projected(m) for m in cf.structure.names])
    assert torch.allclose(cf.modality_embeddings(), expected)
    cf.backbone.item_embedding.weight.data.mul_(2)  # no ID embeddings in the item branch
    assert torch.allclose(cf.modality_embeddings(), expected)
    lat = _build("lattice", blocks, cf_feats="true", lambda_coeff="0.7")
    both = _build("micro", blocks, cf_feats="true", fusion="false")
    both.load_state_dict(lat.state_dict())
    assert torch.equal(both.item_structure_embedding(), lat.item_structure_embedding())


def test_contrastive_options_and_weight(blocks):
    users, pos, neg = _batch(blocks)
    model = _build("micro", blocks, beta_c="0.5", cl_batch="12")
    model.eval()
    modal = model.modality_embeddings()
    h_c = model.fuse(modal)["common"]

    def expected(rows=None, in_batch=False):  # β_C times eq. 9: the mean over the modalities
        if in_batch:
            return 0.5 * sum(info_nce(h[rows], h_c[rows]) for h in modal) / 2
        return 0.5 * sum(info_nce(h, h_c, 0.5, rows) for h in modal) / 2

    def contrastive(batch, negatives):
        model.cl_batch, model.cl_negatives = batch, negatives
        torch.manual_seed(7)
        return model.loss(users, pos, neg)["contrastive"]

    torch.manual_seed(7)
    sampled = torch.randperm(blocks.n_items)[:12]  # the anchors: a uniform sample of cl_batch items
    cases = {("batch", 12): expected(sampled, in_batch=True), ("all", 12): expected(sampled),
             ("all", 0): expected(), ("batch", 0): expected(), ("all", 30): expected()}
    for (negatives, batch), value in cases.items():
        assert torch.allclose(contrastive(batch, negatives), value), (negatives, batch)
    assert len({round(v.item(), 6) for v in cases.values()}) == 3  # each option changes the loss
    model.cl_negatives = "batch"
    torch.manual_seed(8)
    assert not torch.allclose(model.loss(users, pos, neg)["contrastive"], contrastive(12, "batch"))
    assert _build("micro", blocks, beta_c="0", beta_s="0").loss(users, pos, neg)["contrastive"] == 0
    for bad in ({"cl_negatives": "some"}, {"tau": "0"}, {"cl_batch": "-1"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            resolve_config("micro", bad)


def test_gradients_of_the_auxiliary_losses(blocks):
    model = _build("micro", blocks)
    model.train()
    model.on_epoch_start(0)  # rebuild batch: gradients reach the projections through the graphs
    terms = model.loss(*_batch(blocks))
    terms["contrastive"].backward(retain_graph=True)
    for name in ("att_w.weight", "att_w.bias", "att_q1.weight", "backbone.item_embedding.weight",
                 "structure.projections.image.weight", "structure.projections.text.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.att_q2.weight.grad is None  # L_C does not depend on eq. 14
    model.zero_grad(set_to_none=True)
    terms["orthogonal"].backward()
    assert model.att_w.weight.grad.abs().sum() > 0 and model.att_q2.weight.grad is None


def test_micro_wraps_every_backbone_and_learns(blocks):
    for name in ("mf", "lightgcn", "ngcf"):
        model = _build("micro", blocks, backbone=name, n_layers="1") if name != "mf" else \
            _build("micro", blocks, backbone=name)
        assert isinstance(model, Micro)
        users, items = model.full_representations()
        assert users.shape == (blocks.n_users, model.backbone.out_dim) and items.shape[1] == users.shape[1]
    model = _build("micro", blocks)
    result = fit(model, blocks, resolve_config("micro", {"epochs": "3"}).train, progress=False)
    assert np.isfinite(result["test"]["recall@20"])
    assert {"loss_contrastive", "loss_orthogonal"} <= set(result["history"][0])


def test_cli_trains_micro(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "micro", "--backbone", "mf", "--data", "synthetic", "--epochs", "2",
            "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache"), "--set", "embed_dim=16"]
    assert main(args) == 0
    assert (out / "metrics.json").exists()


@pytest.mark.parametrize("backbone", ["mf", "lightgcn"])
def test_without_fusion_trains_exactly_as_lattice_from_the_same_seed(blocks, backbone):
    """``micro fusion=false`` and ``lattice`` (same backbone, λ, seed) draw the same initial parameters
    and take the same steps: an experiment spec may name LATTICE's runs for MICRO w/o fusion."""
    states = []
    for model, extra in (("lattice", {}), ("micro", {"fusion": "false"})):
        torch.manual_seed(7)
        net = _build(model, blocks, backbone=backbone, **extra)
        fit(net, blocks, resolve_config(model, {"epochs": "2", **extra}).train, progress=False)
        states.append(net.state_dict())
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
