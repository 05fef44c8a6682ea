"""Dataset readers (MMRec and LATTICE layouts), validation errors, the synthetic set and its split.

Every dataset here is written by hand into ``tmp_path`` in the exact on-disk format, so the expected
matrices are known answers. Bad input must raise :class:`~latticerec.errors.DataError` whose
message names the file and, where there is one, the line.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from latticerec.data import load_dataset, make_synthetic, read_lattice, read_mmrec, split_per_user
from latticerec.data.dataset import check_features, interactions_to_csr, validate_splits
from latticerec.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

HEADER = "userID\titemID\tx_label"

# A small MMRec dataset: 3 users, 5 items; rows are (user, item, x_label).
TOY_ROWS = [
    (0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2),
    (1, 1, 0), (1, 4, 0), (1, 0, 1), (1, 2, 2),
    (2, 3, 0), (2, 4, 1), (2, 1, 2),
]
TOY_TRAIN = [[1, 1, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 1, 0]]
TOY_VALID = [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
TOY_TEST = [[0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [0, 1, 0, 0, 0]]

# The same interactions in the LATTICE layout.
TOY_LATTICE = {
    "train": {"0": [0, 1], "1": [1, 4], "2": [3]},
    "valid": {"0": [2], "1": [0], "2": [4]},
    "test": {"0": [3], "1": [2], "2": [1]},
}
LATTICE_FILES = {"train": "train.json", "valid": "val.json", "test": "test.json"}


# ----------------------------------------------------------------------------- helpers


def write_inter(folder: Path, lines: list[str] | None = None, *, header: str = HEADER,
                name: str = "toy", newline: str = "\n", tail: str = "\n") -> Path:
    """Write ``<name>.inter``: ``header`` then ``lines`` (default: TOY_ROWS); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    if lines is None:
        lines = ["\t".join(map(str, r)) for r in TOY_ROWS]
    path = folder / f"{name}.inter"
    path.write_bytes((newline.join([header, *lines]) + tail).encode("utf-8"))
    return path


def rows_to_lines(rows) -> list[str]:
    return ["\t".join(map(str, r)) for r in rows]


def write_feat(folder: Path, modality: str, arr) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{modality}_feat.npy"
    np.save(path, arr)
    return path


def toy_features(n_items: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.normal(size=(n_items, 4)).astype(np.float16),
        "text": rng.normal(size=(n_items, 3)).astype(np.float32),
    }


def write_lattice(folder: Path, splits: dict | None = None,
                  raw: dict[str, str] | None = None) -> Path:
    """Write ``5-core/{train,val,test}.json``; ``raw`` overrides a split's file text verbatim."""
    splits = TOY_LATTICE if splits is None else splits
    core = folder / "5-core"
    core.mkdir(parents=True, exist_ok=True)
    for split, fname in LATTICE_FILES.items():
        text = (raw or {}).get(split)
        if text is None:
            text = json.dumps(splits[split])
        (core / fname).write_text(text, encoding="utf-8")
    return folder


def write_knn(folder: Path, **graphs) -> Path:
    path = folder / "item_knn5.npz"
    np.savez(path, **graphs)
    return path


def assert_toy_splits(ds) -> None:
    for split, expected in (("train", TOY_TRAIN), ("valid", TOY_VALID), ("test", TOY_TEST)):
        mat = ds.split(split)
        assert isinstance(mat, sp.csr_matrix)
        assert mat.dtype == np.float32
        assert mat.has_sorted_indices
        np.testing.assert_array_equal(mat.toarray(), np.asarray(expected, dtype=np.float32))


def data_error(match_all: list[str], fn, *args):
    """Call ``fn(*args)``; expect a DataError whose message contains every part of ``match_all``."""
    with pytest.raises(DataError) as info:
        fn(*args)
    msg = str(info.value)
    for part in match_all:
        assert part in msg, f"{part!r} not in message {msg!r}"
    return msg


# ----------------------------------------------------------------------------- MMRec layout


def test_mmrec_contents_and_features(tmp_path):
    feats = toy_features()
    write_inter(tmp_path)
    for m, arr in feats.items():
        write_feat(tmp_path, m, arr)
    ds = read_mmrec(tmp_path)
    assert ds.name == "toy"
    assert (ds.n_users, ds.n_items) == (3, 5)
    assert_toy_splits(ds)
    assert sorted(ds.features) == ["image", "text"]
    for m, arr in feats.items():
        assert ds.features[m].dtype == np.float32
        assert ds.features[m].shape == arr.shape
        np.testing.assert_array_equal(ds.features[m], arr.astype(np.float32))
    assert ds.item_graphs == {}
    assert ds.summary()["train_interactions"] == 5


def test_mmrec_without_features_counts_items_from_ids(tmp_path):
    write_inter(tmp_path)
    ds = read_mmrec(tmp_path)
    assert (ds.n_users, ds.n_items) == (3, 5)
    assert ds.features == {}
    assert_toy_splits(ds)


def test_mmrec_item_count_follows_feature_rows(tmp_path):
    """Items without interactions still exist when the feature files have rows for them."""
    write_inter(tmp_path)
    write_feat(tmp_path, "image", np.ones((7, 2), np.float32))
    ds = read_mmrec(tmp_path)
    assert ds.n_items == 7
    assert ds.train.shape == ds.valid.shape == ds.test.shape == (3, 7)
    assert ds.train[:, 5:].nnz == 0


