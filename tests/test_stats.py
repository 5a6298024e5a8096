"""Cell statistics: the strongest attacker per sample, intervals, paired tests, and T4's partial correlation."""

import numpy as np
import pandas as pd
import pytest

from selenc import stats


def rows(attack, metric, psnr_by_ratio, trials=5, ssim=0.1, threat_model="mask_aware", phi=0.5):
    """Image trials of one (attack, metric); psnr_by_ratio values are a number or a list (one per trial)."""
    out = []
    for r, p in psnr_by_ratio.items():
        for t in range(trials):
            out.append(
                {
                    "arch": "lenet",
                    "attack": attack,
                    "threat_model": threat_model,
                    "metric": metric,
                    "ratio": r,
                    "mask_source": "own",
                    "ties": "index",
                    "victim": "untrained",
                    "trial": t,
                    "status": "ok",
                    "psnr": p[t] if isinstance(p, list) else p,
                    "ssim": ssim,
                    "rouge1": None,
                    "token_f1": None,
                    "phi": phi,
                    "he_encrypt_s": r * 10,
                    "he_bytes": int(r * 1000) + 5,
                }
            )
    return out


def test_strongest_takes_the_best_attack_per_sample_and_protects_only_when_all_fail(params):
    levels = params.guidelines.levels
    table = pd.DataFrame(
        rows("dlg", "magnitude", {0.5: [10.0, 30.0, 10.0, 10.0, 10.0]})
        + rows("linear", "magnitude", {0.5: [25.0, 11.0, 10.0, 10.0, 10.0]}, trials=3)  # only samples 0-2
    )
    t = stats.trials(table, levels)
    best = t[t.attack == stats.STRONGEST].set_index("trial").sort_index()
    assert best.success.tolist() == [25.0, 30.0, 10.0, 10.0, 10.0]
    assert best.protected_strict.tolist() == [False, False, True, True, True]
    cell = stats.summary(table, levels).set_index("attack").loc[stats.STRONGEST]
    assert cell.n == 5 and cell.protected_strict == pytest.approx(0.6) and cell["median"] == 10.0
    assert cell.strict_low < 0.6 < cell.strict_high and cell.he_encrypt_s == 5.0


def test_unfinished_or_failing_bounds_are_not_protected(params):
    strict = params.guidelines.levels["strict"]
    table = pd.DataFrame(rows("dlg", "random", {0.1: 10.0}, trials=2) + rows("dlg", "weight", {0.1: 10.0}, 2, ssim=0.9))
    assert stats.protected(table, strict).tolist() == [True, True, False, False]
    table.loc[0, "status"] = "timeout"
    assert not stats.protected(table, strict)[0]


def test_median_interval_is_seeded_and_brackets_the_median():
    values = np.array([3.0, 9.0, 4.0, 12.0, 5.0, 30.0, 7.0])
    med, low, high = stats.median_ci(values, seed=1)
    assert med == 7.0 and low <= med <= high and low >= values.min() and high <= values.max() and high > low
    assert stats.median_ci(values, seed=1) == (med, low, high)
    assert stats.median_ci(np.array([4.0]), seed=1) == (4.0, 4.0, 4.0)
    assert stats.median_ci(np.array([4.0, 4.0, 4.0]), seed=1) == (4.0, 4.0, 4.0)


def test_wilson_interval_matches_the_guideline_rule():
    """params.yaml's min_protected 0.5: five of five protected trials pass, four of five do not."""
    assert stats.wilson(5, 5)[0] > 0.5 > stats.wilson(4, 5)[0]
    assert stats.wilson(9, 10)[0] > 0.5 and stats.wilson(0, 5) == pytest.approx((0.0, stats.wilson(0, 5)[1]))
    low, high = stats.wilson(30, 40)
    assert low < 0.75 < high and high - low < stats.wilson(3, 4)[1] - stats.wilson(3, 4)[0]


def test_paired_metrics_test_each_metric_against_random_over_the_inner_ratios(params):
    """Five samples at each of two inner ratios are ten pairs: a metric that always beats random is significant after
    Holm over its attack's family; a noisy one is not; ρ = 0 and 1 (the same mask whatever the metric) never enter."""
    levels = params.guidelines.levels
    good = [10.0 + i for i in range(5)]
    bad = [20.0 + 2 * i for i in range(5)]
    noise = [b + d for b, d in zip(bad, [3.0, -3.0, 4.0, -4.0, 1.0], strict=True)]  # as random, give or take
    table = pd.DataFrame(
        rows("dlg", "magnitude", {0.0: 40.0, 0.3: good, 0.6: good, 1.0: 5.0})
        + rows("dlg", "random", {0.0: 40.0, 0.3: bad, 0.6: bad, 1.0: 5.0})
        + rows("dlg", "weight", {0.0: 40.0, 0.3: noise, 0.6: noise, 1.0: 5.0})
    )
    paired = stats.paired_metrics(table, levels).set_index(["attack", "metric_a"])
    assert set(paired.metric_b) == {"random"} and set(paired.index.get_level_values(0)) == {"dlg", stats.STRONGEST}
    one, other = paired.loc[("dlg", "magnitude")], paired.loc[("dlg", "weight")]
    assert one.n == 10 and one.median_diff == -12.0 and one.ci_low <= -12.0 <= one.ci_high < 0
    assert one.p < 0.01 and one.p_holm >= one.p and one.significant and not other.significant
    assert (paired.p_holm >= paired.p).all()
    without = stats.paired_metrics(table[table.metric != "random"], levels)  # no baseline: every pair
    assert set(zip(without.metric_a, without.metric_b, strict=True)) == {("magnitude", "weight")}


def test_paired_gap_reads_only_partial_encryption():
    aware = rows("dlg", "magnitude", {0.0: 40.0, 0.3: [30.0, 31, 32, 33, 34], 1.0: 5.0})
    zero = rows("dlg", "magnitude", {0.3: [10.0, 10, 12, 12, 9], 1.0: 5.0}, threat_model="zero_fill")
    gap = stats.paired_gap(pd.DataFrame(aware + zero), "threat_model", "mask_aware", "zero_fill").iloc[0]
    assert gap.n == 5 and gap["median"] == 21.0 and gap.ci_low <= 21.0 <= gap.ci_high
    assert stats.paired_gap(pd.DataFrame(aware), "threat_model", "mask_aware", "zero_fill").empty


def test_partial_spearman_removes_what_the_ratio_explains():
    gen = np.random.default_rng(0)
    ratio = np.repeat([0.1, 0.3, 0.6], 30)
    phi = ratio + gen.normal(0, 0.05, ratio.size)
    by_ratio = -ratio + gen.normal(0, 0.05, ratio.size)  # success driven by the ratio alone
    r, n, low, high = stats.partial_spearman(phi, by_ratio, ratio)
    assert n == 90 and low < 0 < high and abs(r) < 0.3
    by_phi = -phi + gen.normal(0, 0.01, ratio.size)  # success driven by φ beyond the ratio
    r, _, low, high = stats.partial_spearman(phi, by_phi, ratio)
    assert r < -0.5 and high < 0
    assert np.isnan(stats.partial_spearman(phi, np.ones_like(phi), ratio)[0])
