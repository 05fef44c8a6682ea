"""Known answers for the baselines pop, itemknn, vbpr and freedom (the shared contract is in
test_model_contract.py)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from latticerec.data.dataset import Dataset
from latticerec.errors import ConfigError, LatticeRecError
from latticerec.graphs.sparse import to_torch_csr
from latticerec.models.base import ModelInputs
from latticerec.models.freedom import Freedom, edge_keep_probabilities, prune_edges
from latticerec.models.itemknn import ItemKNN, item_cosine_knn
from latticerec.models.pop import Popularity
from latticerec.models.vbpr import VBPR
from latticerec.serve.export import build_artifact
from latticerec.train.build import build_model, resolve_config
from latticerec.train.trainer import evaluate_split, fit

# users x items: u0 {0, 1}, u1 {0, 1, 2}, u2 {2, 3}, u3 {3}, u4 {1, 2}
TOY = [[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1], [0, 1, 1, 0]]
# item degrees n = (2, 3, 3, 2); co-occurrences C01 = 2, C02 = 1, C12 = 2, C23 = 1, C03 = C13 = 0
S01, S02, S12, S23 = 2 / math.sqrt(6), 1 / math.sqrt(6), 2 / 3, 1 / math.sqrt(6)
SIM = np.array([[0, S01, S02, 0], [S01, 0, S12, 0], [S02, S12, 0, S23], [0, 0, S23, 0]])


def _inputs(matrix, features=None):
    mat = sp.csr_matrix(np.asarray(matrix, dtype=np.float32))
    feats = {m: torch.as_tensor(f, dtype=torch.float32) for m, f in (features or {}).items()}
    return ModelInputs(n_users=mat.shape[0], n_items=mat.shape[1], train=to_torch_csr(mat), features=feats)


def _toy_dataset(features=None):
    """TOY as training split; valid/test: one held-out item for u3 (item 2) and u0 (item 2)."""
    train = sp.csr_matrix(np.asarray(TOY, dtype=np.float32))
    held = sp.csr_matrix(([1.0, 1.0], ([0, 3], [2, 2])), shape=train.shape, dtype=np.float32)
    return Dataset(name="toy", train=train, valid=held, test=held.copy(), features=features or {})


# ------------------------------------------------------------------------------------------- pop --
def test_pop_scores_are_the_training_counts_for_every_user():
    model = Popularity.from_inputs(Popularity.Config(), _inputs(TOY))
    users, items = model.full_representations()
    scores = users @ items.T
    assert torch.equal(scores, torch.tensor([[2.0, 3.0, 3.0, 2.0]]).expand(5, 4))
    assert not list(model.parameters())


def test_pop_is_evaluated_as_built_with_zero_epochs():
    ds = _toy_dataset()
    run = resolve_config("pop", {"epochs": "50"})
    result = fit(build_model(run, ds), ds, run.train, progress=False, log=lambda *_: None)
    assert result["epochs_run"] == 0 and result["best_epoch"] == 0 and result["history"] == []
    # u0 (trained on 0, 1) ranks 2 (count 3) before 3 (count 2); u3 (trained on 3): 1, 2 tie at 3
    assert result["test"]["recall@10"] == 1.0
    with pytest.raises(ConfigError, match="unknown option"):
        resolve_config("pop", {"knn_k": "3"})


# --------------------------------------------------------------------------------------- itemknn --
def test_itemknn_similarities_are_the_hand_computed_cosines():
    full = item_cosine_knn(_inputs(TOY).train, k=3).to_dense().numpy()
    np.testing.assert_allclose(full, SIM, rtol=1e-6)
    # k = 1: each item keeps its single most similar item (no ties in this matrix)
    top1 = np.zeros_like(SIM)
    for i, j in ((0, 1), (1, 0), (2, 1), (3, 2)):
        top1[i, j] = SIM[i, j]
    np.testing.assert_allclose(item_cosine_knn(_inputs(TOY).train, k=1).to_dense().numpy(), top1, rtol=1e-6)
    # blocks of one row give the same matrix: nothing depends on the block size
    np.testing.assert_allclose(item_cosine_knn(_inputs(TOY).train, k=3, block_rows=1).to_dense().numpy(),
                               SIM, rtol=1e-6)


def test_itemknn_scores_sum_the_similarities_to_the_users_items():
    model = ItemKNN.from_inputs(ItemKNN.Config(knn_k=3), _inputs(TOY))
    scores = model.score_users(torch.arange(5)).numpy()
    # hand-computed ŷ_ui = Σ_(j ∈ N_u) sim(i, j)
    expected = np.array([
        [S01, S01, S02 + S12, 0],                 # u0 {0, 1}
        [S01 + S02, S01 + S12, S02 + S12, S23],   # u1 {0, 1, 2}
        [S02, S12, S23, S23],                     # u2 {2, 3}
        [0, 0, S23, 0],                           # u3 {3}
        [S01 + S02, S12, S12, S23],               # u4 {1, 2}
    ])
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    np.testing.assert_allclose(model.score_users(torch.tensor([3, 0])).numpy(), expected[[3, 0]], rtol=1e-6)
    with pytest.raises(NotImplementedError, match="score_users"):
        model.full_representations()


def test_itemknn_is_ranked_by_its_scores_and_refused_by_the_export():
    ds = _toy_dataset()
    run = resolve_config("itemknn", {"knn_k": "3", "topk": "1,20"})
    model = build_model(run, ds)
    res = evaluate_split(model, ds, "test", run.train)
    # u0's best unseen item is 2 (S02 + S12 > 0); u3's is 2 (the only non-zero score)
    assert res["recall@1"] == 1.0
    fake = SimpleNamespace(dataset=ds, model=model, run=SimpleNamespace(model="itemknn"))
    with pytest.raises(LatticeRecError, match="cannot be exported"):
        build_artifact(fake)
    with pytest.raises(ConfigError, match="knn_k"):
        resolve_config("itemknn", {"knn_k": "0"})


# ------------------------------------------------------------------------------------------ vbpr --
def test_vbpr_score_is_the_papers_predictor_over_all_modalities():
    rng = np.random.default_rng(0)
    feats = {"image": rng.normal(size=(4, 3)), "audio": rng.normal(size=(4, 2))}
    torch.manual_seed(0)
    model = VBPR.from_inputs(VBPR.Config(embed_dim=4), _inputs(TOY, feats))
    with torch.no_grad():
        model.item_bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    unit = [torch.nn.functional.normalize(torch.as_tensor(feats[m]).float(), dim=1)
            for m in ("image", "audio")]
    f = torch.cat(unit, 1) / math.sqrt(2)  # "concat": the L2-normalised modalities side by side
    torch.testing.assert_close(model.features, f)
    assert model.fusion_modalities == ("image", "audio") and model.feature_fusion == "concat"
    gamma_u, theta_u = model.user_factors.weight[:, :4], model.user_factors.weight[:, 4:]
    e, beta_f = model.content.weight, model.content_bias.weight[0]
    expected = (model.item_bias + gamma_u @ model.item_factors.weight.T + theta_u @ (f @ e.T).T
                + f @ beta_f)  # β_i + γ_uᵀγ_i + θ_uᵀ(E f_i) + β'ᵀ f_i
    users, items = model.full_representations()
    torch.testing.assert_close(users @ items.T, expected.detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="unknown option"):
        resolve_config("vbpr", {"knn_k": "3"})
    with pytest.raises(ConfigError, match="twice"):
        resolve_config("vbpr", {"modalities": "image,image"})
    with pytest.raises(ConfigError, match="feature_fusion"):
        resolve_config("vbpr", {"feature_fusion": "sum"})
    with pytest.raises(ConfigError, match="content_reg"):
        resolve_config("vbpr", {"content_reg": "-1"})
    # the loss: BPR, λ_Θ on the batch rows, λ_E (‖E‖² + ‖β'‖²) on the shared content parameters
    terms = model.loss(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([3, 2]))
    torch.testing.assert_close(terms["reg_content"], 0.1 * (e.pow(2).sum() + beta_f.pow(2).sum()))


# --------------------------------------------------------------------------------------- freedom --
def _freedom(features, **options):
    cfg = resolve_config("freedom", {"embed_dim": "4", **options}).model_config
    torch.manual_seed(0)
    return Freedom.from_inputs(cfg, _inputs(TOY, features))


def test_freedom_item_graph_is_the_frozen_weighted_sum_of_unweighted_knn_graphs():
    # image: items 0, 1 alike and 2, 3 alike; audio: 0, 3 alike and 1, 2 alike
    feats = {"image": np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]]),
             "audio": np.array([[1, 0], [0, 1], [0.1, 1], [1, 0.1]])}
    model = _freedom(feats, knn_k="2", modality_weights="3,1")
    # k = 2 with the item itself: each item's pair, unweighted; every degree is 2, so each kept
    # entry is 1 / sqrt(2 * 2) = 0.5; S = 0.75 S_image + 0.25 S_audio
    image = np.kron(np.eye(2), np.ones((2, 2))) * 0.5
    audio = np.zeros((4, 4))
    for a, b in ((0, 3), (1, 2)):
        audio[np.ix_([a, b], [a, b])] = 0.5
    graph = model.item_graph.to_dense().numpy()
    np.testing.assert_allclose(graph, 0.75 * image + 0.25 * audio, rtol=1e-6)
    # frozen: no parameter builds it, and training leaves it as it was
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model.train()
    model.on_epoch_start(0)
    sum(model.loss(torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([3, 3])).values()).backward()
    opt.step()
    np.testing.assert_array_equal(model.item_graph.to_dense().numpy(), graph)
    with pytest.raises(ConfigError, match="modality_weights has 1 weights"):
        _freedom(feats, modality_weights="1")


def test_freedom_pruning_keeps_the_share_and_prefers_low_degree_edges():
    train = _inputs(TOY).train
    probs = edge_keep_probabilities(train)
    # edge (u3, i3): user degree 1, item degree 2; edge (u1, i1): user degree 3, item degree 3
    rows = torch.repeat_interleave(torch.arange(5), train.crow_indices().diff())
    cols = train.col_indices()
    p = {(int(r), int(c)): float(v) for r, c, v in zip(rows, cols, probs, strict=True)}
    assert p[(3, 3)] == pytest.approx(1 / math.sqrt(2)) and p[(1, 1)] == pytest.approx(1 / 3)
    gen = torch.Generator().manual_seed(0)
    kept = {(3, 3): 0, (1, 1): 0}
    for _ in range(2000):
        pruned = prune_edges(train, probs, 0.75, generator=gen).to_dense()
        assert pruned.sum() == math.ceil(10 * 0.25)  # 10 training edges, a quarter kept (rounded up)
        assert torch.all(pruned <= torch.as_tensor(TOY, dtype=torch.float32))  # a subgraph
        for edge in kept:
            kept[edge] += int(pruned[edge])
    assert kept[(3, 3)] > 1.5 * kept[(1, 1)] > 0


def test_freedom_trains_on_pruned_graphs_and_evaluates_on_the_full_one():
    feats = {"image": np.eye(4)}
    model = _freedom(feats, knn_k="2", edge_dropout="0.5", align_weight="0.5")
    ref = model.full_representations()
    model.train()
    model.on_epoch_start(0)
    assert model.adj._nnz() < model.full_adj._nnz()
    trained_users, _ = model.propagate()
    assert not torch.allclose(trained_users, ref[0])  # another graph while training
    for got, want in zip(model.full_representations(), ref, strict=True):
        torch.testing.assert_close(got, want)  # evaluation: every edge, deterministic
    # the loss: BPR + λ Σ_m BPR(h_u, W_m x_m + b_m) + reg
    users, pos, neg = torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([3, 0])
    model.eval()
    terms = model.loss(users, pos, neg)
    u_all, _ = model.propagate()
    x = model.projections["image"](torch.eye(4))
    align = -torch.nn.functional.logsigmoid((u_all[users] * (x[pos] - x[neg])).sum(-1)).mean()
    torch.testing.assert_close(terms["align"], 0.5 * align)
    with pytest.raises(ConfigError, match="edge_dropout"):
        _freedom(feats, edge_dropout="1")


@pytest.mark.parametrize("model", ["cb", "vbpr", "mmgcn", "mmgef"])
def test_a_feature_model_on_a_dataset_without_features_says_it_needs_features(model):
    """They said "this model needs item features or a precomputed item graph", but a precomputed
    graph does not serve a model that reads feature matrices."""
    from latticerec.errors import ConfigError
    from latticerec.models.structure import feature_modalities

    with pytest.raises(ConfigError, match=f"^{model} needs item feature matrices; the dataset has none"):
        feature_modalities((), _inputs(TOY), model)