def test_mmrec_extra_columns_in_any_order(tmp_path):
    header = "userID\titemID\trating\ttimestamp\tx_label"
    lines = [f"{u}\t{i}\t{(u + i) % 5 + 1}\t{1_600_000_000 + 7 * u + i}\t{lab}"
             for u, i, lab in TOY_ROWS]
    write_inter(tmp_path, lines, header=header)
    ds = read_mmrec(tmp_path)
    assert_toy_splits(ds)
    # the label column may come first, and RecBole-style typed headers are understood
    other = tmp_path / "other"
    lines = [f"{lab}\t{i}\t{u}" for u, i, lab in TOY_ROWS]
    write_inter(other, lines, header="x_label:float\titemID:token\tuserID:token")
    assert_toy_splits(read_mmrec(other))


def test_mmrec_crlf_and_blank_trailing_lines(tmp_path):
    write_inter(tmp_path, newline="\r\n", tail="\r\n\r\n\r\n  \r\n")
    write_feat(tmp_path, "image", np.zeros((5, 2), np.float16))
    ds = read_mmrec(tmp_path)
    assert (ds.n_users, ds.n_items) == (3, 5)
    assert_toy_splits(ds)


def test_mmrec_blank_line_in_the_middle_keeps_line_numbers(tmp_path):
    lines = rows_to_lines(TOY_ROWS[:3]) + [""] + ["0\tbad\t0"]
    write_inter(tmp_path, lines)
    # header = line 1, three rows = lines 2-4, blank = line 5, bad row = line 6
    data_error(["toy.inter", "line 6", "'bad'"], read_mmrec, tmp_path)


def test_mmrec_two_inter_files_is_an_error(tmp_path):
    write_inter(tmp_path, name="a")
    write_inter(tmp_path, name="b")
    data_error(["a.inter", "b.inter", "exactly one"], read_mmrec, tmp_path)


# bad .inter contents: (rows after the header, substrings of the message). Row k is on line k + 2.
GOOD = rows_to_lines(TOY_ROWS)
BAD_INTER = {
    "non-integer item id": (GOOD[:1] + ["0\tabc\t0"] + GOOD[2:], ["line 3", "item id", "'abc'"]),
    "fractional user id": (GOOD[:1] + ["1.5\t1\t0"] + GOOD[2:], ["line 3", "user id", "'1.5'"]),
    "negative item id": (GOOD[:1] + ["0\t-1\t0"] + GOOD[2:], ["line 3", "item id -1", "negative"]),
    "negative user id": (GOOD[:1] + ["-2\t1\t0"] + GOOD[2:], ["line 3", "user id -2", "negative"]),
    "too few fields": (GOOD[:1] + ["0\t1"] + GOOD[2:], ["line 3", "expected 3", "got 2"]),
    "too many fields": (GOOD[:1] + ["0\t1\t0\t9"] + GOOD[2:], ["line 3", "expected 3", "got 4"]),
    "x_label 3": (GOOD[:1] + ["0\t1\t3"] + GOOD[2:], ["line 3", "x_label 3", "0 (train)"]),
    "x_label -1": (GOOD[:1] + ["0\t1\t-1"] + GOOD[2:], ["line 3", "x_label -1", "negative"]),
    "x_label word": (GOOD[:1] + ["0\t1\ttrain"] + GOOD[2:], ["line 3", "x_label", "'train'"]),
    "duplicate within a split": (GOOD + ["1\t4\t0"], ["1 duplicate", "user 1 item 4",
                                                     "lines 7 and 13"]),
    "same pair in train and test": (GOOD + ["0\t1\t2"], ["duplicate", "user 0 item 1",
                                                        "lines 3 and 13"]),
    "no test rows": ([r for r in GOOD if not r.endswith("\t2")], ["test split is empty"]),
    "no valid rows": ([r for r in GOOD if not r.endswith("\t1")], ["valid split is empty"]),
    "header only": ([], ["no interactions after the header"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INTER))
def test_mmrec_bad_rows(tmp_path, case):
    lines, parts = BAD_INTER[case]
    write_inter(tmp_path, lines)
    data_error(["toy.inter", *parts], read_mmrec, tmp_path)


def _random_inter(path: Path, n: int, seed: int = 0, bom: bool = False, final_newline: bool = True):
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 2**31 - 1, n), rng.integers(0, 10**rng.integers(1, 10, n))
    labels = rng.integers(0, 3, n)
    lines = [f"{r:.1f}\t{i:0{w}d}\t{t}\t{lab}\t{u}" for u, i, lab, r, t, w in zip(
        users, items, labels, rng.random(n) * 5, rng.integers(0, 2**40, n), rng.integers(1, 4, n),
        strict=True)]
    text = "rating:float\titemID:token\ttimestamp\tx_label\tuserID:token\n" + "\n".join(lines)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (text + ("\n" if final_newline else "")).encode())
    return users, items, labels


@pytest.mark.parametrize("bom, final_newline, block",
                         [(False, True, 64), (True, False, 1000), (False, True, 10**6)])
def test_the_vectorised_inter_reader_equals_the_line_reader(tmp_path, monkeypatch, bom, final_newline, block):
    from latticerec.data import readers

    path = tmp_path / "r.inter"
    users, items, labels = _random_inter(path, 3000, bom=bom, final_newline=final_newline)
    monkeypatch.setattr(readers, "INTER_BLOCK", block)  # many blocks, each cut at a line end
    fast = readers.read_inter_file(path)
    assert readers._read_inter_fast(path.read_bytes(), (4, 1, 3), 5, path.read_bytes().find(b"\n") + 1) \
        is not None or bom  # the plain file takes the vectorised path
    monkeypatch.setattr(readers, "_read_inter_fast", lambda *a: None)
    slow = readers.read_inter_file(path)
    for a, b, want in zip(fast, slow, (users, items, labels, np.arange(2, 3002)), strict=True):
        assert a.dtype == np.int64 and np.array_equal(a, b) and np.array_equal(a, want)


