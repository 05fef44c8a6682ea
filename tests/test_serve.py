"""Export, the model folder's checks, and the service's answers (FastAPI TestClient)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load_file, save_file
from serve_helpers import train_and_export, write_blocks_folder

from latticerec.cli import main
from latticerec.serve.app import create_app
from latticerec.serve.artifact import ArtifactError, load_model_dir
from latticerec.serve.service import Recommender

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    data = write_blocks_folder(root / "blocks")
    return {"data": data, "root": root, "lightgcn": train_and_export(root, "lightgcn", data),
            "cb": train_and_export(root, "cb", data)}


def copy_model(exported, name: str, tmp_path: Path) -> Path:
    out = tmp_path / name
    shutil.copytree(exported[name], out)
    return out


def client_for(path: Path, **kw) -> TestClient:
    return TestClient(create_app(Recommender(load_model_dir(path), **kw)))


# -- export -----------------------------------------------------------------------------------------
def test_export_writes_the_spec(exported):
    from latticerec.train.rundir import RunDir, load_trained

    path = exported["lightgcn"]
    man = json.loads((path / "manifest.json").read_text())
    assert man["format"] == "latticerec-model" and man["format_version"] == 1
    assert man["model"] == "lightgcn" and man["fold_in"]["kind"] == "none"
    assert len(man["dataset"]["content_hash"]) == 64
    assert man["metrics"]["test"]["recall@20"] >= 0 and man["metrics"]["best_epoch"] >= 1
    assert man["created"].endswith("Z") and man["config"]["model_config"]["embed_dim"] == 16
    arrays = load_file(path / "arrays.safetensors")
    for name, spec in man["arrays"].items():
        assert list(arrays[name].shape) == spec["shape"] and str(arrays[name].dtype) == spec["dtype"]
    loaded = load_trained(RunDir(exported["root"] / "lightgcn-run"))
    users, items = (t.numpy() for t in loaded.model.full_representations())
    np.testing.assert_allclose(arrays["user_repr"], users, rtol=1e-6)
    np.testing.assert_allclose(arrays["item_repr"], items, rtol=1e-6)
    import torch

    from latticerec.evaluate.ranking import evaluate_ranking

    ds = loaded.dataset  # the exported representations reproduce the run's test metrics
    again = evaluate_ranking(torch.from_numpy(arrays["user_repr"]), torch.from_numpy(arrays["item_repr"]),
                             ds.test, exclude=[ds.train], topk=(20,))
    assert again["recall@20"] == pytest.approx(man["metrics"]["test"]["recall@20"])
    assert again["ndcg@20"] == pytest.approx(man["metrics"]["test"]["ndcg@20"])
    train = loaded.dataset.train
    np.testing.assert_array_equal(arrays["train_indptr"], train.indptr)
    np.testing.assert_array_equal(arrays["train_indices"], train.indices)
    ids = json.loads((path / "ids.json").read_text())
    assert ids["users"][:2] == ["u0", "u1"] and ids["items"][:2] == ["item-0", "item-1"]
    assert ids["titles"][:2] == ["Title 0", "Title 1"]
    card = (path / "README.md").read_text()
    assert "latticerec serve" in card and "recall@20" in card


def test_export_refuses_to_overwrite(exported, tmp_path, capsys):
    out = copy_model(exported, "lightgcn", tmp_path)
    run = exported["root"] / "lightgcn-run"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (out / "added_items.json").write_text("{}")  # stale: must not survive an overwrite
    assert main(["export", "--run", str(run), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "added_items.json").exists()
    load_model_dir(out)


def test_an_exported_folder_has_the_umask_mode_like_its_files(exported, tmp_path):
    """export's folder was 0700 (mkdtemp) while its files were 0644 under the same umask: another
    account could not serve it."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "shared-model"
        assert main(["export", "--run", str(exported["root"] / "lightgcn-run"), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "manifest.json").stat().st_mode) == 0o644


def test_cb_export_has_its_fold_in(exported):
    man = json.loads((exported["cb"] / "manifest.json").read_text())
    assert man["fold_in"]["kind"] == "cb" and man["fold_in"]["modalities"] == {"image": 8, "text": 6}
    assert any(name.startswith("fold.") for name in man["arrays"])


