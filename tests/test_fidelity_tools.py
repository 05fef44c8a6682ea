"""The side-by-side tools in benchmarks/fidelity: the converter to the released layout and the
parser of the released code's output."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from latticerec.data.readers import load_dataset

FIDELITY = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"fidelity_{name}", FIDELITY / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_convert_writes_the_released_layout_with_the_same_split(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = ["userID\titemID\tx_label", "0\t0\t0", "0\t2\t0", "1\t1\t0", "1\t2\t1", "0\t1\t2", "2\t0\t0"]
    (src / "toy.inter").write_text("\n".join(rows) + "\n")
    np.save(src / "image_feat.npy", np.arange(6, dtype=np.float16).reshape(3, 2))
    np.save(src / "audio_feat.npy", np.ones((3, 4), dtype=np.float16))
    out = tmp_path / "out" / "toy"
    stats = _load("convert").convert(src, out, "image", "audio")
    assert stats == {"users": 3, "items": 3, "train": 4, "valid": 1, "test": 1}
    assert json.loads((out / "5-core" / "train.json").read_text()) == {"0": [0, 2], "1": [1], "2": [0]}
    assert json.loads((out / "5-core" / "val.json").read_text()) == {"1": [2]}
    assert np.load(out / "text_feat.npy").dtype == np.float32  # audio written as the text modality
    back = load_dataset(out)
    assert (back.test != load_dataset(src).test).nnz == 0
    with pytest.raises(SystemExit, match="not empty"):
        _load("convert").convert(src, out, "image", "audio")


LOG = """\
Epoch 0 [10.0s]: train==[39.4=39.4 + 0.0]
Epoch 0 [10.0s + 4.0s]:  val==[39.4=39.4 + 0.0 + 0.0], recall=[0.01377, 0.02262], precision=[0.1, 0.1], \
hit=[0.1, 0.1], ndcg=[0.00737, 0.00959]
Epoch 0 [10.0s + 4.0s]: test==[39.4=39.4 + 0.0 + 0.0], recall=[0.01000, 0.01990], precision=[0.1, 0.1], \
hit=[0.1, 0.1], ndcg=[0.00500, 0.00810]
Epoch 5 [10.0s + 4.0s]:  val==[9.4=9.4 + 0.0 + 0.0], recall=[0.03000, 0.05000], precision=[0.1, 0.1], \
hit=[0.1, 0.1], ndcg=[0.01000, 0.02000]
#####Early stopping steps: 1 #####
{'precision': array([0.001, 0.002]), 'recall': array([0.0123, 0.0234]), 'ndcg': array([0.005, 0.0085]), \
'hit_ratio': array([0.01, 0.02]), 'auc': 0.0}
"""


def test_parse_original_log(tmp_path):
    path = tmp_path / "orig.log"
    path.write_text(LOG)
    res = _load("compare").parse_original(path)
    assert [(p["epoch"], p["valid_recall@20"]) for p in res["curve"]] == [(1, 0.02262), (6, 0.05)]
    assert res["complete"]
    assert res["test"]["recall@20"] == pytest.approx(0.0234)  # the final dict wins
    assert res["test"]["ndcg@20"] == pytest.approx(0.0085)
    partial = tmp_path / "micro.log"
    partial.write_text("2026-11-29 20:00:  Epoch 0 [1.0s + 1.0s]: train==[1.0=1.0 + 0.0 + 0.0], "
                       "recall=[0.01, 0.02], precision=[0.1, 0.1], hit=[0.1, 0.1], ndcg=[0.01, 0.015]\n"
                       "2026-11-29 20:00:  Test_Recall@20: 0.01800\n")
    res = _load("compare").parse_original(partial)
    assert not res["complete"] and res["test"]["recall@20"] == pytest.approx(0.018)
    assert math.isnan(res["test"]["ndcg@20"])