@pytest.mark.parametrize("row, needle", [("2147483648\t1\t0", "user id 2147483648 is too large"),
                                         ("0\t99999999999\t0", "item id 99999999999 is too large"),
                                         ("0\t1\t+0", "x_label '+0'"), ("0\t1\t0\t", "got 4")])
def test_ids_the_vectorised_reader_cannot_take_are_named_by_line(tmp_path, row, needle):
    write_inter(tmp_path, GOOD[:1] + [row] + GOOD[2:])
    data_error(["toy.inter", "line 3", needle], read_mmrec, tmp_path)


def test_spaces_around_an_id_are_still_read_by_the_line_reader(tmp_path):
    write_inter(tmp_path, GOOD[:1] + [" 2\t2 \t 0 "] + GOOD[1:])  # a new train pair, spaced
    ds = read_mmrec(tmp_path)
    assert ds.train.nnz == sum(r.endswith("\t0") for r in GOOD) + 1 and ds.train[2, 2] == 1


def test_mmrec_line_numbers_with_crlf(tmp_path):
    write_inter(tmp_path, GOOD[:1] + ["0\t1\t7"] + GOOD[2:], newline="\r\n")
    data_error(["toy.inter", "line 3", "x_label 7"], read_mmrec, tmp_path)


@pytest.mark.parametrize("header", ["user\titem", "uid\titemID\tx_label", "userID\titemID\tfold"])
def test_mmrec_header_missing_a_column(tmp_path, header):
    write_inter(tmp_path, ["0\t1\t0"], header=header)
    data_error(["toy.inter", "line 1", "header"], read_mmrec, tmp_path)


def test_mmrec_empty_file(tmp_path):
    (tmp_path / "toy.inter").write_text("")
    data_error(["toy.inter", "line 1", "missing header"], read_mmrec, tmp_path)


def test_mmrec_not_utf8(tmp_path):
    (tmp_path / "toy.inter").write_bytes(HEADER.encode() + b"\n0\t\xff\xfe\t0\n")
    data_error(["toy.inter", "UTF-8"], read_mmrec, tmp_path)


def test_mmrec_item_id_beyond_feature_rows(tmp_path):
    # items 3 and 4 have no feature row; the first such row is (0, 3, 2) on line 5
    write_inter(tmp_path)
    write_feat(tmp_path, "image", np.zeros((3, 2), np.float32))
    data_error(["toy.inter", "line 5", "item id 3 out of range", "3 rows", "4 such lines"],
               read_mmrec, tmp_path)


def test_mmrec_feature_files_disagree_on_rows(tmp_path):
    write_inter(tmp_path)
    write_feat(tmp_path, "image", np.zeros((5, 2), np.float32))
    write_feat(tmp_path, "text", np.zeros((6, 2), np.float32))
    data_error([str(tmp_path), "disagree", "image_feat.npy: 5", "text_feat.npy: 6"],
               read_mmrec, tmp_path)


BAD_FEATURES = {
    "nan": (np.array([[0, 1], [np.nan, 0], [1, 1], [0, 0], [2, 2]], np.float32),
            ["NaN or inf", "1 feature rows", "first item ids: 1"]),
    "inf": (np.array([[0, 1], [0, 0], [1, 1], [0, np.inf], [2, -np.inf]], np.float16),
            ["NaN or inf", "2 feature rows", "first item ids: 3, 4"]),
    "1-D": (np.zeros(5, np.float32), ["2-D", "(5,)"]),
    "3-D": (np.zeros((5, 2, 2), np.float32), ["2-D", "(5, 2, 2)"]),
    "strings": (np.array([["a"], ["b"], ["c"], ["d"], ["e"]]), ["numeric"]),
    # complex features lost their imaginary part and timedelta ones their unit, with no error
    "complex": (np.ones((5, 2), np.complex64) * 1j, ["numeric", "complex64"]),
    "timedelta": (np.ones((5, 2), "m8[s]"), ["numeric", "timedelta64"]),
    # zero columns loaded, then training ended in a TypeError traceback (hashing the dataset)
    "no columns": (np.zeros((5, 0), np.float32), ["0 columns", "(5, 0)"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FEATURES))
def test_mmrec_bad_feature_array(tmp_path, case):
    arr, parts = BAD_FEATURES[case]
    write_inter(tmp_path)
    write_feat(tmp_path, "image", arr)
    data_error(["image_feat.npy", "'image'", *parts], read_mmrec, tmp_path)


def test_mmrec_unreadable_feature_file(tmp_path):
    write_inter(tmp_path)
    (tmp_path / "image_feat.npy").write_bytes(b"this is not a numpy file")
    data_error(["image_feat.npy", "cannot read"], read_mmrec, tmp_path)


def test_check_features_row_count_and_dtype():
    out = check_features({"image": np.ones((4, 3), np.float16)}, 4, "somewhere")
    assert out["image"].dtype == np.float32
    data_error(["somewhere", "'image'", "4 feature rows", "5 items"],
               check_features, {"image": np.ones((4, 3))}, 5, "somewhere")


def test_users_without_training_interactions_warn_with_count(tmp_path):
    # user 2 has no interactions at all, user 3 only valid/test: 2 of 4 users never trained
    rows = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (1, 1, 0), (1, 2, 2), (3, 0, 1), (3, 3, 2)]
    write_inter(tmp_path, rows_to_lines(rows))
    with pytest.warns(UserWarning, match=r"2 of 4 users have no training interactions"):
        ds = read_mmrec(tmp_path)
    assert ds.n_users == 4
    assert np.diff(ds.train.indptr).tolist() == [2, 1, 0, 0]


