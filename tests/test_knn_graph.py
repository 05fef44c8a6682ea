"""The kNN graph builders of graphs/knn.py against dense references and hand-computed values."""

import io
import zipfile

import numpy as np
import pytest
import torch

from latticerec.graphs.cache import KnnGraphCache
from latticerec.graphs.knn import (
    NonFiniteFeatures,
    knn_graph,
    knn_indices,
    pairs_graph,
    skip_connection,
    symmetric_normalize,
    weighted_spmm,
)
from latticerec.graphs.sparse import ConstantCSR


def dense_reference(x: np.ndarray, k: int, normalize: bool = True) -> np.ndarray:
    """Eq. 1-3 transcribed on a dense matrix (ties to the lower index via a stable sort)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    out = np.zeros_like(sim)
    for i in range(len(x)):
        top = np.argsort(-sim[i], kind="stable")[:k]
        out[i, top] = np.maximum(sim[i, top], 0.0)
    if normalize:
        d = out.sum(1)
        inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0)
        out = inv[:, None] * out * inv[None, :]
    return out


def test_knn_graph_equals_a_dense_brute_force_reference():
    x = np.random.default_rng(0).normal(size=(57, 9)).astype(np.float64)
    for k in (1, 4, 10):
        got = knn_graph(torch.tensor(x, dtype=torch.float32), k).to_dense().numpy()
        ref = dense_reference(x, k)
        np.testing.assert_allclose(got, ref, atol=1e-5)
        # same sparsity: the kept pairs are the same (compare supports, not just values)
        unnorm = knn_graph(torch.tensor(x, dtype=torch.float32), k, normalize=False)
        support = np.zeros_like(ref, dtype=bool)
        crow, col = unnorm.crow_indices().numpy(), unnorm.col_indices().numpy()
        for i in range(len(x)):
            support[i, col[crow[i]:crow[i + 1]]] = True
        ref_support = np.zeros_like(support)
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        for i, row in enumerate(xn @ xn.T):
            ref_support[i, np.argsort(-row, kind="stable")[:k]] = True
        assert (support == ref_support).all()


def test_exactly_k_entries_per_row_before_normalisation():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    g = knn_graph(x, 7, normalize=False)
    assert (g.crow_indices().diff() == 7).all()
    assert g.values().numel() == 40 * 7


def test_chunked_equals_unchunked():
    x = torch.randn(101, 12, generator=torch.Generator().manual_seed(2))
    whole = knn_graph(x, 6, chunk_size=1000).to_dense()
    for chunk in (1, 7, 50, 100):
        assert torch.equal(knn_graph(x, 6, chunk_size=chunk).to_dense(), whole)


def test_symmetric_normalisation_by_hand():
    # rows: 0 -> {0: 1.0, 1: 0.5}, 1 -> {1: 1.0, 0: 0.5}, 2 -> {2: 1.0, 0: 0.0}
    nbr = torch.tensor([[0, 1], [1, 0], [2, 0]])
    val = torch.tensor([[1.0, 0.5], [1.0, 0.5], [1.0, 0.0]])
    out = symmetric_normalize(nbr, val)
    d = np.array([1.5, 1.5, 1.0])
    expected = [[1 / d[0], 0.5 / np.sqrt(d[0] * d[1])],
                [1 / d[1], 0.5 / np.sqrt(d[1] * d[0])],
                [1 / d[2], 0.0]]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    # a row of zeros has degree 0: its values stay 0 instead of NaN
    zero = symmetric_normalize(torch.tensor([[0, 1], [1, 0]]), torch.zeros(2, 2))
    assert torch.equal(zero, torch.zeros(2, 2))


def test_negative_similarities_are_suppressed_to_zero():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    g = knn_graph(x, 3, normalize=False).to_dense()
    assert g[0, 1] == 0 and g[1, 0] == 0  # cosine -1 kept as a stored zero
    assert g.min() >= 0
    assert torch.allclose(g.diagonal(), torch.ones(3))


def test_ties_go_to_the_lower_index_deterministically_and_each_item_keeps_itself():
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = base[[0, 0, 0, 0, 1, 1]]  # items 0-3 identical, 4-5 identical
    nbr = knn_indices(x, 2)
    # more identical rows than k: the lower ids win the tie, but the item itself stays (eq. 1:
    # S_ii = 1), in place of its largest id, as the ANN backends keep it
    assert nbr[:4].tolist() == [[0, 1], [0, 1], [0, 2], [0, 3]]
    assert nbr[4:].tolist() == [[4, 5]] * 2
    for chunk in (1, 3):
        assert torch.equal(knn_indices(x, 2, chunk_size=chunk), nbr)
    for backend in ("faiss-flat", "faiss-hnsw", "faiss-ivf"):
        ann = knn_indices(x, 2, backend=backend)
        assert all(i in row for i, row in enumerate(ann.tolist())), backend


def test_bad_k_is_a_clear_error():
    with pytest.raises(ValueError, match="knn k=9"):
        knn_graph(torch.randn(5, 3), 9)
    for k in (2.5, True):  # not silently a float-sized tensor or k=1
        with pytest.raises(ValueError, match="knn k must be an integer"):
            knn_graph(torch.randn(5, 3), k)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_are_a_clear_error(bad):
    x = torch.randn(6, 3)
    x[4, 1] = bad  # without the check a NaN row's cosines are NaN and the top-k is arbitrary
    for backend in ("exact", "faiss-flat"):
        with pytest.raises(ValueError, match=r"NaN or infinite values in 1 of 6 rows \(first: row 4\)"):
            knn_graph(x, 2, backend=backend)
    x.requires_grad_(True)  # the learned graphs pass features with gradients
    with pytest.raises(ValueError, match="first: row 4"):
        knn_graph(x, 2)


@pytest.mark.parametrize("backend", ["exact", "faiss-flat", "faiss-ivf"])
def test_features_a_graph_cannot_be_built_of_are_clear_errors(backend):
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    nan = x.clone()
    nan[7, 2] = float("nan")  # knn_indices (public, used by serve) checks too, not only knn_rows
    with pytest.raises(NonFiniteFeatures, match=r"NaN or infinite values in 1 of 50 rows \(first: row 7\)"):
        knn_indices(nan, 2, backend=backend)
    # finite values whose float32 norm overflows: F.normalize made such rows 0 (a silent all-zero
    # graph), float64 beyond float32's range became inf, then NaN values
    big = x.clone()
    big[[3, 9]] *= 1e20
    with pytest.raises(NonFiniteFeatures, match=r"too large in 2 of 50 rows \(first: row 3,"):
        knn_graph(big, 2, backend=backend)
    with pytest.raises(NonFiniteFeatures, match="first: row 0"):
        knn_graph(x.double() * 1e40, 2, backend=backend)
    assert torch.equal(knn_indices(x * 1e18, 2, backend=backend), knn_indices(x, 2, backend=backend))
    # non-zero rows of a norm below F.normalize's eps 1e-12 were divided by the eps, not their norm:
    # dot products, not cosines, a silently different graph (rows of zeros stay allowed)
    tiny = x.clone()
    tiny[[5, 8]] *= 1e-14
    tiny[2] = 0.0
    with pytest.raises(ValueError, match=r"too small in 2 of 50 rows \(first: row 5, norm"):
        knn_graph(tiny, 2, backend=backend)
    with pytest.raises(ValueError, match="too small in 50 of 50 rows"):  # 0 in float32, not a zero row
        knn_indices(x.double() * 1e-50, 2, backend=backend)
    assert torch.equal(knn_indices(x * 1e-10, 2, backend=backend), knn_indices(x, 2, backend=backend))
    # no columns (faiss-ivf died of a floating point exception) or not a matrix
    for shape in ((50, 0), (50,)):
        with pytest.raises(ValueError, match=r"2-D \(items x dims\) matrix with at least one column"):
            knn_indices(torch.zeros(shape), 2, backend=backend)


def test_gradients_flow_through_the_graph_values_to_the_features():
    feats = torch.randn(20, 4, requires_grad=True)
    g = knn_graph(feats, 5)
    (g @ torch.randn(20, 3)).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_pairs_graph_merges_duplicates_and_normalises():
    pairs = torch.tensor([[0, 0], [0, 1], [0, 1], [1, 1], [2, 0]])
    g = pairs_graph(pairs, 4).to_dense().numpy()
    d = np.array([2.0, 1.0, 1.0, 0.0])
    ref = np.zeros((4, 4))
    for i, j in [(0, 0), (0, 1), (1, 1), (2, 0)]:
        ref[i, j] = 1 / np.sqrt(d[i] * d[j])
    np.testing.assert_allclose(g, ref, rtol=1e-6)


def test_skip_connection_and_weighted_product_equal_the_dense_sum():
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(3))
    s, a = knn_graph(x, 4), knn_graph(x * torch.linspace(0.1, 2, 6), 4)
    h = torch.randn(30, 5)
    for lam in (0.0, 0.3, 0.9, 1.0):
        got = weighted_spmm(skip_connection(s, a, lam), h)
        ref = (lam * s.to_dense() + (1 - lam) * a.to_dense()) @ h
        assert torch.allclose(got, ref, atol=1e-6)
    with pytest.raises(ValueError, match="lambda"):
        skip_connection(s, a, 1.5)


def test_constant_csr_product_has_the_dense_gradient_on_a_directed_graph():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(5))
    g = knn_graph(x, 3)  # directed kNN: Gᵀ != G, so a wrong transpose would show
    dense = g.to_dense()
    assert not torch.allclose(dense, dense.T)
    w = torch.randn(40, 4, generator=torch.Generator().manual_seed(6))
    h1 = torch.randn(40, 4, requires_grad=True)
    h2 = h1.detach().clone().requires_grad_(True)
    ((ConstantCSR.of(g) @ (ConstantCSR.of(g) @ h1)) * w).sum().backward()
    ((dense @ (dense @ h2)) * w).sum().backward()
    assert torch.allclose(h1.grad, h2.grad, atol=1e-6)
    terms = skip_connection(ConstantCSR.of(g), g, 0.4)
    assert torch.allclose(weighted_spmm(terms, h2.detach()), (0.4 * dense + 0.6 * dense) @ h2.detach(),
                          atol=1e-6)


def test_graph_cache_reuses_and_repairs_entries(tmp_path):
    x = torch.randn(25, 7, generator=torch.Generator().manual_seed(4))
    cache = KnnGraphCache(tmp_path)
    first = cache(x, 5)
    assert cache.misses == 1 and cache.path_for(x, 5).exists()
    again = cache(x, 5)
    assert cache.hits == 1
    assert torch.equal(first.to_dense(), again.to_dense())
    assert torch.equal(first.to_dense(), knn_graph(x, 5).to_dense())
    assert cache.path_for(x, 6) != cache.path_for(x, 5)
    assert cache.path_for(x + 1e-3, 5) != cache.path_for(x, 5)
    cache.path_for(x, 5).write_bytes(b"truncated")  # a damaged entry is rebuilt, not trusted
    repaired = cache(x, 5)
    assert cache.misses == 2 and torch.equal(repaired.to_dense(), first.to_dense())
    assert not [p for p in (tmp_path / "graphs").iterdir() if p.name.endswith(".tmp")]


def _rewrite_entry(path, **change):
    with np.load(path) as z:
        arrays = {name: z[name] for name in z.files}
    arrays.update(change)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _huge_header_entry(path):
    """An entry whose ``neighbours.npy`` header claims 10^12 entries (np.load would allocate them)."""
    with np.load(path) as z:
        key = z["key"]
    out, key_npy, header = io.BytesIO(), io.BytesIO(), io.BytesIO()
    np.save(key_npy, key)
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False,
                                                  "shape": (10**6, 10**6)})
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("key.npy", key_npy.getvalue())
        zf.writestr("neighbours.npy", header.getvalue())
        zf.writestr("values.npy", header.getvalue())
    path.write_bytes(out.getvalue())


@pytest.mark.parametrize("tamper, reason", [
    # finite as float64, inf as float32
    (lambda p, a: _rewrite_entry(p, values=a["values"].astype(np.float64) * 1e300), "non-finite"),
    (lambda p, a: _rewrite_entry(p, values=np.full_like(a["values"], 5.0)), "not the similarities"),
    (lambda p, a: _rewrite_entry(p, values=-a["values"]), "not the similarities"),
    (lambda p, a: _rewrite_entry(p, neighbours=np.zeros_like(a["neighbours"])), "repeated"),
    (lambda p, a: _huge_header_entry(p), "shape"),
])
def test_graph_cache_rebuilds_entries_that_pass_the_shape_checks_but_are_wrong(tmp_path, tamper, reason):
    x = torch.randn(30, 6)
    cache = KnnGraphCache(tmp_path)
    first = cache(x, 5)
    path = cache.path_for(x, 5)
    with np.load(path) as z:
        tamper(path, {name: z[name] for name in z.files})
    with pytest.warns(UserWarning, match=f"{path.name}: corrupt.*{reason}"):
        repaired = cache(x, 5)
    assert cache.misses == 2 and torch.equal(repaired.to_dense(), first.to_dense())
    assert KnnGraphCache(tmp_path)(x, 5).to_dense().equal(first.to_dense())  # the rewritten entry is a hit


def test_knn_values_gradient_recomputes_the_gathered_rows_and_equals_autograd_through_them():
    import torch.nn.functional as F

    from latticerec.graphs.knn import _PairDots

    torch.manual_seed(0)
    f = torch.randn(120, 6, dtype=torch.float64, requires_grad=True)
    nb = knn_indices(f.detach().float(), 5)
    x = F.normalize(f, dim=1)
    direct = (x.unsqueeze(1) * x[nb]).sum(-1)  # autograd keeps x[nb]: N x k x d
    chunked = _PairDots.apply(x, nb, 13)  # keeps x only, 13 rows at a time
    assert torch.equal(direct, chunked)
    w = torch.randn(120, 5, dtype=torch.float64)
    g_direct, = torch.autograd.grad((direct * w).sum(), f, retain_graph=True)
    g_chunked, = torch.autograd.grad((chunked * w).sum(), f)
    assert torch.allclose(g_direct, g_chunked, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: _PairDots.apply(z, nb, 13),
                                    (torch.randn(120, 6, dtype=torch.float64, requires_grad=True),))


def test_default_blocks_are_cache_sized_on_cpu_and_large_on_a_gpu():
    from latticerec.graphs.knn import _chunk_rows

    assert _chunk_rows(6710, None) == 312  # 2M similarities (8 MB) at a time on a CPU
    assert _chunk_rows(6710, None, "cuda") == 4096
    assert _chunk_rows(1_000_000, None) == 64  # not fewer than 64 rows per block ...
    assert _chunk_rows(10_000_000, None) == 6  # ... unless a block would pass 64M similarities
    assert _chunk_rows(50, None) == 50 and _chunk_rows(6710, 7) == 7
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(700, 24, generator=gen)
    assert torch.equal(knn_indices(x, 5), knn_indices(x, 5, chunk_size=700))
