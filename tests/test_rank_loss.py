"""rank_loss=softmax: the in-batch sampled softmax loss, its options and its wiring."""

import math

import pytest
import torch

from latticerec.data.synthetic import make_synthetic
from latticerec.errors import ConfigError
from latticerec.models.losses import sampled_softmax_loss
from latticerec.train.build import build_model, resolve_config
from latticerec.train.trainer import fit


def test_sampled_softmax_matches_a_hand_computed_answer():
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    n = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    pos, neg = torch.tensor([4, 7]), torch.tensor([5, 6])
    tau = 0.5
    # row 0 logits: u0 . [p0, p1, n0, n1] / tau = [2, 1, 0, -1] / 0.5; target p0
    # row 1 logits: u1 . [p0, p1, n0, n1] / tau = [0, 2, 2, 0] / 0.5; target p1
    rows = [[4.0, 2.0, 0.0, -2.0], [0.0, 4.0, 4.0, 0.0]]
    by_hand = [-(r[t] - math.log(sum(math.exp(x) for x in r))) for r, t in zip(rows, (0, 1), strict=True)]
    got = sampled_softmax_loss(u, p, n, pos, neg, tau)
    assert got.item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)


def test_an_item_drawn_twice_is_not_its_own_negative():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both rows have item 3 as their positive
    n = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    pos, neg = torch.tensor([3, 3]), torch.tensor([8, 9])
    got = sampled_softmax_loss(u, p, n, pos, neg, 1.0)
    # row 0: candidates p0 (target), n0, n1 (p1 is item 3 again: left out): logits [1, 0, 0]
    # row 1: candidates p1 (target), n0, n1: logits [0, 0, 0]
    by_hand = (-(1 - math.log(math.e + 2)) + math.log(3)) / 2
    assert got.item() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("name", ["mf", "lightgcn", "lattice", "micro", "mmgef", "freedom", "sgl"])
def test_softmax_replaces_the_bpr_term_of_a_bpr_terms_model(name):
    data = make_synthetic(n_users=40, n_items=30, seed=0)
    run = resolve_config(name, {"embed_dim": "8", "rank_loss": "softmax", "rank_tau": "0.2",
                                "epochs": "1"})
    model = build_model(run, data)
    fit(model, data, run.train, progress=False)  # sets rank_loss on the model (and its backbone)
    users, pos, neg = torch.tensor([0, 3, 5]), torch.tensor([0, 3, 2]), torch.tensor([1, 4, 7])
    terms = model.loss(users, pos, neg)
    assert "softmax" in terms and "bpr" not in terms and torch.isfinite(terms["softmax"])
    terms["softmax"].backward()


@pytest.mark.parametrize("name", ["pop", "itemknn", "vbpr", "bm3", "cb"])
def test_a_model_with_its_own_loss_refuses_softmax(name):
    with pytest.raises(ConfigError, match=f"rank_loss=softmax: model {name} trains with a loss of its own"):
        resolve_config(name, {"rank_loss": "softmax"})


@pytest.mark.parametrize("value", ["0", "-1", "nan", "1000"])
def test_a_bad_temperature_is_an_error(value):
    with pytest.raises(ConfigError, match="rank_tau"):
        resolve_config("lightgcn", {"rank_loss": "softmax", "rank_tau": value})


def test_the_fused_loss_has_autograds_gradient_and_finds_every_twin():
    from latticerec.models.losses import _SampledSoftmax, _twins

    torch.manual_seed(0)
    pos, neg = torch.tensor([2, 5, 2, 7, 5, 2]), torch.tensor([5, 1, 3, 2, 0, 6])
    ids = torch.cat([pos, neg])
    rows, cols = _twins(pos, ids)
    expected = {(b, j) for b in range(6) for j in range(12) if j != b and ids[j] == pos[b]}
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == expected
    u = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    cand = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _SampledSoftmax.apply(a, b, rows, cols, 0.7), (u, cand))