def test_no_warning_when_every_user_trains(tmp_path):
    write_inter(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_mmrec(tmp_path)


# ----------------------------------------------------------------------------- LATTICE layout


def test_lattice_contents_features_and_graphs(tmp_path):
    write_lattice(tmp_path)
    feats = toy_features()
    for m, arr in feats.items():
        write_feat(tmp_path, m, arr)
    image_pairs = np.array([[0, 0], [0, 1], [1, 0], [4, 3]], dtype=np.int32)
    text_pairs = np.array([[2, 3], [3, 2]], dtype=np.int64)
    write_knn(tmp_path, image=image_pairs, text=text_pairs)
    ds = read_lattice(tmp_path)
    assert ds.name == tmp_path.name
    assert (ds.n_users, ds.n_items) == (3, 5)
    assert_toy_splits(ds)
    for m, arr in feats.items():
        assert ds.features[m].dtype == np.float32
        np.testing.assert_array_equal(ds.features[m], arr.astype(np.float32))
    assert sorted(ds.item_graphs) == ["image", "text"]
    assert ds.item_graphs["image"].dtype == np.int64
    np.testing.assert_array_equal(ds.item_graphs["image"], image_pairs)
    np.testing.assert_array_equal(ds.item_graphs["text"], text_pairs)
    assert ds.summary()["item_graphs"] == {"image": 4, "text": 2}


def test_lattice_without_features_or_graphs(tmp_path):
    write_lattice(tmp_path)
    ds = read_lattice(tmp_path)
    assert (ds.n_users, ds.n_items) == (3, 5)
    assert ds.features == {} and ds.item_graphs == {}
    assert_toy_splits(ds)


def test_lattice_users_and_items_from_all_splits(tmp_path):
    """The largest user/item id of any split sizes the matrices (here both only occur in test)."""
    splits = {"train": {"0": [0, 1], "1": [1]}, "valid": {"0": [2], "1": [0]},
              "test": {"0": [3], "1": [2], "4": [6]}}
    write_lattice(tmp_path, splits)
    with pytest.warns(UserWarning, match=r"3 of 5 users have no training interactions"):
        ds = read_lattice(tmp_path)
    assert (ds.n_users, ds.n_items) == (5, 7)
    assert ds.test[4].indices.tolist() == [6]


def test_lattice_empty_user_list_is_allowed(tmp_path):
    splits = {"train": {"0": [0, 1], "1": [2]}, "valid": {"0": [2], "1": []},
              "test": {"0": [3], "1": [0]}}
    write_lattice(tmp_path, splits)
    ds = read_lattice(tmp_path)
    assert ds.valid.nnz == 1 and ds.valid[1].nnz == 0


def test_lattice_invalid_json_names_file_and_line(tmp_path):
    bad = '{\n  "0": [2],\n  "1": [0,,1],\n  "2": [4]\n}\n'
    write_lattice(tmp_path, raw={"valid": bad})
    data_error(["val.json", "line 3", "invalid JSON"], read_lattice, tmp_path)


BAD_LATTICE = {
    "non-integer user key": ("train", '{"0": [0, 1], "u1": [1, 4], "2": [3]}',
                             ["train.json", "entry 2", "'u1'", "not an integer"]),
    "fractional user key": ("test", '{"0": [3], "1.5": [2]}', ["test.json", "entry 2", "'1.5'"]),
    "negative user key": ("valid", '{"0": [2], "-1": [0]}',
                          ["val.json", "entry 2", "user id -1", "negative"]),
    "string item id": ("train", '{"0": [0, "1"], "1": [1, 4], "2": [3]}',
                       ["train.json", "entry 1 (user 0)", "item ids"]),
    "float item id": ("train", '{"0": [0, 1], "1": [1, 4.5], "2": [3]}',
                      ["train.json", "entry 2 (user 1)", "item ids"]),
    "negative item id": ("test", '{"0": [3], "1": [2], "2": [-1]}',
                         ["test.json", "entry 3 (user 2)", "non-negative"]),
    "items not a list": ("train", '{"0": [0, 1], "1": 4, "2": [3]}',
                         ["train.json", "entry 2 (user 1)", "list"]),
    "not an object": ("valid", "[[2], [0], [4]]", ["val.json", "JSON object"]),
    "duplicate item in a list": ("train", '{"0": [0, 1], "1": [1, 4, 1], "2": [3]}',
                                 ["train.json", "entry 2 (user 1)", "item 1 listed twice"]),
    "empty test split": ("test", "{}", ["5-core", "test split is empty"]),
    "test split of empty lists": ("test", '{"0": [], "1": []}', ["test split is empty"]),
    "same pair in train and test": ("test", '{"0": [3], "1": [2], "2": [3]}',
                                    ["5-core", "both train and test", "user 2 item 3"]),
    "same pair in valid and test": ("test", '{"0": [2], "1": [2], "2": [1]}',
                                    ["5-core", "both valid and test", "user 0 item 2"]),
}


@pytest.mark.parametrize("case", sorted(BAD_LATTICE))
def test_lattice_bad_split(tmp_path, case):
    split, text, parts = BAD_LATTICE[case]
    write_lattice(tmp_path, raw={split: text})
    data_error(parts, read_lattice, tmp_path)


def test_lattice_missing_split_file(tmp_path):
    write_lattice(tmp_path)
    (tmp_path / "5-core" / "val.json").unlink()
    data_error(["val.json", "missing split file"], read_lattice, tmp_path)


def test_lattice_item_beyond_feature_rows(tmp_path):
    write_lattice(tmp_path)
    write_feat(tmp_path, "image", np.zeros((4, 2), np.float32))
    # item 4 is in train.json entry 2 (user 1)
    data_error(["train.json", "entry 2 (user 1)", "item id 4 out of range", "4 rows"],
               read_lattice, tmp_path)


def test_lattice_feature_files_disagree(tmp_path):
    write_lattice(tmp_path)
    write_feat(tmp_path, "image", np.zeros((5, 2), np.float32))
    write_feat(tmp_path, "text", np.zeros((9, 2), np.float32))
    data_error(["disagree", "image_feat.npy: 5", "text_feat.npy: 9"], read_lattice, tmp_path)


def test_lattice_nan_features(tmp_path):
    write_lattice(tmp_path)
    arr = np.zeros((5, 2), np.float32)
    arr[2, 1] = np.nan
    write_feat(tmp_path, "text", arr)
    data_error(["text_feat.npy", "NaN or inf", "first item ids: 2"], read_lattice, tmp_path)


BAD_GRAPHS = {
    "three columns": np.zeros((4, 3), np.int64),
    "one-dimensional": np.arange(6, dtype=np.int64),
    "float pairs": np.array([[0.0, 1.0], [1.0, 2.0]]),
    "three-dimensional": np.zeros((2, 2, 2), np.int64),
}


@pytest.mark.parametrize("case", sorted(BAD_GRAPHS))
def test_lattice_malformed_item_knn_array(tmp_path, case):
    write_lattice(tmp_path)
    write_knn(tmp_path, image=np.array([[0, 1]]), text=BAD_GRAPHS[case])
    data_error(["item_knn5.npz", "graph 'text'", "(E, 2) integer array"], read_lattice, tmp_path)


@pytest.mark.parametrize("pairs", [[[0, 1], [2, 5]], [[0, 1], [-1, 2]]],
                         ids=["too-big", "negative"])
def test_lattice_item_knn_ids_out_of_range(tmp_path, pairs):
    write_lattice(tmp_path)
    write_knn(tmp_path, image=np.array(pairs, np.int64))
    data_error(["item_knn5.npz", "graph 'image'", "[0, 5)"], read_lattice, tmp_path)


def test_validate_splits_directly():
    tr = interactions_to_csr(np.array([0, 1]), np.array([0, 1]), 2, 3)
    te = interactions_to_csr(np.array([1]), np.array([1]), 2, 3)
    va = interactions_to_csr(np.array([0]), np.array([2]), 2, 3)
    data_error(["here", "1 (user, item) pairs", "both train and test", "user 1 item 1"],
               validate_splits, tr, va, te, "here")
    empty = sp.csr_matrix((2, 3), dtype=np.float32)
    data_error(["here", "valid split is empty"], validate_splits, tr, empty, te, "here")


# ----------------------------------------------------------------------------- load_dataset


def test_load_dataset_detects_mmrec(tmp_path):
    write_inter(tmp_path)
    write_feat(tmp_path, "audio", np.ones((5, 2), np.float16))
    for spec in (tmp_path, str(tmp_path), tmp_path / "toy.inter", str(tmp_path / "toy.inter")):
        ds = load_dataset(spec)
        assert ds.name == "toy"
        assert list(ds.features) == ["audio"]
        assert_toy_splits(ds)


def test_load_dataset_detects_lattice(tmp_path):
    write_lattice(tmp_path)
    write_knn(tmp_path, image=np.array([[0, 1], [1, 0]]))
    ds = load_dataset(tmp_path)
    assert ds.name == tmp_path.name
    assert list(ds.item_graphs) == ["image"]
    assert_toy_splits(ds)


def test_load_dataset_unknown_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "image_feat.npy").write_bytes(b"")
    data_error([str(tmp_path), "unknown dataset layout"], load_dataset, tmp_path)


