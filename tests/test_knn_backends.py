"""The kNN backends behind ``knn_graph`` / ``knn_rows`` (``knn_backend``): known answers, exactness of
faiss-flat, recall of the ANN indexes, ``auto``'s choice, the graph contract, the option and the cache
key, and the models trained with an ANN backend (initial and re-learned graphs)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_dataset

import latticerec.graphs.knn as knn
from latticerec.cli import main
from latticerec.data.readers import load_dataset
from latticerec.errors import ConfigError
from latticerec.graphs.cache import KnnGraphCache, graph_key
from latticerec.graphs.knn import KnnSearch, knn_graph, knn_indices, knn_rows, knn_values, symmetric_normalize
from latticerec.train.build import build_model, resolve_config

ANN = ("faiss-flat", "faiss-hnsw", "faiss-ivf")
ALL = ("exact", *ANN, "auto")


def clustered(n_clusters, size, d=16, spread=0.05, seed=0):
    """``n_clusters`` tight clusters of ``size`` points around random directions, cluster ids."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_clusters, d, generator=g), dim=1) * 10
    labels = torch.arange(n_clusters).repeat_interleave(size)
    return centres[labels] + spread * torch.randn(labels.numel(), d, generator=g), labels


def recall(found, truth):
    return (found.unsqueeze(2) == truth.unsqueeze(1)).any(dim=2).float().mean().item()


@pytest.mark.parametrize("backend", ALL)
def test_every_backend_finds_the_known_clusters(backend):
    # clusters of exactly k points, far apart: each point's k neighbours are its own cluster
    x, labels = clustered(12, 5)
    nbr = knn_indices(x, 5, backend=backend)
    expected = torch.arange(x.shape[0]).view(12, 5).repeat_interleave(5, dim=0)
    assert torch.equal(nbr, expected)
    assert (labels[nbr] == labels.unsqueeze(1)).all()


@pytest.mark.parametrize("backend", ANN)
def test_ann_rows_keep_the_exact_contract(backend):
    x, _ = clustered(30, 40, d=24, spread=0.5, seed=1)
    nbr, val = knn_rows(x, 7, backend=backend)
    n = x.shape[0]
    assert nbr.shape == val.shape == (n, 7) and nbr.dtype == torch.long
    assert (nbr.diff(dim=1) > 0).all()  # columns ascending, no duplicates
    assert (nbr == torch.arange(n).unsqueeze(1)).any(dim=1).all()  # the item itself (S_ii = 1)
    # values: eq. 1 exactly for the chosen pairs, then eq. 3
    assert torch.allclose(val, symmetric_normalize(nbr, knn_values(x, nbr)))
    raw = knn_graph(x, 7, normalize=False, backend=backend)
    assert raw.layout == torch.sparse_csr and raw.values().numel() == n * 7


def test_faiss_flat_equals_exact_up_to_ties():
    x = torch.randn(600, 20, generator=torch.Generator().manual_seed(3))
    exact, flat = knn_indices(x, 10), knn_indices(x, 10, backend="faiss-flat")
    xn = F.normalize(x, dim=1)
    sims = lambda nbr: (xn.unsqueeze(1) * xn[nbr]).sum(-1).sort(dim=1).values  # noqa: E731
    assert torch.allclose(sims(exact), sims(flat), atol=1e-6)  # the same top-k similarities
    differ = (exact != flat).any(dim=1)
    assert differ.sum() <= 3  # and the same lists but for float near-ties


@pytest.mark.parametrize("backend", ["faiss-hnsw", "faiss-ivf"])
def test_ann_recall_at_10_on_thousands_of_points(backend):
    x, _ = clustered(60, 50, d=32, spread=2.0, seed=2)  # 3,000 points, clusters overlap in part
    truth = knn_indices(x, 10)
    found = knn_indices(x, 10, backend=backend)
    r = recall(found, truth)
    assert 0.9 <= r
    if backend == "faiss-ivf":  # a single probed cell loses neighbours: the index is really approximate
        assert recall(knn_indices(x, 10, backend=KnnSearch(backend, ivf_nprobe=1)), truth) < r


