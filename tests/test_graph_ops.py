"""The graph operations written once: degree normalisations, the user-item adjacency, the kNN entry
point's backends, all on torch CSR tensors against dense references."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from latticerec.graphs.adjacency import normalized_bipartite_adjacency
from latticerec.graphs.knn import knn_graph, knn_rows
from latticerec.graphs.normalize import row_normalize_csr, symmetric_normalize_csr
from latticerec.graphs.sparse import to_torch_csr


def _random_sparse(shape, density, seed):
    rng = np.random.default_rng(seed)
    dense = (rng.random(shape) < density) * rng.uniform(0.5, 2.0, shape)
    dense[1] = 0  # a node without edges
    return dense.astype(np.float32)


def test_symmetric_normalisation_equals_the_dense_formula():
    a = _random_sparse((9, 9), 0.4, 0)
    d = a.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0)
    got = symmetric_normalize_csr(to_torch_csr(a)).to_dense().numpy()
    np.testing.assert_allclose(got, inv[:, None] * a * inv[None, :], rtol=1e-6)
    assert not got[1].any() and np.isfinite(got).all()


def test_row_normalisation_equals_the_dense_formula():
    a = _random_sparse((7, 5), 0.5, 1)
    d = a.sum(1, keepdims=True)
    got = row_normalize_csr(to_torch_csr(a)).to_dense().numpy()
    np.testing.assert_allclose(got, np.divide(a, d, out=np.zeros_like(a), where=d > 0), rtol=1e-6)
    np.testing.assert_allclose(got.sum(1)[d[:, 0] > 0], 1.0, rtol=1e-6)
    assert not got[1].any()


def test_bipartite_adjacency_equals_the_dense_block_matrix():
    r = (_random_sparse((6, 4), 0.5, 2) > 0).astype(np.float32)
    a = np.block([[np.zeros((6, 6)), r], [r.T, np.zeros((4, 4))]])
    d = a.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0)
    adj = normalized_bipartite_adjacency(to_torch_csr(r))
    assert adj.layout == torch.sparse_csr and adj.shape == (10, 10)
    np.testing.assert_allclose(adj.to_dense().numpy(), inv[:, None] * a * inv[None, :], rtol=1e-6)
    # columns sorted within rows, as CSR products expect
    crow, col = adj.crow_indices(), adj.col_indices()
    assert all((col[crow[i]:crow[i + 1]].diff() > 0).all() for i in range(10))


def test_bipartite_adjacency_matches_scipy_bit_for_bit():
    """The torch build reproduces the former scipy construction exactly (same float32 values)."""
    r = sp.random(50, 40, density=0.1, random_state=3, format="csr", dtype=np.float32)
    r.data[:] = 1.0
    big = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
    deg = np.asarray(big.sum(1)).ravel()
    with np.errstate(divide="ignore"):
        inv = np.where(deg > 0, 1.0 / np.sqrt(deg), 0.0).astype(np.float32)
    rows = np.repeat(np.arange(big.shape[0]), np.diff(big.indptr))
    big.data = big.data * inv[rows] * inv[big.indices]
    big.sort_indices()
    adj = normalized_bipartite_adjacency(to_torch_csr(r))
    assert np.array_equal(adj.col_indices().numpy(), big.indices)
    assert np.array_equal(adj.values().numpy(), big.data)


def test_knn_entry_point_accepts_only_known_backends():
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    nbr, val = knn_rows(x, 3)
    assert nbr.shape == val.shape == (12, 3)
    assert torch.equal(knn_graph(x, 3, backend="exact").to_dense(), knn_graph(x, 3).to_dense())
    for bad in ("faiss", "hnsw", ""):
        with pytest.raises(ValueError, match=f"knn_backend {bad!r} is not available; available: exact, "):
            knn_graph(x, 3, backend=bad)


# -- the product path: int32 indices, addmm, Horner's LightGCN -------------------------------------

def _random_csr(n, m, density=0.2, seed=0):
    rng = np.random.default_rng(seed)
    return to_torch_csr(sp.random(n, m, density=density, random_state=rng, dtype=np.float32, format="csr"))


def test_compact_indices_gives_the_same_products_and_leaves_large_or_compact_matrices(monkeypatch):
    import latticerec.graphs.sparse as sparse

    a = _random_csr(30, 20)
    c = sparse.compact_indices(a)
    assert c.crow_indices().dtype == c.col_indices().dtype == torch.int32
    x = torch.randn(20, 5)
    assert torch.allclose(c @ x, a.to_dense() @ x, atol=1e-5)
    assert sparse.compact_indices(c) is c and sparse.compact_indices(None) is None
    monkeypatch.setattr(sparse, "INT32_LIMIT", 25)  # as if 30 rows overflowed int32
    assert sparse.compact_indices(a).crow_indices().dtype == torch.int64


def test_constant_spmm_backward_uses_the_given_transpose():
    from latticerec.graphs.sparse import compact_indices, constant_spmm, transpose_csr

    a = compact_indices(_random_csr(12, 12, seed=1))  # not symmetric
    dense = a.to_dense()
    x = torch.randn(12, 4, requires_grad=True)
    w = torch.randn(12, 4)
    y = constant_spmm(a, x, transpose_csr(a))
    (y * w).sum().backward()
    gx = x.grad.clone()
    x.grad = None
    ((dense @ x) * w).sum().backward()
    assert torch.allclose(y, dense @ x, atol=1e-6) and torch.allclose(gx, x.grad, atol=1e-5)


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_lightgcn_horner_equals_the_mean_of_the_layers(layers):
    from latticerec.models.backbones import LightGCN

    r = sp.random(9, 7, density=0.3, random_state=np.random.default_rng(2), format="csr")
    r.data[:] = 1
    adj = normalized_bipartite_adjacency(to_torch_csr(r))
    torch.manual_seed(0)
    model = LightGCN(9, 7, adj, embed_dim=4, n_layers=layers)
    e = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    dense, x, total = adj.to_dense(), e, e.clone()
    for _ in range(layers):
        x = dense @ x
        total = total + x
    users, items = model.propagate()
    assert torch.allclose(torch.cat([users, items]), total / (layers + 1), atol=1e-5)


def test_values_spmm_backward_in_entry_chunks_equals_one_chunk_and_the_numerical_gradient(monkeypatch):
    from latticerec.graphs import sparse
    from latticerec.graphs.sparse import GradCSR, csr_from_parts, spmm

    torch.manual_seed(0)
    n, k, d = 40, 3, 4
    crow = torch.arange(0, n * k + 1, k)
    col = torch.randint(0, n, (n, k)).sort(1).values.reshape(-1)
    vals = torch.rand(n * k, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, d, dtype=torch.float64, requires_grad=True)

    def product(v, xx):
        return spmm(GradCSR(csr_from_parts(crow, col, v.detach(), (n, n)), v), xx)

    w = torch.randn(n, d, dtype=torch.float64)
    whole = torch.autograd.grad((product(vals, x) * w).sum(), (vals, x))
    monkeypatch.setattr(sparse, "VALUES_GRAD_BUDGET", 2 * d)  # two entries per chunk
    chunked = torch.autograd.grad((product(vals, x) * w).sum(), (vals, x))
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked, strict=True))
    assert torch.autograd.gradcheck(product, (vals, x))


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_layer_mean_is_the_mean_of_the_layers_and_its_backward_is_the_transposed_sum(n_layers):
    """LightGCN eq. 7-8 by Horner's rule in one autograd function, for a non-symmetric ``A`` (the
    released row-normalised adjacency) too: values, gradcheck, and the transpose really used."""
    from latticerec.graphs.sparse import layer_mean, transpose_csr

    gen = torch.Generator().manual_seed(n_layers)
    dense = torch.rand(7, 7, generator=gen, dtype=torch.float64) * (torch.rand(7, 7, generator=gen) < 0.4)
    adj = dense.to_sparse_csr()
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    layers = [x]
    for _ in range(n_layers):
        layers.append(dense @ layers[-1])
    assert torch.allclose(layer_mean(adj, x, n_layers, transpose_csr(adj)), torch.stack(layers).mean(0))
    assert torch.autograd.gradcheck(lambda v: layer_mean(adj, v, n_layers, transpose_csr(adj)), (x,))
    sym = (dense + dense.T).to_sparse_csr()  # adj_t None: A is its own transpose
    assert torch.autograd.gradcheck(lambda v: layer_mean(sym, v, n_layers), (x,))
    if n_layers:  # a wrong transpose gives a wrong gradient: the backward pass uses adj_t
        wrong = layer_mean(adj, x, n_layers, adj)
        g = torch.autograd.grad(wrong.sum(), x)[0]
        right = torch.autograd.grad(layer_mean(adj, x, n_layers, transpose_csr(adj)).sum(), x)[0]
        assert not torch.allclose(g, right)


def test_dropout_scale_keeps_1_minus_p_of_the_entries_scaled_so_the_mean_is_unchanged():
    from latticerec.models.backbones import dropout_scale

    torch.manual_seed(0)
    x = torch.ones(400, 250)
    for p in (0.1, 0.5):
        s = dropout_scale(x, p)
        kept = s > 0
        assert torch.equal(s[kept], torch.full_like(s[kept], 1 / (1 - p))) and (s[~kept] == 0).all()
        # 100,000 Bernoulli(1 - p) draws: within 5 standard deviations of the expected share
        assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / x.numel()) ** 0.5
        assert abs(s.mean().item() - 1) < 0.02


def test_ngcf_message_dropout_acts_in_training_only():
    from latticerec.models.backbones import NGCF

    r = sp.random(30, 20, density=0.3, random_state=np.random.default_rng(3), format="csr")
    r.data[:] = 1
    adj = normalized_bipartite_adjacency(to_torch_csr(r))
    torch.manual_seed(0)
    model = NGCF(30, 20, adj, embed_dim=8, n_layers=2, mess_dropout=0.5)
    model.eval()
    u_eval, i_eval = model.propagate()
    model.train()
    u_train, i_train = model.propagate()
    assert torch.equal(u_train[:, :8], u_eval[:, :8])  # layer 0: the embeddings, never dropped
    # half of each later layer's messages dropped: exact zeros that evaluation does not have
    assert (u_train[:, 8:] == 0).float().mean() > 0.3 and (u_eval[:, 8:] == 0).float().mean() < 0.05
    no_drop = NGCF(30, 20, adj, embed_dim=8, n_layers=2, mess_dropout=0.0)
    no_drop.load_state_dict(model.state_dict())
    assert torch.equal(torch.cat(no_drop.propagate()), torch.cat([u_eval, i_eval]))