def test_load_dataset_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    data_error([str(missing), "not found"], load_dataset, missing)
    data_error(["nowhere.inter", "not found"], load_dataset, tmp_path / "nowhere.inter")


def test_load_dataset_plain_file_is_not_a_dataset(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("userID,itemID\n")
    data_error(["data.csv", "expected a dataset folder"], load_dataset, f)


def test_load_dataset_synthetic_word():
    ds = load_dataset("synthetic", n_users=60, n_items=40, seed=3)
    assert ds.name == "synthetic"
    assert (ds.n_users, ds.n_items) == (60, 40)


# ----------------------------------------------------------------------------- synthetic data

SMALL = {"n_users": 300, "n_items": 200}


def _same_dataset(a, b) -> bool:
    mats = all((a.split(s) != b.split(s)).nnz == 0 for s in ("train", "valid", "test"))
    feats = a.features.keys() == b.features.keys() and all(
        np.array_equal(a.features[m], b.features[m]) for m in a.features)
    return mats and feats


def test_synthetic_is_deterministic_per_seed():
    a = make_synthetic(**SMALL, seed=7)
    b = make_synthetic(**SMALL, seed=7)
    c = make_synthetic(**SMALL, seed=8)
    assert _same_dataset(a, b)
    assert not _same_dataset(a, c)
    assert (a.train != c.train).nnz > 0
    assert not np.array_equal(a.features["image"], c.features["image"])


def test_synthetic_structure():
    ds = make_synthetic(**SMALL, dims={"image": 12, "text": 5, "audio": 3}, seed=1)
    assert (ds.n_users, ds.n_items) == (300, 200)
    assert {m: f.shape for m, f in ds.features.items()} == {
        "image": (200, 12), "text": (200, 5), "audio": (200, 3)}
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in ds.features.values())
    per_split = {s: np.diff(ds.split(s).indptr) for s in ("train", "valid", "test")}
    total = sum(per_split.values())
    many = total >= 3
    assert many.all()                                   # at least 5 interactions per user
    assert (per_split["valid"][many] >= 1).all()
    assert (per_split["test"][many] >= 1).all()
    assert (per_split["train"] >= 1).all()
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert ds.split(a).multiply(ds.split(b)).nnz == 0, f"pair in both {a} and {b}"
    for s in ("train", "valid", "test"):
        assert set(np.unique(ds.split(s).data).tolist()) == {1.0}


