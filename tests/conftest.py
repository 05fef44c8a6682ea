from pathlib import Path

import numpy as np
import pytest

from latticerec.data.dataset import Dataset, interactions_to_csr

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path of a real dataset in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {path} is absent (tests read ../shared/data beside the repo)")
    return path


def make_block_dataset(n_users=40, n_items=30, n_blocks=3, seed=0, dims=(8, 6), noise=0.1) -> Dataset:
    """A tiny dataset with a known answer: users consume only items of their own block, items of
    a block share features (their block's centre plus ``noise`` times a standard normal vector). A
    good model ranks a user's held-out block items first."""
    rng = np.random.default_rng(seed)
    user_block = np.arange(n_users) % n_blocks
    item_block = np.arange(n_items) % n_blocks
    users, items, labels = [], [], []
    for u in range(n_users):
        own = np.flatnonzero(item_block == user_block[u])
        chosen = rng.permutation(own)[:8]
        users += [u] * len(chosen)
        items += chosen.tolist()
        labels += [2, 1] + [0] * (len(chosen) - 2)
    users, items, labels = map(np.asarray, (users, items, labels))
    splits = [interactions_to_csr(users[labels == k], items[labels == k], n_users, n_items)
              for k in range(3)]
    feats = {}
    for m, d in zip(("image", "text"), dims, strict=False):
        centers = rng.normal(size=(n_blocks, d))
        feats[m] = (centers[item_block] + noise * rng.normal(size=(n_items, d))).astype(np.float32)
    return Dataset(name="blocks", train=splits[0], valid=splits[1], test=splits[2], features=feats)


@pytest.fixture
def blocks() -> Dataset:
    return make_block_dataset()


@pytest.fixture(autouse=True)
def _private_graph_cache(tmp_path_factory, monkeypatch):
    """Tests never write kNN graphs into the user's ~/.cache."""
    monkeypatch.setenv("LATTICEREC_CACHE", str(tmp_path_factory.getbasetemp() / "graph-cache"))