def test_auto_chooses_by_size(monkeypatch):
    calls = []
    real = knn.faiss_search
    monkeypatch.setattr(knn, "faiss_search", lambda x, k, method, *a, **kw: calls.append(method)
                        or real(x, k, method, *a, **kw))
    search = KnnSearch("auto", auto_items=100)
    assert search.resolve(100) == "exact" and search.resolve(101) == "faiss-hnsw"
    small, _ = clustered(20, 5)  # 100 items: exact
    assert torch.equal(knn_indices(small, 5, backend=search), knn_indices(small, 5))
    assert calls == []
    big, _ = clustered(30, 5)  # 150 items: the ANN index
    assert torch.equal(knn_indices(big, 5, backend=search), knn_indices(big, 5))
    assert calls == ["faiss-hnsw"]


def test_rows_an_index_cannot_fill_are_searched_exactly():
    x, _ = clustered(10, 8, seed=4)
    x[13] = 0.0  # a row of zeros: similarity 0 to everything, the k lowest indices (as exact)
    exact = knn_indices(x, 4)
    assert exact[13].tolist() == [0, 1, 2, 3]
    raw = exact.clone()  # an index's answer, most similar first (here: ascending ids, the same sets)
    raw[5, 2:] = -1  # the index returned fewer than k results
    raw[7, 1] = raw[7, 0]  # or an id twice
    raw[13] = torch.tensor([40, 41, 42, 43])  # its answer for a zero row is arbitrary
    raw[20] = torch.cat([raw[20][raw[20] != 20], torch.tensor([79])])  # it missed the item itself
    got = knn._complete(F.normalize(x, dim=1), raw, 4, None)
    assert torch.equal(got, exact)  # exact rows for 5, 7 and 13; 20 gets itself back for 79


