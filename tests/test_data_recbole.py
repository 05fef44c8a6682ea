"""``import-recbole``: RecBole atomic ``.inter`` (+ ``.item``) to the MMRec layout with a seeded split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_dataset

from latticerec.cli import main
from latticerec.data.readers import load_dataset
from latticerec.datasets.recbole import import_recbole, read_recbole_inter
from latticerec.errors import DataError

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def write_inter(folder, rows, header=HEADER, name="toy"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.inter"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def toy_rows():
    """Users 10 (12 items), 2 (5 items), 7 (2 items); item tokens 1..12; one duplicate pair."""
    rows = [f"10\t{i}\t{i % 5 + 1}\t{1000 + i}" for i in range(1, 13)]
    rows += [f"2\t{i}\t4\t{2000 + i}" for i in (3, 1, 12, 9, 5)]
    rows += ["7\t2\t5\t3000", "7\t11\t1\t3001", "2\t3\t1\t9999"]  # the last repeats (2, 3)
    return rows


def test_import_ids_split_and_layout(tmp_path):
    src = write_inter(tmp_path / "src", toy_rows())
    (tmp_path / "src" / "toy.item").write_text("item_id:token\ttitle:token_seq\n1\tOne\n")
    out = tmp_path / "out"
    rep = import_recbole(src.parent, out, seed=1, progress=False)
    assert (rep["users"], rep["items"], rep["interactions"], rep["duplicates_dropped"]) == (3, 12, 19, 1)
    # user 10: 12 items -> 10/1/1; user 2: 5 (< 10) -> 3/1/1; user 7: 2 (< 3) -> all train
    assert (rep["train"], rep["valid"], rep["test"]) == (15, 2, 2)
    users = [r.split("\t")[0] for r in (out / "u_id_mapping.csv").read_text().splitlines()[1:]]
    items = [r.split("\t")[0] for r in (out / "i_id_mapping.csv").read_text().splitlines()[1:]]
    assert users == ["2", "7", "10"]                     # numeric order, not "10" < "2"
    assert items == [str(i) for i in range(1, 13)]
    assert (out / "toy.item").read_text().startswith("item_id:token")
    ds = load_dataset(out)
    assert (ds.n_users, ds.n_items) == (3, 12)
    assert np.diff((ds.train + ds.valid + ds.test).indptr).tolist() == [5, 2, 12]
    assert ds.train[1].indices.tolist() == [1, 10]        # raw items 2 and 11
    lines = (out / "toy.inter").read_text().splitlines()
    assert lines[0] == "userID\titemID\trating\ttimestamp\tx_label"
    row = next(r for r in lines[1:] if r.startswith("2\t1\t"))   # user 10's raw item 2
    assert row.split("\t")[2:4] == ["3", "1002"]
    same = tmp_path / "again"
    import_recbole(src.parent, same, seed=1, progress=False)
    assert (same / "toy.inter").read_bytes() == (out / "toy.inter").read_bytes()


def test_min_rating_and_core(tmp_path):
    src = write_inter(tmp_path, toy_rows())
    rep = import_recbole(src, tmp_path / "o", min_rating=3, progress=False)
    # user 10: 7 of 12 rated >= 3; user 2: all 5 (the duplicate rated 1 is filtered); user 7: 1
    assert rep["interactions"] == 7 + 5 + 1
    rep = import_recbole(src, tmp_path / "c", core=2, progress=False)
    assert rep["users"] == 3 and rep["items"] == 7  # items 4, 6, 7, 8, 10 have one user each


def test_malformed_rows_counted_then_fatal(tmp_path):
    rows = toy_rows()
    rows.insert(4, "10\tonly-two")
    rows.insert(8, "10\t99\tfive\t1")
    src = write_inter(tmp_path, rows)
    data = read_recbole_inter(src, max_bad=5, progress=False)
    assert data.bad.count == 2 and [n for n, _ in data.bad.examples] == [6, 10]
    with pytest.raises(DataError, match=r"toy\.inter: 2 of 22 lines malformed: line 6: expected 4 "
                                        r"tab-separated fields, got 2; line 10: rating/timestamp"):
        import_recbole(src, tmp_path / "o", progress=False)


def test_header_problems(tmp_path):
    with pytest.raises(DataError, match="line 1: no item column"):
        read_recbole_inter(write_inter(tmp_path, ["1\t2"], header="user_id:token\tthing:token"),
                           progress=False)
    empty = tmp_path / "e.inter"
    empty.write_text("")
    with pytest.raises(DataError, match="missing header"):
        read_recbole_inter(empty, progress=False)


def test_cli_import_ml100k(tmp_path, capsys):
    src = shared_dataset("ml-100k")
    out = tmp_path / "ml"
    assert main(["data", "import-recbole", str(src), "--out", str(out), "--quiet"]) == 0
    rep = json.loads((out / "import_report.json").read_text())
    assert (rep["users"], rep["items"], rep["interactions"]) == (943, 1682, 100_000)
    assert "943 users, 1682 items" in capsys.readouterr().out
    ds = load_dataset(out)
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz == 100_000


def test_fast_and_line_by_line_parsing_agree(tmp_path):
    """A clean block is parsed column-wise; a block with one bad line line by line: same rows."""
    clean = read_recbole_inter(write_inter(tmp_path / "a", toy_rows()), progress=False)
    crlf = tmp_path / "b" / "toy.inter"
    crlf.parent.mkdir()
    crlf.write_bytes(("\r\n".join([HEADER, *toy_rows()]) + "\r\n").encode())
    slow = read_recbole_inter(write_inter(tmp_path / "c", [*toy_rows(), "x\ty"]), max_bad=1,
                              progress=False)
    for other in (read_recbole_inter(crlf, progress=False), slow):
        assert list(other.user_raw[other.users]) == list(clean.user_raw[clean.users])
        assert list(other.item_raw[other.items]) == list(clean.item_raw[clean.items])
        np.testing.assert_array_equal(other.rating, clean.rating)
        np.testing.assert_array_equal(other.timestamp, clean.timestamp)
    assert slow.bad.count == 1 and slow.bad.examples[0][0] == 22


def test_nan_and_inf_ratings_or_times_are_malformed_lines(tmp_path):
    rows = toy_rows()
    rows.insert(2, "10\t50\tnan\t1")
    rows.insert(5, "10\t51\t3\tinf")
    rows.insert(7, "10\t52\t-Infinity\t1")
    src = write_inter(tmp_path, rows)
    data = read_recbole_inter(src, max_bad=5, progress=False)
    assert data.bad.count == 3 and [n for n, _ in data.bad.examples] == [4, 7, 9]
    assert all("not a finite number" in why for _, why in data.bad.examples)
    assert np.isfinite(data.rating).all() and np.isfinite(data.timestamp).all()
    assert len(data.rating) == len(toy_rows())


def test_import_refuses_its_source_or_a_used_folder(tmp_path):
    src = write_inter(tmp_path / "src", toy_rows())
    with pytest.raises(DataError, match="is or holds the input"):
        import_recbole(src.parent, src.parent, progress=False)
    with pytest.raises(DataError, match="is or holds the input"):
        import_recbole(src, src.parent, progress=False)
    assert [p.name for p in src.parent.iterdir()] == ["toy.inter"]
    import_recbole(src, tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="already holds files"):
        import_recbole(src, tmp_path / "out", progress=False)