# -- the loader's checks ----------------------------------------------------------------------------
def _tamper_arrays(path: Path, change) -> None:
    arrays = load_file(path / "arrays.safetensors")
    change(arrays)
    save_file(arrays, path / "arrays.safetensors")


def _tamper_json(path: Path, name: str, change) -> None:
    obj = json.loads((path / name).read_text())
    change(obj)
    (path / name).write_text(json.dumps(obj))


@pytest.mark.parametrize("tamper, message", [
    (lambda p: _tamper_arrays(p, lambda a: a.update(user_repr=a["user_repr"][:-1])),
     "'user_repr' has shape"),
    (lambda p: _tamper_arrays(p, lambda a: a.update(item_repr=a["item_repr"].astype(np.float64))),
     "'item_repr' has dtype float64"),
    (lambda p: _tamper_arrays(p, lambda a: a["item_repr"].__setitem__((3, 0), np.nan)),
     "'item_repr' contains NaN"),
    (lambda p: _tamper_arrays(p, lambda a: a["user_repr"].__setitem__((0, 1), np.inf)),
     "'user_repr' contains NaN or inf"),
    (lambda p: _tamper_arrays(p, lambda a: a["train_indices"].__setitem__(0, 10_000)),
     "train_indices holds item indices outside"),
    (lambda p: _tamper_arrays(p, lambda a: a.pop("train_indptr")), "'train_indptr' listed in"),
    (lambda p: _tamper_json(p, "manifest.json", lambda m: m.update(format_version=2)),
     "'format_version' is 2"),
    (lambda p: _tamper_json(p, "manifest.json", lambda m: m.update(format="pickle")), "field 'format'"),
    (lambda p: _tamper_json(p, "ids.json", lambda m: m["users"].pop()), "field 'users' must list"),
    (lambda p: _tamper_json(p, "ids.json", lambda m: m.update(titles=["x"])), "field 'titles'"),
    (lambda p: (p / "arrays.safetensors").write_bytes(b"\x80\x04garbage"), "not a readable safetensors"),
    (lambda p: (p / "manifest.json").unlink(), "manifest.json: missing"),
    # finite but so large that scores overflow float32 (an item scoring inf was dropped silently)
    (lambda p: _tamper_arrays(p, lambda a: a["item_repr"].__setitem__((3, 0), 3e38)),
     "'item_repr' (rows of norm up to 3e"),
    (lambda p: _tamper_arrays(p, lambda a: a["user_repr"].__setitem__((0, slice(0, 2)), 3e38)), "too large"),
    # JSON that json.loads refuses with RecursionError / a plain ValueError: still names the file
    (lambda p: (p / "ids.json").write_text("[" * 100_000), "ids.json: unreadable JSON"),
    (lambda p: (p / "manifest.json").write_text('{"format": ' + "9" * 5000 + "}"),
     "manifest.json: unreadable JSON"),
    (lambda p: _tamper_json(p, "manifest.json", lambda m: m["dataset"].update(n_items="30")),
     "dataset has 40 x '30'"),
])
def test_loader_names_the_file_and_field(exported, tmp_path, tamper, message):
    path = copy_model(exported, "lightgcn", tmp_path)
    tamper(path)
    with pytest.raises(ArtifactError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_model_dir(path)


def test_loader_checks_added_items(exported, tmp_path):
    path = copy_model(exported, "cb", tmp_path)
    rec = Recommender(load_model_dir(path))
    rec.add_item("new", {"image": [1.0] * 8, "text": [0.5] * 6})
    _tamper_json(path, "added_items.json", lambda m: m.update(items=["item-0"]))
    with pytest.raises(ArtifactError, match="reuses a trained item's id"):
        load_model_dir(path)
    _tamper_json(path, "added_items.json", lambda m: m.update(items=["new"]))
    save_file({"item_repr": np.full((1, 8), 1e20, np.float32)}, path / "added_items.safetensors")
    with pytest.raises(ArtifactError, match="added_items.safetensors: array 'item_repr'.*too large"):
        load_model_dir(path)


def test_serving_path_does_not_import_torch(exported):
    code = ("import sys; import latticerec.serve.app as a, latticerec.serve.artifact as m, "
            "latticerec.serve.service as s; "
            f"r = s.Recommender(m.load_model_dir({str(exported['cb'])!r})); a.create_app(r); "
            "r.add_item.__name__; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC)}, check=True)
    assert out.stdout.strip() == "False"


# -- the endpoints ----------------------------------------------------------------------------------
def test_health_and_page(exported):
    c = client_for(exported["lightgcn"])
    h = c.get("/health").json()
    assert (h["status"], h["model"], h["users"], h["items"]) == ("ok", "lightgcn", 40, 30)
    page = c.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "Add an item" in page.text
    assert c.get("/users?limit=3").json() == {"users": ["u0", "u1", "u2"]}
    assert c.get("/users?prefix=u1&limit=2").json() == {"users": ["u1", "u10"]}
    wrong = c.delete("/items")  # a method the path does not take: JSON 405, as docs/serving.md lists
    assert wrong.status_code == 405 and wrong.json() == {"error": "Method Not Allowed"}
    assert c.get("/no-such-path").status_code == 404


def test_user_recommendations_are_the_exact_top_k(exported):
    path = exported["lightgcn"]
    arrays = load_file(path / "arrays.safetensors")
    c = client_for(path)
    for u in (0, 7, 39):
        scores = arrays["item_repr"] @ arrays["user_repr"][u]
        seen = arrays["train_indices"][arrays["train_indptr"][u]:arrays["train_indptr"][u + 1]]
        masked = scores.copy()
        masked[seen] = -np.inf
        want = [f"item-{i}" for i in np.argsort(-masked, kind="stable")[:5]]
        body = c.get(f"/users/u{u}/recommendations?k=5").json()
        assert body["user"] == f"u{u}" and [it["item"] for it in body["items"]] == want
        assert body["items"][0]["title"] == body["items"][0]["item"].replace("item-", "Title ")
        got = [it["score"] for it in body["items"]]
        np.testing.assert_allclose(got, masked[np.argsort(-masked, kind="stable")[:5]], rtol=1e-5)
        assert got == sorted(got, reverse=True)
        every = c.get(f"/users/u{u}/recommendations?k=30&exclude_seen=false").json()["items"]
        assert len(every) == 30 and {f"item-{i}" for i in seen} <= {it["item"] for it in every}
        assert len(c.get(f"/users/u{u}/recommendations?k=30").json()["items"]) == 30 - len(seen)
        assert [it["item"] for it in c.get(f"/users/u{u}/items").json()["items"]] == \
            [f"item-{i}" for i in seen]


def test_basket_and_similar(exported):
    path = exported["lightgcn"]
    items = load_file(path / "arrays.safetensors")["item_repr"]
    c = client_for(path)
    body = c.post("/recommendations", json={"items": ["item-1", "item-4"], "k": 3}).json()
    scores = items @ items[[1, 4]].mean(0)
    scores[[1, 4]] = -np.inf
    assert [it["item"] for it in body["items"]] == [f"item-{i}" for i in np.argsort(-scores)[:3]]
    sim = c.get("/items/item-2/similar?k=4").json()
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    cos = unit @ unit[2]
    cos[2] = -np.inf
    assert [it["item"] for it in sim["items"]] == [f"item-{i}" for i in np.argsort(-cos)[:4]]
    np.testing.assert_allclose([it["score"] for it in sim["items"]], np.sort(cos)[::-1][:4], rtol=1e-5)


@pytest.mark.parametrize("method, url, body, status, message", [
    ("get", "/users/nobody/recommendations", None, 404, "user 'nobody'"),
    ("get", "/users/u1/items", None, 200, ""),
    ("get", "/users/nobody/items", None, 404, "user 'nobody'"),
    ("get", "/users/u1/recommendations?k=0", None, 422, "k: must be in 1..50"),
    ("get", "/users/u1/recommendations?k=51", None, 422, "k: must be in 1..50"),
    ("get", "/users/u1/recommendations?k=abc", None, 422, "k: expected an integer"),
    ("get", "/users/u1/recommendations?k=2.5", None, 422, "k: expected an integer"),
    ("get", "/users/u1/recommendations?exclude_seen=maybe", None, 422, "exclude_seen"),
    ("get", "/items/nothing/similar", None, 404, "item 'nothing'"),
    ("get", "/items/item-1/similar?k=-3", None, 422, "k: must be"),
    ("get", "/users?limit=0", None, 422, "limit: must be"),
    ("post", "/recommendations", {"items": ["item-1", "zzz"]}, 404, "item 'zzz'"),
    ("post", "/recommendations", {"items": []}, 422, "items: expected a non-empty list"),
    ("post", "/recommendations", {"items": [1, 2]}, 422, "every item id must be a string"),
    ("post", "/recommendations", {"items": ["item-1"], "k": 0}, 422, "k: must be"),
    ("post", "/recommendations", {"items": ["item-1"], "k": "5"}, 422, "k: expected an integer"),
    ("post", "/recommendations", {"items": ["item-1"], "k": True}, 422, "k: expected an integer"),
    ("post", "/recommendations", [1, 2], 422, "body: expected a JSON object"),
    ("post", "/items", {"item": "x", "features": {"image": [1.0]}}, 422, "has no content"),
    ("get", "/no/such/route", None, 404, "Not Found"),
    # an unknown or repeated query parameter is refused, never ignored or resolved by a guess
    ("get", "/users/u1/recommendations?remove_seen=false", None, 422, "remove_seen: unknown query parameter"),
    ("get", "/users/u1/recommendations?k=3&k=5", None, 422, "k: query parameter given more than once"),
    ("get", "/users/u1/recommendations?exclude_seen=1&exclude_seen=0", None, 422, "exclude_seen: query"),
    ("get", "/items/item-1/similar?k=3&exclude_seen=false", None, 422, "exclude_seen: unknown query"),
    ("get", "/users?limit=3&limit=4", None, 422, "limit: query parameter given more than once"),
    ("get", "/users/u1/items?k=3", None, 422, "k: unknown query parameter"),
    ("post", "/recommendations?k=5", {"items": ["item-1"]}, 422, "k: unknown query parameter"),
    # what int() takes but is not a plain integer
    ("get", "/users/u1/recommendations?k=1_0", None, 422, "k: expected an integer"),
    ("get", "/users/u1/recommendations?k=%D9%A3", None, 422, "k: expected an integer"),
    ("get", "/users/u1/recommendations?k=%203", None, 422, "k: expected an integer"),
    ("post", "/recommendations", {"items": ["item-1"], "exclude_seen": False}, 422,
     "body: unknown field 'exclude_seen'"),
])
def test_errors_are_json_with_their_status(exported, method, url, body, status, message):
    c = client_for(exported["lightgcn"], max_k=50)
    r = c.get(url) if method == "get" else c.post(url, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    if message:
        assert message in r.json()["error"]


def test_bad_bodies(exported):
    c = client_for(exported["lightgcn"])
    r = c.post("/recommendations", content=b'{"items": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]
    r = c.post("/recommendations", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert r.status_code == 422
    big = json.dumps({"items": ["item-1"] * 200_000}).encode()
    assert len(big) > 1 << 20
    r = c.post("/recommendations", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "1048576" in r.json()["error"]

    for content, message in ((b"[" * 100_000, "not valid JSON"),  # RecursionError: was a 500
                             (b'{"items": ["item-1"], "k": ' + b"9" * 5000 + b"}", "not valid JSON"),
                             (b'{"items": ["item-1"], "k": 3, "k": 30}', "field 'k' given twice"),
                             (b'{"items": ["item-1"], "items": ["item-2"]}', "field 'items' given twice")):
        r = c.post("/recommendations", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 422 and message in r.json()["error"], r.text

    def chunks():  # no content-length: refused while streaming
        for _ in range(40):
            yield b" " * 65536
    r = c.post("/items", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


# -- new items --------------------------------------------------------------------------------------
def _features(exported, item: int) -> dict[str, list[float]]:
    feats = {m: np.load(exported["data"] / f"{m}_feat.npy") for m in ("image", "text")}
    return {m: f[item].tolist() for m, f in feats.items()}


def test_post_item_places_it_as_the_model_would(exported, tmp_path):
    """CB's representation of a new item with item 5's content is item 5's."""
    path = copy_model(exported, "cb", tmp_path)
    c = client_for(path)
    r = c.post("/items", json={"item": "twin-5", "features": _features(exported, 5)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["item"] == "twin-5" and body["items"] == 31
    assert all(n["item"].startswith("item-") and np.isfinite(n["weight"]) for n in body["neighbours"])
    items = load_file(path / "added_items.safetensors")["item_repr"]
    trained = load_file(path / "arrays.safetensors")["item_repr"]
    np.testing.assert_allclose(items[0], trained[5], atol=1e-5)
    # rankable at once for every user, and among item 5's similar items
    for u in ("u0", "u5"):
        recs = c.get(f"/users/{u}/recommendations?k=31&exclude_seen=false").json()["items"]
        pos = {it["item"]: it["score"] for it in recs}
        assert pos["twin-5"] == pytest.approx(pos["item-5"], abs=1e-5)
    assert c.get("/items/item-5/similar?k=1").json()["items"][0]["item"] == "twin-5"
    assert c.get("/health").json()["items"] == 31
    # 409 on an existing id, trained or added
    for dup in ("twin-5", "item-3"):
        assert c.post("/items", json={"item": dup, "features": _features(exported, 1)}).status_code == 409
    # kept across a restart
    c2 = client_for(path)
    assert c2.get("/health").json()["items"] == 31
    assert c2.get("/items/twin-5/similar?k=1").json()["items"][0]["item"] == "item-5"


@pytest.mark.parametrize("features, message", [  # the message names the modality (and the length)
    ({"image": [1.0] * 8}, "modality 'text'"),
    ({"image": [1.0] * 7, "text": [1.0] * 6}, "modality 'image'"),
    ({"image": [1.0] * 8, "text": [1.0] * 6, "audio": [1.0]}, "modality 'audio'"),
    ({"image": [1.0] * 8, "text": [1.0] * 5 + [float("nan")]}, "modality 'text'"),
    ({"image": [float("inf")] + [1.0] * 7, "text": [1.0] * 6}, "modality 'image'"),
    ({"image": ["a"] * 8, "text": [1.0] * 6}, "modality 'image'"),
    ({"image": [[1.0] * 8], "text": [1.0] * 6}, "modality 'image'"),
    ({"image": "1 2 3", "text": [1.0] * 6}, "modality 'image'"),
    ({"image": [True] + [1.0] * 7, "text": [1.0] * 6}, "modality 'image'"),  # was read as 1.0
    ({"image": [1.0] * 8, "text": [0.0] * 6}, "modality 'text': the feature vector is all zeros"),
    # finite, but the normalisation overflows float32: placed as zeros before
    ({"image": [1e25] * 8, "text": [1e25] * 6}, "the placed representation is all zeros"),
    ([1, 2], "features: expected an object"),
])
def test_post_item_rejects_bad_features(exported, tmp_path, features, message):
    path = copy_model(exported, "cb", tmp_path)
    c = client_for(path)
    body = json.dumps({"item": "new", "features": features})  # NaN/Infinity as Python writes them
    r = c.post("/items", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and message in r.json()["error"], r.text
    if isinstance(features, dict) and "image" in features and len(features["image"]) == 7:
        assert "8" in r.json()["error"]
    assert c.get("/health").json()["items"] == 30 and not (path / "added_items.json").exists()


@pytest.mark.parametrize("item", ["", "   ", "a/b", "x" * 201, 7, None, "tab\there", ".", ".."])
def test_post_item_rejects_bad_ids(exported, tmp_path, item):
    c = client_for(copy_model(exported, "cb", tmp_path))
    r = c.post("/items", json={"item": item, "features": _features(exported, 1)})
    assert r.status_code == 422 and r.json()["error"].startswith("item:")


def test_concurrent_posts_and_gets(exported, tmp_path):
    """Readers never fail or see half an item while writers add 60 items (buffer growth included)."""
    path = copy_model(exported, "cb", tmp_path)
    rec = Recommender(load_model_dir(path), spare=4)
    c = TestClient(create_app(rec))
    errors: list = []
    done = threading.Event()

    def reader():
        while not done.is_set():
            for url in ("/users/u3/recommendations?k=40&exclude_seen=false", "/items/item-2/similar?k=40"):
                r = c.get(url)
                items = r.json().get("items", [])
                if r.status_code != 200 or len({it["item"] for it in items}) != len(items):
                    errors.append(r.text)

    def writer(w):
        for n in range(15):
            r = c.post("/items", json={"item": f"w{w}-{n}", "features": _features(exported, (w + n) % 30)})
            if r.status_code != 201:
                errors.append(r.text)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    assert errors == []
    assert rec.health()["items"] == 90
    again = load_model_dir(path)
    assert sorted(again.added_ids) == sorted(f"w{w}-{n}" for w in range(4) for n in range(15))
    np.testing.assert_allclose(again.added_repr, rec._snap.reprs[30:90][
        [rec.item_pos[i] - 30 for i in again.added_ids]])


# -- HNSW and the command line ---------------------------------------------------------------------
def test_hnsw_index_reports_recall(exported):
    rec = Recommender(load_model_dir(exported["lightgcn"]), index="hnsw")
    h = rec.health()["index"]
    assert h["kind"] == "hnsw" and h["recall@20"] >= 0.95 and h["recall_users"] == 40
    exact = Recommender(load_model_dir(exported["lightgcn"]))
    got, want = rec.recommend_user("u4", 5), exact.recommend_user("u4", 5)
    assert [it["item"] for it in got] == [it["item"] for it in want]
    np.testing.assert_allclose([it["score"] for it in got], [it["score"] for it in want], rtol=1e-5)


def test_hnsw_ef_search_is_tuned_to_a_target_recall():
    from latticerec.serve.artifact import ModelArtifact

    rng = np.random.default_rng(0)
    n_users, n_items = 50, 5000
    art = ModelArtifact(manifest={"model": "random", "fold_in": {"kind": "none"}},
                        user_repr=rng.standard_normal((n_users, 32), dtype=np.float32),
                        item_repr=rng.standard_normal((n_items, 32), dtype=np.float32),
                        train_indptr=np.zeros(n_users + 1, np.int64), train_indices=np.zeros(0, np.int32),
                        user_ids=[str(u) for u in range(n_users)], item_ids=[str(i) for i in range(n_items)])
    loose = Recommender(art, index="hnsw", recall_k=5, hnsw={"m": 8, "ef_construction": 16, "ef_search": 1})
    assert loose.health()["index"]["recall@5"] < 0.99
    tuned = Recommender(art, index="hnsw", recall_k=5,
                        hnsw={"m": 8, "ef_construction": 16, "ef_search": 1, "target_recall": 0.99})
    h = tuned.health()["index"]
    assert 1 < h["ef_search"] < 4096 and h["recall@5"] >= 0.99


def test_recommend_command(exported, capsys):
    assert main(["recommend", "--model", str(exported["cb"]), "--user", "u2", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("top 3 items for user u2 (cb, blocks)") and "Title" in out[1]
    assert main(["recommend", "--run", str(exported["root"] / "cb-run"), "--user", "u2", "-k", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == out
    assert main(["recommend", "--model", str(exported["cb"]), "--user", "nobody"]) == 2
    assert "user 'nobody'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["recommend", "--model", str(exported["cb"]), "--user", "u2", "-k", "0"])
    assert "-k: must be >= 1" in capsys.readouterr().err
    assert main(["recommend", "--user", "u2"]) == 2


def test_serve_command_binds_localhost(exported, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    assert main(["serve", str(exported["cb"]), "--port", "8999", "--max-k", "7"]) == 0
    app, kw = calls[0]
    assert (kw["host"], kw["port"]) == ("127.0.0.1", 8999)
    assert TestClient(app).get("/users/u1/recommendations?k=8").status_code == 422
    with pytest.raises(SystemExit):
        main(["serve", str(exported["cb"]), "--port", "0"])
    assert main(["serve", str(exported["root"] / "nothing")]) == 2


def test_default_k_within_max_k(exported):
    """With --max-k below the default k, a request that gives no k gets --max-k items, not a 422."""
    c = client_for(exported["lightgcn"], max_k=7)
    for r in (c.get("/users/u1/recommendations?exclude_seen=false"), c.get("/items/item-1/similar"),
              c.post("/recommendations", json={"items": ["item-1"]})):
        assert r.status_code == 200 and len(r.json()["items"]) == 7, r.text
    # the page lists 100 user ids: a listing's limit is not a top-k, --max-k does not bound it
    r = c.get("/users?limit=100")
    assert r.status_code == 200 and 7 < len(r.json()["users"]) <= 100, r.text
    assert c.get("/users?limit=1001").status_code == 422
    # the page asks for k within the server's --max-k (from /health), not a fixed 20 and 10
    page = c.get("/").text
    assert "Math.min(10, health.max_k)" in page and "$(\"k\").max = health.max_k" in page


def _random_artifact(n_users=50, n_items=3000, dim=16, seed=0):
    from latticerec.serve.artifact import ModelArtifact

    rng = np.random.default_rng(seed)
    return ModelArtifact(manifest={"model": "random", "fold_in": {"kind": "none"}},
                         user_repr=rng.standard_normal((n_users, dim), dtype=np.float32),
                         item_repr=rng.standard_normal((n_items, dim), dtype=np.float32),
                         train_indptr=np.zeros(n_users + 1, np.int64), train_indices=np.zeros(0, np.int32),
                         user_ids=[str(u) for u in range(n_users)], item_ids=[str(i) for i in range(n_items)])


def test_hnsw_ef_search_tuning_bisects_below_doubling():
    hnsw = {"m": 8, "ef_construction": 16, "ef_search": 1}
    doubled = 1
    while Recommender(_random_artifact(), index="hnsw", recall_k=5,
                      hnsw={**hnsw, "ef_search": doubled}).health()["index"]["recall@5"] < 0.99:
        doubled *= 2
    tuned = Recommender(_random_artifact(), index="hnsw", recall_k=5, hnsw={**hnsw, "target_recall": 0.99})
    assert tuned.index.ef_search <= doubled and tuned.health()["index"]["recall@5"] >= 0.99


def test_hnsw_index_is_kept_beside_the_model_and_checked(tmp_path):
    hnsw = {"m": 8, "ef_construction": 16, "ef_search": 64}

    def start(art=None):
        art = art or _random_artifact()
        art.path = tmp_path
        return Recommender(art, index="hnsw", hnsw=hnsw)

    first = start()
    cached = tmp_path / "hnsw-M8-efc16.faiss"
    assert cached.exists() and not first.health()["index"]["loaded"]
    second = start()
    assert second.health()["index"]["loaded"]
    assert second.recommend_user("3", 10) == first.recommend_user("3", 10)
    data = bytearray(cached.read_bytes())  # an altered byte: refused by its digest, rebuilt
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="SHA-256 differs"):
        assert not start().health()["index"]["loaded"]
    assert start().health()["index"]["loaded"]  # the rebuilt file was written back
    with pytest.warns(UserWarning, match="other items or parameters"):  # another catalogue
        assert not start(_random_artifact(seed=1)).health()["index"]["loaded"]
    cached.write_bytes(cached.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="cached HNSW index not used"):
        start(_random_artifact(seed=1))


def test_hnsw_index_in_a_read_only_model_folder_still_serves(tmp_path, monkeypatch):
    import latticerec.serve.index as index_mod
    from latticerec.errors import OutputError

    def refuse(path, data):
        raise OutputError(f"cannot write {path}: the file system is read-only")

    monkeypatch.setattr(index_mod, "atomic_write_bytes", refuse)
    art = _random_artifact()
    art.path = tmp_path
    with pytest.warns(UserWarning, match="not kept for the next start"):
        rec = Recommender(art, index="hnsw", hnsw={"m": 8, "ef_construction": 16, "ef_search": 64})
    assert len(rec.recommend_user("1", 5)) == 5


def test_export_new_item_cf_option(exported, tmp_path):
    """``--new-item-cf`` chooses how a posted item's collaborative part is placed; both serve it."""
    neighbours = train_and_export(tmp_path, "lattice", exported["data"], epochs=1)
    isolated = tmp_path / "isolated"
    assert main(["export", "--run", str(tmp_path / "lattice-run"), "--out", str(isolated),
                 "--new-item-cf", "isolated"]) == 0
    specs = [json.loads((p / "manifest.json").read_text())["fold_in"] for p in (neighbours, isolated)]
    assert [s["cf_part"] for s in specs] == ["neighbours", "isolated"]
    feats = {"image": [0.5] * 8, "text": [0.25] * 6}
    placed = []
    for path in (neighbours, isolated):
        with client_for(path) as client:
            r = client.post("/items", json={"item": "new", "features": feats})
            assert r.status_code == 201 and r.json()["neighbours"]
            placed.append(client.get("/items/new/similar?k=3").json()["items"])
    assert all(len(p) == 3 for p in placed)