def test_ann_values_carry_the_exact_gradient():
    x, _ = clustered(15, 6, seed=5)
    w = torch.randn(16, 8, generator=torch.Generator().manual_seed(6))
    grads = []
    for backend in ("exact", "faiss-hnsw"):
        f = (x @ w).requires_grad_(True)
        nbr, val = knn_rows(f, 6, backend=backend)
        (val * torch.arange(6.0)).sum().backward()
        grads.append((nbr, f.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.allclose(grads[0][1], grads[1][1])


def test_invalid_backend_and_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="knn_backend 'annoy' is not available; available: exact, "
                       "faiss-flat, faiss-hnsw, faiss-ivf, auto"):
        resolve_config("lattice", {"knn_backend": "annoy"})
    for key in ("knn_hnsw_ef", "knn_ivf_nprobe", "knn_auto_items"):
        with pytest.raises(ConfigError, match=key):
            resolve_config("micro", {key: "0"})
    # faiss's efSearch is a C int: a larger one was an OverflowError traceback
    with pytest.raises(ConfigError, match=r"knn_hnsw_ef must be <= 2\*\*31 - 1, got 2147483648"):
        resolve_config("lattice", {"knn_backend": "faiss-hnsw", "knn_hnsw_ef": str(2**31)})
    with pytest.raises(ValueError, match="knn_backend 'hnsw'"):
        knn_graph(torch.randn(5, 3), 2, backend="hnsw")
    with pytest.raises(ValueError, match="knn_hnsw_m must be >= 2"):  # faiss's HNSW with M = 1 segfaults
        KnnSearch("faiss-hnsw", hnsw_m=1)
    for bad in ({"hnsw_m": 8.5}, {"hnsw_ef": True}, {"ivf_nlist": 2.5}, {"ivf_nprobe": "4"}):
        with pytest.raises(ValueError, match=f"knn_{next(iter(bad))} must be an integer"):
            KnnSearch("faiss-hnsw", **bad)
    for model in ("lattice", "micro", "mmgef"):
        cfg = resolve_config(model, {"knn_backend": "faiss-ivf", "knn_ivf_nprobe": "4"}).model_config
        assert cfg.knn_search() == KnnSearch("faiss-ivf", ivf_nprobe=4)


def test_cache_key_names_the_resolved_search(tmp_path):
    x, _ = clustered(10, 6, seed=7)
    exact = graph_key(x, 5)
    assert graph_key(x, 5, "exact") == exact == graph_key(x, 5, KnnSearch("auto"))  # auto -> exact here
    searches = ("faiss-flat", "faiss-hnsw", "faiss-ivf", KnnSearch("faiss-hnsw", hnsw_ef=99),
                KnnSearch("auto", auto_items=10))
    keys = {graph_key(x, 5, s) for s in searches}
    assert exact not in keys and len(keys) == 4  # auto above 10 items = the default faiss-hnsw
    cache = KnnGraphCache(tmp_path)
    a, b = cache(x, 5), cache(x, 5, backend="faiss-hnsw")
    assert cache.misses == 2 and len(list(cache.graphs_dir.glob("knn-*.npz"))) == 2
    assert torch.equal(cache(x, 5, backend="faiss-hnsw").to_dense(), b.to_dense()) and cache.hits == 1
    assert torch.equal(a.to_dense(), knn_graph(x, 5).to_dense())


def test_lattice_trains_with_hnsw_for_initial_and_learned_graphs(tmp_path, monkeypatch):
    dims = []
    real = knn.faiss_search
    monkeypatch.setattr(knn, "faiss_search", lambda x, k, method, *a, **kw: dims.append((x.shape[1], method))
                        or real(x, k, method, *a, **kw))
    cache_dir = tmp_path / "cache"
    rc = main(["train", "--model", "lattice", "--data", "synthetic", "--epochs", "2", "--quiet",
               "--set", "knn_backend=faiss-hnsw", "embed_dim=16", "--out", str(tmp_path / "run"),
               "--cache-dir", str(cache_dir)])
    assert rc == 0
    data = load_dataset("synthetic")
    feats = {m: torch.as_tensor(f).float() for m, f in data.features.items()}
    # initial graphs of the raw features (cached under the hnsw key), learned graphs of the
    # 16-d projections: every kNN graph of the run went through the index
    assert {(f.shape[1], "faiss-hnsw") for f in feats.values()} | {(16, "faiss-hnsw")} == set(dims)
    assert dims.count((16, "faiss-hnsw")) >= 2 * len(feats)  # re-learned in each of the 2 epochs
    cached = {p.stem for p in (cache_dir / "graphs").glob("knn-*.npz")}
    search = KnnSearch("faiss-hnsw")
    assert cached == {f"knn-{graph_key(f, 10, search)}" for f in feats.values()}
    assert cached.isdisjoint({f"knn-{graph_key(f, 10)}" for f in feats.values()})


@pytest.mark.parametrize("model", ["micro", "mmgef"])
def test_micro_and_mmgef_take_the_backend_from_the_cli(tmp_path, model, monkeypatch):
    methods = []
    real = knn.faiss_search
    monkeypatch.setattr(knn, "faiss_search", lambda x, k, method, *a, **kw: methods.append(method)
                        or real(x, k, method, *a, **kw))
    assert main(["train", "--model", model, "--data", "synthetic", "--epochs", "1", "--quiet",
                 "--set", "knn_backend=faiss-ivf", "embed_dim=16", "--out", str(tmp_path / model),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert methods and set(methods) == {"faiss-ivf"}
    run = resolve_config(model, {"knn_backend": "faiss-ivf", "embed_dim": "16"})
    built = build_model(run, load_dataset("synthetic"), "cpu", KnnGraphCache(tmp_path / "cache"))
    assert built.structure.search == KnnSearch("faiss-ivf")


def test_real_features_recall_tiktok():
    path = shared_dataset("tiktok") / "image_feat.npy"
    x = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
    truth = knn_indices(x, 10)
    for backend in ("faiss-hnsw", "faiss-ivf"):
        assert recall(knn_indices(x, 10, backend=backend), truth) >= 0.9


@pytest.mark.parametrize("backend", ANN)
def test_numpy_integers_are_accepted_by_every_backend(backend):
    # k and the index parameters pass the integer checks as numpy integers (a k read from an array,
    # a config parsed by numpy); faiss's bindings refuse them, so they must reach it as int
    x, _ = clustered(12, 5)
    want = knn_indices(x, 5)
    assert torch.equal(knn_indices(x, np.int64(5), backend=backend), want)
    params = {"faiss-flat": {},
              "faiss-hnsw": {"hnsw_m": np.int64(8), "hnsw_efc": np.int32(40), "hnsw_ef": np.int64(20)},
              "faiss-ivf": {"ivf_nlist": np.int64(1), "ivf_nprobe": np.int64(1)}}[backend]
    search = KnnSearch(backend, **params)
    assert all(type(getattr(search, name)) is int for name in params)
    assert torch.equal(knn_indices(x, 5, backend=search), want)


def test_ivf_on_a_small_catalogue_prints_nothing(capfd):
    """faiss printed "WARNING clustering 30 points to 1 centroids" on stderr at every IVF build of a
    catalogue under 39 items per cell, each epoch's re-learned graphs included; same neighbours."""
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    nbr = knn_indices(x, 3, backend="faiss-ivf")
    out, err = capfd.readouterr()
    assert "WARNING" not in out + err
    assert torch.equal(nbr, knn_indices(x, 3, backend="exact"))  # one cell: an exhaustive search
