import math

import numpy as np
import pytest
from scipy import stats

from latticerec.evaluate.significance import align_users, paired_test


def test_paired_test_matches_scipy_and_hand_computed_effect_size():
    rng = np.random.default_rng(0)
    b = rng.random(200)
    a = b + 0.05 + 0.1 * rng.standard_normal(200)
    res = paired_test(a, b)
    t_ref = stats.ttest_rel(a, b)
    w_ref = stats.wilcoxon(a, b)
    assert res.n == 200
    assert res.t == pytest.approx(t_ref.statistic) and res.p_t == pytest.approx(t_ref.pvalue)
    assert res.wilcoxon == pytest.approx(w_ref.statistic)
    assert res.p_wilcoxon == pytest.approx(w_ref.pvalue)
    d = a - b
    assert res.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
    assert res.significant()


def test_paired_test_small_known_answer():
    # d = (1, 2, 3): mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3, df 2
    a, b = np.array([1.0, 2.0, 3.0]), np.zeros(3)
    res = paired_test(a, b)
    assert res.t == pytest.approx(2 * math.sqrt(3))
    assert res.p_t == pytest.approx(2 * stats.t.sf(2 * math.sqrt(3), df=2))
    assert res.effect_size == pytest.approx(2.0)
    assert res.mean_diff == pytest.approx(2.0)


def test_identical_runs_are_not_significant():
    a = np.array([0.0, 0.5, 1.0, 0.0])
    res = paired_test(a, a.copy())
    assert (res.p_t, res.p_wilcoxon, res.effect_size) == (1.0, 1.0, 0.0)
    assert not res.significant()


def test_noise_only_is_usually_not_significant():
    rng = np.random.default_rng(1)
    a, b = rng.random(300), rng.random(300)
    assert not paired_test(a, b).significant()


@pytest.mark.parametrize("a,b", [([1.0], [0.0]), ([1.0, 2.0], [1.0]), ([1.0, math.nan], [0.0, 0.0])])
def test_bad_samples_are_refused(a, b):
    with pytest.raises(ValueError):
        paired_test(np.array(a), np.array(b))


def test_align_users_orders_both_runs_and_refuses_different_user_sets():
    a, b = align_users(np.array([3, 1, 2]), np.array([0.3, 0.1, 0.2]),
                       np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0]))
    assert a.tolist() == [0.1, 0.2, 0.3] and b.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="different users"):
        align_users(np.array([1, 2]), np.zeros(2), np.array([1, 3]), np.zeros(2))


def test_compare_command_on_two_runs(tmp_path, capsys):
    import json

    from latticerec.cli import main

    common = ["--data", "synthetic", "--epochs", "2", "--quiet", "--set", "embed_dim=8"]
    assert main(["train", "--model", "mf", "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["train", "--model", "lightgcn", "--out", str(tmp_path / "b"), *common]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["metric"] for r in rows} == {"recall@20", "ndcg@20", "precision@20", "hit@20"}
    from latticerec.train.rundir import RunDir

    a, b = RunDir(tmp_path / "a").read_per_user(), RunDir(tmp_path / "b").read_per_user()
    ref = paired_test(*align_users(a["users"], a["recall@20"], b["users"], b["recall@20"]))
    got = next(r for r in rows if r["metric"] == "recall@20")
    assert got["p_t"] == pytest.approx(ref.p_t) and got["n"] == ref.n
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "nope@20"]) == 2
