"""The recommender behind the HTTP service and ``latticerec recommend``: numpy only.

* a user's top-k: ``s_i = u · x_i`` over every item (the model's own score), the user's training
  items masked when ``exclude_seen``;
* an anonymous basket ``B`` (a session that is not a training user) is folded in as the mean of its
  items' representations, ``u_B = (1/|B|) Σ_(i ∈ B) x_i`` (for LightGCN-style models a user's
  representation is a normalised sum of their items' propagated representations, so this is the same
  construction with the normaliser made uniform); ``B`` itself is excluded;
* similar items: the cosine ``x_i · x_j / (‖x_i‖ ‖x_j‖)`` over the item representations, the item
  itself excluded;
* new items are placed by :mod:`latticerec.serve.foldin` and appended to the catalogue.

Readers never lock. The item representations live in a buffer with spare rows; a writer (holding
``_lock``) fills the next spare row, saves the added items to disk, and only then publishes a new
:class:`Snapshot` (one reference assignment), so a reader sees either the catalogue before the
item or the catalogue with it, never half an item.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from latticerec.errors import LatticeRecError
from latticerec.serve.artifact import ModelArtifact, save_added
from latticerec.serve.foldin import load_fold_in
from latticerec.serve.index import ExactIndex, HNSWIndex, exact_top_k, recall_against_exact, top_k

MAX_ID_LENGTH = 200
RECALL_SAMPLE = 200


class NotFound(LatticeRecError, LookupError):
    """An unknown user or item (HTTP 404)."""


class BadInput(LatticeRecError, ValueError):
    """A request that cannot be answered as asked (HTTP 422)."""


class Conflict(LatticeRecError):
    """An item id that already exists (HTTP 409)."""


@dataclass(frozen=True)
class Snapshot:
    """The catalogue as one reader sees it: the first ``n`` rows of the buffers."""

    n: int
    reprs: np.ndarray  # (n, d) view
    norms: np.ndarray  # (n,) view


class Recommender:
    """Answers recommendations from a :class:`ModelArtifact`."""

    def __init__(self, art: ModelArtifact, index: str = "exact", max_k: int = 1000, spare: int = 1024,
                 recall_k: int = 20, hnsw: dict | None = None):
        if index not in ("exact", "hnsw"):
            raise BadInput(f"--index {index!r}: expected exact or hnsw")
        self.art, self.max_k = art, max_k
        self.n_users, self.n_base = art.user_repr.shape[0], art.item_repr.shape[0]
        self.user_pos = {u: i for i, u in enumerate(art.user_ids)}
        self.item_ids = list(art.item_ids) + list(art.added_ids)
        self.item_pos = {v: i for i, v in enumerate(self.item_ids)}
        self.titles = None if art.titles is None else list(art.titles) + [""] * len(art.added_ids)
        self.neighbours = {i: n for i, n in zip(art.added_ids, art.added_neighbours, strict=True)}
        try:
            self.fold_in = load_fold_in(art.manifest["fold_in"], art.fold)
        except (KeyError, ValueError, TypeError) as exc:
            raise LatticeRecError(f"{art.path}: manifest field 'fold_in' cannot be used ({exc})") from None
        self._lock = threading.Lock()
        added = art.added_repr if art.added_repr is not None else np.zeros((0, art.item_repr.shape[1]))
        n = self.n_base + added.shape[0]
        self._buf = np.empty((n + spare, art.item_repr.shape[1]), np.float32)
        self._buf[: self.n_base], self._buf[self.n_base: n] = art.item_repr, added
        art.item_repr = self._buf[: self.n_base]  # one copy of the catalogue in memory
        self._norms = np.empty(self._buf.shape[0], np.float32)
        self._norms[:n] = np.linalg.norm(self._buf[:n], axis=1)
        self._snap = Snapshot(n, self._buf[:n], self._norms[:n])
        self._truth: dict = {}
        hnsw = dict(hnsw or {})
        target = hnsw.pop("target_recall", None)
        self.index = ExactIndex() if index == "exact" else \
            HNSWIndex(art.item_repr, cache_dir=art.path, **hnsw)
        if isinstance(self.index, HNSWIndex):
            self.tune_ef_search(recall_k, target)
            self.index.recall = self.measure_recall(recall_k)

    # -- lookups -----------------------------------------------------------------------------------
    def user(self, raw: str) -> int:
        idx = self.user_pos.get(raw)
        if idx is None:
            raise NotFound(f"user {raw!r} is not a user of this model")
        return idx

    def item(self, raw: str, snap: Snapshot) -> int:
        idx = self.item_pos.get(raw)
        if idx is None or idx >= snap.n:
            raise NotFound(f"item {raw!r} is not an item of this model")
        return idx

    def check_k(self, k: object) -> int:
        if type(k) is not int:
            raise BadInput(f"k: expected an integer, got {k!r}")
        if not 1 <= k <= self.max_k:
            raise BadInput(f"k: must be in 1..{self.max_k}, got {k}")
        return k

    def seen(self, user: int) -> np.ndarray:
        lo, hi = self.art.train_indptr[user], self.art.train_indptr[user + 1]
        return self.art.train_indices[lo:hi].astype(np.int64)

    def entries(self, items: np.ndarray, scores: np.ndarray | None = None) -> list[dict]:
        """``[{"item": id, "score": s, "title": t}]`` (score when given, title when the model has titles)."""
        ids = self.item_ids
        if scores is None:
            out = [{"item": ids[i]} for i in items.tolist()]
        else:
            out = [{"item": ids[i], "score": s} for i, s in zip(items.tolist(), scores.tolist(), strict=True)]
        if self.titles is not None:
            for row, i in zip(out, items.tolist(), strict=True):
                row["title"] = self.titles[i]
        return out

    # -- queries -----------------------------------------------------------------------------------
    def recommend_user(self, raw: str, k: int, exclude_seen: bool = True) -> list[dict]:
        """A training user's top-``k`` items, best first."""
        user, k = self.user(raw), self.check_k(k)
        snap = self._snap
        exclude = self.seen(user) if exclude_seen else np.zeros(0, np.int64)
        return self.entries(*self.index.search(snap.reprs, self.art.user_repr[user], k, exclude))

    def user_items(self, raw: str) -> list[dict]:
        return self.entries(self.seen(self.user(raw)))

    def recommend_basket(self, items: object, k: object) -> list[dict]:
        """Top-``k`` for an anonymous basket of items (its mean representation), the basket excluded."""
        if not isinstance(items, list) or not items:
            raise BadInput("items: expected a non-empty list of item ids")
        if not all(isinstance(i, str) for i in items):
            raise BadInput("items: every item id must be a string")
        k, snap = self.check_k(k), self._snap
        idx = np.unique([self.item(i, snap) for i in items])
        query = snap.reprs[idx].mean(0)
        return self.entries(*self.index.search(snap.reprs, query, k, idx))

    def similar(self, raw: str, k: int) -> list[dict]:
        """The ``k`` items of highest cosine with item ``raw`` (itself excluded)."""
        k, snap = self.check_k(k), self._snap
        i = self.item(raw, snap)
        cos = (snap.reprs @ snap.reprs[i]) / np.maximum(snap.norms * snap.norms[i], 1e-12)
        cos[i] = -np.inf
        return self.entries(*top_k(cos, k))

    # -- new items -------------------------------------------------------------------------------
    def modalities(self) -> dict[str, int] | None:
        return None if self.fold_in is None else dict(self.fold_in.modalities)

    def add_item(self, raw: object, features: object) -> dict:
        """Place a new item from its content, save it under the model folder, then publish it."""
        if self.fold_in is None:
            reason = self.art.manifest["fold_in"].get("reason") or \
                f"model {self.art.model!r} has no content: it cannot place a new item"
            raise BadInput(f"features: {reason}")
        if not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_ID_LENGTH \
                or not raw.isprintable() or "/" in raw or raw in (".", ".."):
            raise BadInput(f"item: expected a printable id of 1..{MAX_ID_LENGTH} characters without '/' "
                           "(and not '.' or '..', which no URL can name)")
        if not isinstance(features, dict):
            raise BadInput("features: expected an object mapping modality name to a list of numbers")
        try:
            for m, vec in self.fold_in.check_features(features).items():
                if not vec.any():  # a client's placeholder, not content: refused, never placed
                    raise BadInput(f"modality {m!r}: the feature vector is all zeros")
            rep, nbrs = self.fold_in.place(features)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        rep = np.asarray(rep, np.float32)
        if rep.shape != (self._buf.shape[1],) or not np.isfinite(rep).all():
            raise LatticeRecError(f"fold-in returned a representation of shape {rep.shape}")
        if not rep.any():  # e.g. features so large that their normalisation overflowed float32
            raise BadInput("features: the placed representation is all zeros (values too large?)")
        neighbours = [[self.item_ids[j], float(w)] for j, w in nbrs]
        with self._lock:
            if raw in self.item_pos:
                raise Conflict(f"item {raw!r} already exists")
            n = self._snap.n
            if n == self._buf.shape[0]:
                self._grow()
            self._buf[n], self._norms[n] = rep, np.linalg.norm(rep)
            added_ids = self.item_ids[self.n_base:] + [raw]
            if self.art.path is not None:
                save_added(self.art.path, self._buf[self.n_base: n + 1], added_ids,
                           [self.neighbours[i] for i in added_ids[:-1]] + [neighbours])
            self.item_ids.append(raw)
            if self.titles is not None:
                self.titles.append("")
            self.neighbours[raw] = neighbours
            self._snap = Snapshot(n + 1, self._buf[: n + 1], self._norms[: n + 1])
            self.item_pos[raw] = n
        return {"item": raw, "neighbours": [{**row, "weight": w} for row, (_, w) in zip(
                    self.entries(np.asarray([j for j, _ in nbrs], np.int64)), nbrs, strict=True)],
                "items": n + 1}

    def _grow(self) -> None:
        """Twice the rows; readers keep the old buffer their snapshot points at."""
        n = self._snap.n
        buf = np.empty((2 * self._buf.shape[0], self._buf.shape[1]), np.float32)
        norms = np.empty(buf.shape[0], np.float32)
        buf[:n], norms[:n] = self._buf[:n], self._norms[:n]
        self._buf, self._norms = buf, norms

    # -- status ----------------------------------------------------------------------------------
    def tune_ef_search(self, k: int, target: float | None, limit: int = 4096) -> None:
        """The smallest ``efSearch`` (to within 1/16) whose recall@k on a tuning sample of users (not
        the one reported) reaches ``target``: doubled until it does, then bisected."""
        if target is None:
            return
        index = self.index

        def reaches(ef: int) -> bool:
            index.ef_search = ef
            return self.measure_recall(k, seed=1)[f"recall@{k}"] >= target

        lo, hi = 0, index.ef_search
        while hi < limit and not reaches(hi):
            lo, hi = hi, min(2 * hi, limit)
        while hi - lo > max(1, hi // 16):
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
        index.ef_search = hi

    def measure_recall(self, k: int, sample: int = RECALL_SAMPLE, seed: int = 0) -> dict:
        """recall@k of the HNSW index against exact search on a sample of users (seen excluded)."""
        users = np.random.default_rng(seed).choice(self.n_users, min(sample, self.n_users), replace=False)
        snap, excludes = self._snap, [self.seen(u) for u in users]
        key = (k, sample, seed, snap.n)
        if key not in self._truth:  # exact lists, kept while efSearch is tuned
            self._truth[key] = exact_top_k(snap.reprs, self.art.user_repr[users], excludes, k)
        rec = recall_against_exact(self.index, snap.reprs, self.art.user_repr[users], excludes, k,
                                   self._truth[key])
        return {f"recall@{k}": round(rec, 4), "recall_users": int(users.size)}

    def work_size(self) -> int:
        """How many numbers one full scoring reads (items x dimension)."""
        return self._snap.n * self._buf.shape[1]

    def health(self) -> dict:
        return {"status": "ok", "model": self.art.model, "users": self.n_users, "items": self._snap.n,
                "added_items": self._snap.n - self.n_base, "index": self.index.describe(),
                "modalities": self.modalities(), "titles": self.titles is not None, "max_k": self.max_k}
