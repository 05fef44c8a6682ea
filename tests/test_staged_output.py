"""Every dataset builder writes through ``staged_folder``: the output folder appears complete, or
not at all, even when the build fails after its first files were written (full disk, a bad late
input), and nothing is left beside it."""

from __future__ import annotations

import os
import stat

import pytest
from test_data_amazon import write_raw

import latticerec.datasets.amazon as amazon
import latticerec.datasets.coldstart as coldstart
import latticerec.datasets.recbole as recbole
import latticerec.datasets.synth as synth
from latticerec.data import make_synthetic
from latticerec.data.readers import load_dataset
from latticerec.datasets.prepare import staged_folder
from latticerec.errors import DataError


def _fail_late(monkeypatch, module):
    """The report is the last file a builder writes: failing there leaves the data files written."""
    def boom(path, *a, **k):
        assert any(path.parent.iterdir()), "the data files should be written before the report"
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(module, "atomic_write_json", boom)


def _builders(tmp_path):
    raw = write_raw(tmp_path / "raw")
    source = make_synthetic(n_users=120, n_items=80, seed=3)
    inter = tmp_path / "rb" / "toy.inter"
    inter.parent.mkdir()
    inter.write_text("user_id:token\titem_id:token\n" + "".join(
        f"{u}\t{i}\n" for u in range(12) for i in range(u % 4, u % 4 + 12)))
    return {
        "synth": (synth, lambda out: synth.write_synthetic(out, n_users=30, n_items=40, n_interactions=300,
                                                           dims={"image": 4})),
        "import-recbole": (recbole, lambda out: recbole.import_recbole(inter, out, progress=False)),
        "build-amazon": (amazon, lambda out: amazon.build_amazon(raw["reviews"], out, images=raw["images"],
                                                                 core=3, text_model=None, max_bad=5,
                                                                 progress=False, log=lambda m: None)),
        "cold-start": (coldstart, lambda out: coldstart.cold_start_split(source, out, seed=1)),
        "inductive": (coldstart, lambda out: coldstart.inductive_cold_start_split(source, out, seed=1)),
    }


@pytest.mark.parametrize("builder", ["synth", "import-recbole", "build-amazon", "cold-start", "inductive"])
def test_a_late_failure_leaves_no_folder_and_no_partial_files(builder, tmp_path, monkeypatch):
    module, build = _builders(tmp_path)[builder]
    before = set((tmp_path / "outputs").iterdir()) if (tmp_path / "outputs").exists() else set()
    (tmp_path / "outputs").mkdir(exist_ok=True)
    _fail_late(monkeypatch, module)
    with pytest.raises(OSError, match="No space left"):
        build(tmp_path / "outputs" / "ds")
    assert set((tmp_path / "outputs").iterdir()) == before  # not ds, not .ds.<random>.partial
    monkeypatch.undo()
    build(tmp_path / "outputs" / "ds")  # the same call succeeds once the cause is gone
    out = tmp_path / "outputs" / "ds"
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["ds"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    mode = stat.S_IMODE(out.stat().st_mode)
    assert mode == 0o777 & ~_umask()  # an ordinary folder, not a private temporary one
    load_dataset(out)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_an_empty_target_folder_is_replaced_and_a_filled_one_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_folder(empty) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not (empty / "a.txt").exists()  # nothing visible before the end
    assert (empty / "a.txt").read_text() == "a"
    raced = tmp_path / "raced"
    with pytest.raises(DataError, match="already holds files"):
        with staged_folder(raced) as tmp:
            (tmp / "a.txt").write_text("mine")
            raced.mkdir()
            (raced / "b.txt").write_text("someone else's")  # appeared during the build
    assert [p.name for p in raced.iterdir()] == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "raced"]