def test_synthetic_default_size_has_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = make_synthetic()
    assert (ds.n_users, ds.n_items) == (1500, 800)
    assert all(f.shape[0] == 800 for f in ds.features.values())


def test_synthetic_content_predicts_behaviour():
    ds = make_synthetic(**SMALL, seed=0)
    feat = ds.features["image"].astype(np.float64)
    feat /= np.linalg.norm(feat, axis=1, keepdims=True)
    # sum over users of the cosines of all pairs of distinct train items of that user:
    # (|sum of the user's unit vectors|^2 - n_u) / 2, over n_u (n_u - 1) / 2 pairs
    sums = ds.train.astype(np.float64) @ feat
    n = np.diff(ds.train.indptr).astype(np.float64)
    co_consumed = ((sums**2).sum(axis=1) - n).sum() / (n * (n - 1)).sum()
    rng = np.random.default_rng(123)
    i, j = rng.integers(0, ds.n_items, size=(2, 20000))
    keep = i != j
    random_pairs = float((feat[i[keep]] * feat[j[keep]]).sum(axis=1).mean())
    assert co_consumed > random_pairs + 0.08, (co_consumed, random_pairs)


# ----------------------------------------------------------------------------- split_per_user


def _split_counts(users, labels):
    return {int(u): tuple(int(((users == u) & (labels == k)).sum()) for k in range(3))
            for u in np.unique(users)}


def test_split_per_user_counts():
    users = np.repeat([0, 1, 2, 3, 4], [20, 5, 2, 3, 1])
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(users))
    users = users[perm]
    items = np.arange(len(users))
    labels = split_per_user(users, items, np.random.default_rng(42))
    assert labels.shape == users.shape
    assert set(np.unique(labels).tolist()) <= {0, 1, 2}
    assert _split_counts(users, labels) == {
        0: (16, 2, 2), 1: (3, 1, 1), 2: (2, 0, 0), 3: (1, 1, 1), 4: (1, 0, 0)}


def test_split_per_user_fractions_for_large_users():
    users = np.repeat([0, 1], [100, 10])
    labels = split_per_user(users, np.arange(110), np.random.default_rng(0),
                            valid_frac=0.2, test_frac=0.05)
    assert _split_counts(users, labels) == {0: (75, 20, 5), 1: (7, 2, 1)}


def test_split_per_user_is_deterministic_and_random():
    users = np.repeat(np.arange(4), 20)
    items = np.arange(len(users))
    a = split_per_user(users, items, np.random.default_rng(5))
    b = split_per_user(users, items, np.random.default_rng(5))
    c = split_per_user(users, items, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # the held-out items are not simply the first or last ones of each user
    held = [np.flatnonzero((users == u) & (a > 0)) - 20 * u for u in range(4)]
    assert any(set(h.tolist()) not in ({0, 1, 2, 3}, {16, 17, 18, 19}) for h in held)


# ----------------------------------------------------------------------------- real data


def _real(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {path} is absent (tests read ../shared/data beside the repo)")
    return path


def test_real_tiktok():
    path = _real("tiktok")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = load_dataset(path)
        # same answer through the path of the .inter file
        via_inter = load_dataset(path / "tiktok.inter")
    assert (ds.n_users, ds.n_items) == (9308, 6710)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (59541, 3051, 6130)
    assert sorted(ds.features) == ["audio", "image"]
    for m in ("image", "audio"):
        assert ds.features[m].shape == (6710, 128)
        assert ds.features[m].dtype == np.float32
    assert (via_inter.train != ds.train).nnz == 0


def test_real_baby():
    path = _real("baby")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = load_dataset(path)
    assert (ds.n_users, ds.n_items) == (19445, 7050)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (119674, 20559, 20559)
    assert ds.features == {}
    assert {"image", "text"} <= set(ds.item_graphs)
    for g in ("image", "text"):
        pairs = ds.item_graphs[g]
        assert pairs.ndim == 2 and pairs.shape[1] == 2 and pairs.shape[0] > 0
        assert pairs.min() >= 0 and pairs.max() < 7050


# ----------------------------------------------------------------------------- known bugs
# Each test states the intended behaviour and fails today for the reason given (``raises`` pins the
# current failure, so any other failure is reported as a real error).


@pytest.mark.parametrize("content", ["garbage", "object-array"])
def test_corrupt_item_knn_file_is_a_data_error(tmp_path, content):
    write_lattice(tmp_path)
    path = tmp_path / "item_knn5.npz"
    if content == "garbage":
        path.write_bytes(b"this is not a zip archive")
    else:
        np.savez(path, image=np.array([[0, 1], None], dtype=object))
    data_error(["item_knn5.npz"], read_lattice, tmp_path)


def test_scalar_feature_file_beside_another_is_a_data_error(tmp_path):
    write_inter(tmp_path)
    write_feat(tmp_path, "image", np.float32(1.0))
    write_feat(tmp_path, "text", np.zeros((5, 2), np.float32))
    data_error(["image_feat.npy"], read_mmrec, tmp_path)


def test_lattice_duplicate_user_key_is_a_data_error(tmp_path):
    write_lattice(tmp_path, raw={"train": '{"0": [0, 1], "1": [1, 4], "0": [4], "2": [3]}'})
    data_error(["train.json", "'0'"], read_lattice, tmp_path)


def test_lattice_boolean_item_ids_are_a_data_error(tmp_path):
    write_lattice(tmp_path, raw={"train": '{"0": [true, false], "1": [1, 4], "2": [3]}'})
    data_error(["train.json", "entry 1"], read_lattice, tmp_path)


def test_mmrec_header_with_byte_order_mark(tmp_path):
    write_inter(tmp_path, header="\ufeff" + HEADER)
    assert_toy_splits(read_mmrec(tmp_path))


# ----------------------------------------------------------------------------- ids and file kinds

BAD_IDS = {
    "scientific": ("1e1", "'1e1' is not an integer id"),
    "underscore": ("1_9", "'1_9' is not an integer id"),
    "huge scientific": ("1e12", "'1e12' is not an integer id"),
    "float with zero": ("2.0", "'2.0' is not an integer id"),
    "plus sign": ("+2", "'+2' is not an integer id"),
    "unicode digits": ("\u0661", "is not an integer id"),
    "beyond int32": (str(2**31), "too large"),
}


@pytest.mark.parametrize("case", sorted(BAD_IDS))
@pytest.mark.parametrize("column", ["user", "item"])
def test_mmrec_ids_are_plain_decimal_digits(tmp_path, case, column):
    token, msg = BAD_IDS[case]
    row = f"{token}\t1\t0" if column == "user" else f"0\t{token}\t0"
    write_inter(tmp_path, GOOD[:1] + [row] + GOOD[2:])
    data_error(["toy.inter", "line 3", f"{column} id", msg], read_mmrec, tmp_path)


@pytest.mark.parametrize("column", ["user", "item"])
def test_mmrec_an_id_far_beyond_the_others_is_a_clear_error_not_a_memory_error(tmp_path, column):
    # 10**12 would ask for a table of 10**12 rows: refused by name, file and line
    big = "1000000000"
    row = f"{big}\t1\t0" if column == "user" else f"0\t{big}\t0"
    write_inter(tmp_path, GOOD[:1] + [row] + GOOD[2:])
    data_error(["toy.inter", "line 3", f"{column} id {big} is far beyond", "renumber"],
               read_mmrec, tmp_path)


def test_moderately_sparse_ids_are_still_read(tmp_path):
    write_inter(tmp_path, GOOD + ["999\t1\t0"])  # a gap, but a small table
    with pytest.warns(UserWarning, match="996 of 1000 users have no training interactions"):
        assert read_mmrec(tmp_path).n_users == 1000


@pytest.mark.parametrize("key,msg", [("1_9", "'1_9' is not an integer id"),
                                     ("1e1", "'1e1' is not an integer id"),
                                     ("1000000000", "user id 1000000000 is far beyond")])
def test_lattice_user_keys_are_plain_decimal_digits(tmp_path, key, msg):
    splits = {s: dict(v) for s, v in TOY_LATTICE.items()}
    splits["train"][key] = [0]
    write_lattice(tmp_path, splits)
    data_error(["train.json", msg], read_lattice, tmp_path)


def test_an_npz_archive_named_npy_is_a_data_error(tmp_path):
    write_inter(tmp_path)
    np.savez(tmp_path / "image_feat.npz", image=np.zeros((5, 2), np.float32))
    (tmp_path / "image_feat.npz").rename(tmp_path / "image_feat.npy")
    data_error(["image_feat.npy", "is a .npz archive, expected a .npy array"], read_mmrec, tmp_path)


def test_an_npy_array_named_npz_is_a_data_error(tmp_path):
    write_lattice(tmp_path)
    with open(tmp_path / "item_knn5.npz", "wb") as fh:
        np.save(fh, np.array([[0, 1], [1, 0]]))
    data_error(["item_knn5.npz", "is a .npy array, expected a .npz archive"], read_lattice, tmp_path)


def test_load_dataset_errors_through_the_cli(tmp_path, capsys):
    from latticerec.cli import main

    write_inter(tmp_path / "d", GOOD[:1] + ["1e12\t1\t0"] + GOOD[2:])
    assert main(["train", "--model", "mf", "--data", str(tmp_path / "d"), "--quiet",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "toy.inter, line 3: user id '1e12' is not an integer id" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- review: files as found


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_an_npy_header_declaring_a_huge_shape_is_a_data_error_not_a_memory_error(tmp_path):
    write_inter(tmp_path)
    raw = _npy_bytes(np.zeros((5, 2), np.float32)).replace(b"(5, 2)", b"(99999999999, 99999)")
    (tmp_path / "image_feat.npy").write_bytes(raw)
    data_error(["image_feat.npy", "declares shape (99999999999, 99999)", "truncated"],
               read_mmrec, tmp_path)


def test_an_npy_file_with_data_after_the_array_is_a_data_error(tmp_path):
    write_inter(tmp_path)  # two np.save calls into one file: np.load returned the first, silently
    arr = np.zeros((5, 2), np.float32)
    (tmp_path / "image_feat.npy").write_bytes(_npy_bytes(arr) + _npy_bytes(arr))
    data_error(["image_feat.npy", "data after the array"], read_mmrec, tmp_path)


def test_a_file_without_the_npy_magic_is_not_called_pickled(tmp_path):
    write_inter(tmp_path)
    (tmp_path / "image_feat.npy").write_text("0.1 0.2\n0.3 0.4\n")
    msg = data_error(["image_feat.npy", "no .npy header"], read_mmrec, tmp_path)
    assert "pickle" not in msg


def test_an_npz_member_declaring_a_huge_shape_is_a_data_error(tmp_path):
    import zipfile

    write_lattice(tmp_path)
    raw = _npy_bytes(np.zeros((2, 2), np.int64)).replace(b"(2, 2)", b"(99999999999, 2)")
    with zipfile.ZipFile(tmp_path / "item_knn5.npz", "w") as z:
        z.writestr("image.npy", raw)
    data_error(["item_knn5.npz", "graph 'image'", "declares shape (99999999999, 2)"],
               read_lattice, tmp_path)


def test_an_encrypted_npz_member_is_a_data_error(tmp_path):
    import zipfile

    write_lattice(tmp_path)
    path = tmp_path / "item_knn5.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("image.npy", _npy_bytes(np.array([[0, 1]])))
    raw = bytearray(path.read_bytes())  # set the "encrypted" flag bit (RuntimeError in zipfile)
    raw[raw.find(b"PK\x03\x04") + 6] |= 1
    raw[raw.find(b"PK\x01\x02") + 8] |= 1
    path.write_bytes(bytes(raw))
    data_error(["item_knn5.npz", "cannot read", "encrypted"], read_lattice, tmp_path)


def test_one_graph_name_in_two_knn_files_is_a_data_error(tmp_path):
    write_lattice(tmp_path)  # item_knn10.npz's 'image' silently replaced item_knn5.npz's
    np.savez(tmp_path / "item_knn10.npz", image=np.array([[0, 1]]))
    write_knn(tmp_path, image=np.array([[2, 3]]))
    data_error(["item_knn5.npz", "graph 'image'", "item_knn10.npz"], read_lattice, tmp_path)


def test_an_empty_item_graph_is_read_and_hashed(tmp_path):
    write_lattice(tmp_path)  # content_hash raised TypeError (memoryview of a zero-size array)
    write_knn(tmp_path, image=np.zeros((0, 2), np.int64))
    ds = read_lattice(tmp_path)
    assert ds.item_graphs["image"].shape == (0, 2)
    (tmp_path / "item_knn5.npz").unlink()
    assert ds.content_hash() != read_lattice(tmp_path).content_hash()


@pytest.mark.parametrize("kind", ["folder", "symlink loop"])
def test_lattice_split_file_that_cannot_be_read_is_a_data_error(tmp_path, kind):
    write_lattice(tmp_path)
    path = tmp_path / "5-core" / "val.json"
    path.unlink()
    if kind == "folder":  # was an IsADirectoryError traceback
        path.mkdir()
    else:  # was reported as a missing file
        path.symlink_to(path.name)
    data_error(["val.json", "cannot read"], read_lattice, tmp_path)


BAD_JSON = {  # json.loads raises RecursionError / a plain ValueError for these, not JSONDecodeError
    "deep nesting": ('{"0": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    "5000-digit item id": ('{"0": [' + "9" * 5000 + "]}", "4300 digits"),
    "5000-digit user key": ('{"' + "9" * 5000 + '": [1]}', "user key of 5000 digits is too large"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_lattice_json_that_python_cannot_convert_is_a_data_error(tmp_path, case):
    text, msg = BAD_JSON[case]
    write_lattice(tmp_path, raw={"valid": text})
    data_error(["val.json", msg], read_lattice, tmp_path)


def test_lattice_user_keys_naming_one_user_twice_are_a_data_error(tmp_path):
    # '1' and '01' are both user 1: the two lists were merged unseen
    write_lattice(tmp_path, raw={"train": '{"0": [0, 1], "1": [1], "2": [3], "01": [4]}'})
    data_error(["train.json", "entry 4", "'01' is user 1 again", "'1'"], read_lattice, tmp_path)


COLD_FILES = {
    "folder": (None, "cannot read"),  # was silently taken as "no cold-start split"
    "deep nesting": ('{"valid": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    "5000-digit id": ('{"valid": [' + "9" * 5000 + '], "test": [3]}', "4300 digits"),
    "key twice": ('{"valid": [1], "test": [3], "valid": [2]}', "'valid' appears twice"),
}


@pytest.mark.parametrize("case", sorted(COLD_FILES))
def test_bad_cold_items_file_is_a_data_error(tmp_path, case):
    text, msg = COLD_FILES[case]
    write_inter(tmp_path)
    if text is None:
        (tmp_path / "cold_items.json").mkdir()
    else:
        (tmp_path / "cold_items.json").write_text(text)
    data_error(["cold_items.json", msg], read_mmrec, tmp_path)


@pytest.mark.parametrize("counts", [(1.5, 1.5), ("1", "1"), (True, 2)], ids=["float", "str", "bool"])
def test_inductive_cold_counts_must_be_integers(tmp_path, counts):
    from latticerec.data.cold import read_inductive_cold

    cold = tmp_path / "cold"  # 3 cold items: 1 valid, then 2 test
    write_inter(cold, ["0\t0\t1", "1\t1\t2", "0\t2\t2"], name="cold")
    (cold / "i_id_mapping.csv").write_text("item_id\titemID\na\t0\nb\t1\nc\t2\n")
    write_feat(cold, "image", np.ones((3, 2), np.float32))
    meta = tmp_path / "inductive.json"
    meta.write_text(json.dumps({"cold_valid": 1, "cold_test": 2}))
    assert read_inductive_cold(tmp_path, 2).rows("test").tolist() == [1, 2]
    meta.write_text(json.dumps({"cold_valid": counts[0], "cold_test": counts[1]}))
    data_error(["inductive.json", "integer counts"], read_inductive_cold, tmp_path, 2)
