"""Cell statistics with the sample as the unit: one adversary per cell, intervals, paired tests over samples, T4's
partial correlation within samples with an interval over them."""

import numpy as np
import pandas as pd
import pytest

from selenc import results, stats
from selenc.config import parse_params
from tests.conftest import FEDSGD_B1


def rows(attack, metric, psnr_by_ratio, trials=5, ssim=0.1, threat_model="mask_aware", phi=0.5, init=0):
    """Image trials of one (attack, metric); psnr_by_ratio values are a number or a list (one per trial)."""
    out = []
    for r, p in psnr_by_ratio.items():
        for t in range(trials):
            out.append(
                {
                    "arch": "lenet",
                    "modality": "image",
                    "attack": attack,
                    "threat_model": threat_model,
                    "metric": metric,
                    "ratio": r,
                    "mask_source": "own",
                    "ties": "index",
                    "victim": "untrained",
                    **FEDSGD_B1,
                    "init": init,
                    "trial": t,
                    "status": "ok",
                    "psnr": p[t] if isinstance(p, list) else p,
                    "ssim": ssim,
                    "rouge1": None,
                    "token_f1": None,
                    "phi": phi,
                    "he_encrypt_s": r * 10,
                    "he_bytes": int(r * 1000) + 5,
                    "he_bytes_sd": r * 2,
                    "he_encrypt_s_run": r * 10,
                    "he_bytes_run": int(r * 1000) + 5,
                }
            )
    return out


def test_strongest_takes_the_best_attack_per_sample_and_protects_only_when_all_fail(params):
    levels = params.guidelines.levels
    table = pd.DataFrame(
        rows("dlg", "magnitude", {0.5: [10.0, 30.0, 10.0, 10.0, 10.0]})
        + rows("linear", "magnitude", {0.5: [25.0, 11.0, 10.0, 10.0, 10.0]})
    )
    t = stats.trials(table, levels)
    best = t[t.attack == stats.STRONGEST].set_index("trial").sort_index()
    assert best.success.tolist() == [25.0, 30.0, 10.0, 10.0, 10.0] and set(best.attack_set) == {"dlg+linear"}
    assert best.protected_strict.tolist() == [False, False, True, True, True]
    cell = stats.summary(table, levels).set_index("attack").loc[stats.STRONGEST]
    assert cell.n_samples == 5 and cell.protected_strict == pytest.approx(0.6) and cell["median"] == 10.0
    assert cell.strict_low < 0.6 < cell.strict_high and cell.he_encrypt_s == 5.0 and not cell.slice


def test_a_cell_whose_samples_ran_different_attacks_is_never_pooled(params):
    """Samples 0-2 ran dlg and linear, samples 3-4 dlg only: the cell's adversary is dlg on all five; dlg+linear is a
    slice of its own on samples 0-2, never mixed into the cell."""
    levels = params.guidelines.levels
    table = pd.DataFrame(
        rows("dlg", "magnitude", {0.5: [10.0, 30.0, 10.0, 10.0, 10.0]})
        + rows("linear", "magnitude", {0.5: [25.0, 11.0, 10.0]}, trials=3)
    )
    summary = stats.summary(table, levels)
    strongest = summary[summary.attack == stats.STRONGEST].set_index("attack_set")
    assert set(strongest.index) == {"dlg", "dlg+linear"}
    cell, part = strongest.loc["dlg"], strongest.loc["dlg+linear"]
    assert not cell.slice and cell.n_samples == 5 and cell.protected_strict == pytest.approx(0.8)  # dlg alone: 4 of 5
    assert part.slice and part.n_samples == 3 and part.protected_strict == pytest.approx(1 / 3)  # 25, 30, 10
    rows_ = stats.trials(table, levels)
    assert len(rows_[(rows_.attack == stats.STRONGEST) & ~rows_.slice.astype(bool)]) == 5


def test_samples_of_every_initialisation_are_the_units(params):
    """A sample is (initialisation, target): target 0 under two initialisations is two samples of one cell."""
    levels = params.guidelines.levels
    table = pd.DataFrame(
        rows("dlg", "magnitude", {0.5: 10.0}, trials=3) + rows("dlg", "magnitude", {0.5: 30.0}, 3, init=1)
    )
    cell = stats.summary(table, levels).set_index("attack").loc["dlg"]
    assert cell.n_samples == 6 and cell.protected_strict == 0.5
    twice = pd.concat([table, table.iloc[:1]])
    with pytest.raises(ValueError, match="holds a sample twice"):
        stats.summary(twice, levels)


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


def test_paired_metrics_count_samples_not_the_rows_they_pool(params):
    """Five samples at each of two inner ratios are ten rows but five samples: averaged per sample, a metric that
    always beats random reaches only the smallest p five samples allow (2/2^5), not significant; the same effect on
    eight samples is. ρ = 0 and 1 (the same mask whatever the metric) never enter."""
    levels = params.guidelines.levels

    def table(n):
        good, bad = [10.0 + i for i in range(n)], [20.0 + 2 * i for i in range(n)]
        noise = [b + d for b, d in zip(bad, [3.0, -3.0, 4.0, -4.0, 1.0, -1.0, 2.0, -2.0][:n], strict=True)]
        return pd.DataFrame(
            rows("dlg", "magnitude", {0.0: 40.0, 0.3: good, 0.6: good, 1.0: 5.0}, trials=n)
            + rows("dlg", "random", {0.0: 40.0, 0.3: bad, 0.6: bad, 1.0: 5.0}, trials=n)
            + rows("dlg", "weight", {0.0: 40.0, 0.3: noise, 0.6: noise, 1.0: 5.0}, trials=n)
        )

    paired = stats.paired_metrics(table(5), levels).set_index(["attack", "metric_a"])
    assert set(paired.metric_b) == {"random"} and set(paired.index.get_level_values(0)) == {"dlg", stats.STRONGEST}
    one = paired.loc[("dlg", "magnitude")]
    assert one.n_samples == 5 and one.n_pairs == 10 and one.median_diff == -12.0 and one.ci_low <= -12.0 <= one.ci_high
    assert one.p == pytest.approx(2 / 2**5) and one.min_p == one.p and not one.significant
    # the rows one sample contributes are not independent: pooled as ten pairs the same data would look significant
    inner = table(5)[lambda t: (t.ratio > 0) & (t.ratio < 1)].set_index(["ratio", "trial"])
    rows_diff = (inner[inner.metric == "magnitude"].psnr - inner[inner.metric == "random"].psnr).to_numpy()
    assert len(rows_diff) == 10 and stats.wilcoxon(rows_diff) < 0.01 < 0.05 < one.p
    eight = stats.paired_metrics(table(8), levels).set_index(["attack", "metric_a"])
    assert eight.loc[("dlg", "magnitude")].significant and not eight.loc[("dlg", "weight")].significant
    assert (eight.p_holm >= eight.p).all() and eight.loc[("dlg", "magnitude")].min_p == 2 / 2**8
    without = stats.paired_metrics(table(5)[lambda t: t.metric != "random"], levels)  # no baseline: every pair
    assert set(zip(without.metric_a, without.metric_b, strict=True)) == {("magnitude", "weight")}


def test_paired_gap_reads_only_partial_encryption_and_averages_each_sample():
    aware = rows("dlg", "magnitude", {0.0: 40.0, 0.3: [30.0, 31, 32, 33, 34], 0.6: [30.0, 31, 32, 33, 34], 1.0: 5.0})
    zero = rows(
        "dlg",
        "magnitude",
        {0.3: [10.0, 10, 12, 12, 9], 0.6: [12.0, 12, 14, 14, 11], 1.0: 5.0},
        threat_model="zero_fill",
    )
    gap = stats.paired_gap(pd.DataFrame(aware + zero), "threat_model", "mask_aware", "zero_fill").iloc[0]
    # per sample: mean of (20, 18), (21, 19), (20, 18), (21, 19), (25, 23)
    assert gap.n_samples == 5 and gap.n_pairs == 10 and gap["median"] == 20.0 and gap.ci_low <= 20.0 <= gap.ci_high
    assert gap.p == pytest.approx(1 / 16) and gap.min_p == pytest.approx(1 / 16)  # 5 samples: never below 0.0625
    assert stats.paired_gap(pd.DataFrame(aware), "threat_model", "mask_aware", "zero_fill").empty
    assert stats.min_wilcoxon_p(5) == 0.0625 and stats.min_wilcoxon_p(6) < 0.05 and stats.min_wilcoxon_p(0) == 1.0


def test_partial_spearman_removes_what_the_ratio_explains_and_counts_samples():
    """Six samples of 15 rows each (5 metrics x 3 ratios): the correlation is taken within each sample and its
    interval over the six, whatever the row count."""
    gen = np.random.default_rng(0)
    samples = np.repeat(np.arange(6), 15)
    ratio = np.tile(np.repeat([0.1, 0.3, 0.6], 5), 6)
    phi = ratio + gen.normal(0, 0.05, ratio.size)
    by_ratio = -ratio + gen.normal(0, 0.05, ratio.size)  # success driven by the ratio alone
    r, n, n_samples, low, high = stats.partial_spearman(phi, by_ratio, ratio, samples)
    assert (n, n_samples) == (90, 6) and low < 0 < high and abs(r) < 0.3
    by_phi = -phi + gen.normal(0, 0.01, ratio.size)  # success driven by φ beyond the ratio
    r, _, _, low, high = stats.partial_spearman(phi, by_phi, ratio, samples)
    assert r < -0.5 and high < 0
    assert np.isnan(stats.partial_spearman(phi, np.ones_like(phi), ratio, samples)[0])
    one = stats.partial_spearman(phi, by_phi, ratio, np.zeros(90))  # all rows one sample: a value, no interval
    assert one[2] == 1 and np.isfinite(one[0]) and np.isnan(one[3])


def test_an_interval_over_samples_is_wider_than_one_that_counts_rows():
    """Rows that repeat their sample's pattern carry little new information: six samples whose correlations differ
    give a wide interval over samples, while a Fisher-z interval over the 90 rows (what counting rows gave) is
    narrow."""
    gen = np.random.default_rng(1)
    samples = np.repeat(np.arange(6), 15)
    strength = np.repeat([-0.9, -0.2, -0.7, 0.1, -0.8, -0.4], 15)  # each sample its own relation
    x = gen.normal(0, 1, 90)
    y = strength * x + gen.normal(0, 0.3, 90)
    r, n, k, low, high = stats.over_samples(stats.spearman, [x, y], samples)
    assert (n, k) == (90, 6) and low < r < high
    pooled = stats.spearman(x, y)
    half = 1.96 / np.sqrt(90 - 3)
    rows_low, rows_high = np.tanh(np.arctanh(pooled) - half), np.tanh(np.arctanh(pooled) + half)
    assert high - low > 2 * (rows_high - rows_low)


def test_decisive_counts_the_pairs_an_attack_alone_broke(params):
    """Strict level: PSNR above 12 dB breaks. At 0.3 linear alone breaks trials 0-2, both break trial 3, neither
    trial 4; at 0.6 dlg alone breaks trial 0. ρ = 0 and an attack run alone (idlg) count nowhere."""
    table = pd.DataFrame(
        rows("linear", "magnitude", {0.0: 40.0, 0.3: [20.0, 20, 20, 20, 5], 0.6: 5.0})
        + rows("dlg", "magnitude", {0.0: 40.0, 0.3: [5.0, 5, 5, 20, 5], 0.6: [20.0, 5, 5, 5, 5]})
        + rows("idlg", "random", {0.3: 30.0})
    )
    out = stats.decisive(table, params.guidelines.levels)["lenet"]["strict"]
    assert out["linear"] == {"alone_broke": 3, "pairs": 10, "samples": 5}
    assert out["dlg"] == {"alone_broke": 1, "pairs": 10, "samples": 5} and "idlg" not in out


def test_main_trials_read_the_client_update_the_guidelines_name(raw):
    one = pd.DataFrame(rows("dlg", "magnitude", {0.3: 30.0}))
    table = pd.concat([one, one.assign(batch_size=4, psnr=20.0)], ignore_index=True)
    params = parse_params(raw)
    assert set(results.main_trials(table, params.guidelines).psnr) == {30.0}
    raw["guidelines"]["update"] = {"batch_size": 4}
    assert set(results.main_trials(table, parse_params(raw).guidelines).psnr) == {20.0}
    raw["guidelines"]["update"] = {"batch_size": 4, "kind": "fedavg"}
    assert results.main_trials(table, parse_params(raw).guidelines).empty


def test_update_effect_pairs_each_update_against_the_guidelines_one_on_the_same_samples(params):
    """Batch 1 and batch 4 on the same five clients, two attacks, two metrics: the ρ = 0 cells of both metrics are one
    sample each, the strongest attacker's best recovered share is kept, a batch-4 update that ρ = 0 already protects is
    not a valid baseline, and the masked gap is batch 1 minus batch 4 per sample. Zero-fill rows are not read."""
    b4 = FEDSGD_B1 | {"batch_size": 4}
    table = []
    for update, base, masked, share in ((FEDSGD_B1, 40.0, [20, 21, 22, 23, 24], 1.0), (b4, 10.0, 15.0, 0.0)):
        for attack, bump in (("dlg", 0.0), ("linear", 1.0)):
            for metric in ("magnitude", "distance"):
                part = rows(attack, metric, {0.0: base + bump, 0.3: masked}) + rows(
                    attack, metric, {0.3: 99.0}, threat_model="zero_fill"
                )
                table += [r | update | {"recovered": share if attack == "linear" else 0.0} for r in part]
    federation = {"rounds": 4, "clients": 4, "server_lr": 1.0, "he_bytes_run": 0}
    table += [r | federation for r in rows("dlg", "magnitude", {0.3: 50.0})]  # rounds are `rounds_effect`'s
    effect = stats.update_effect(pd.DataFrame(table), params.guidelines)["lenet"]
    assert set(effect) == {"fedsgd B=1", "fedsgd B=4"}
    one, four = effect["fedsgd B=1"], effect["fedsgd B=4"]
    assert one["gap"] is None and one["unprotected"]["n_samples"] == 5
    assert one["unprotected"]["median"] == 41.0 and one["unprotected"]["recovered"] == 1.0
    assert all(one["unprotected"][level]["baseline"] == stats.BROKEN for level in ("strict", "moderate"))
    u = four["unprotected"]
    assert u["median"] == 11.0 and u["recovered"] == 0.0 and u["strict"]["protected"] == 5
    assert u["strict"]["baseline"] == u["moderate"]["baseline"] == stats.NOT_BROKEN  # 5 of 5 protected at ρ = 0
    g = four["gap"]
    assert g["n_samples"] == 5 and g["n_pairs"] == 10  # two metrics at ρ = 0.3 per sample
    assert g["median"] == pytest.approx(22.0 - 15.0) and g["p"] == pytest.approx(stats.min_wilcoxon_p(5))


def test_rounds_effect_pairs_each_policy_against_one_round_on_the_same_samples(params):
    """One round and four rounds (fresh, frozen) of the same five clients at magnitude 0.3, two attacks: the strongest
    attacker per policy, its protected samples, the run's HE cost and the per-sample gap to one round."""
    table = []
    policies = (({}, [20, 21, 22, 23, 24], 1), ({"mask_policy": "fresh"}, [30, 31, 32, 33, 34], 4))
    policies += (({"mask_policy": "frozen"}, [21, 22, 23, 24, 25], 4),)
    for change, psnr, rounds in policies:
        federation = {"rounds": rounds, "clients": 4, "server_lr": 1.0} if rounds > 1 else {}
        for attack, bump in (("dlg", -5.0), ("linear", 0.0)):
            part = rows(attack, "magnitude", {0.3: [p + bump for p in psnr]})
            table += [r | federation | change | {"he_bytes_run": rounds * r["he_bytes"]} for r in part]
    table += [r | {"batch_size": 4} for r in rows("dlg", "magnitude", {0.3: 9.0})]  # no rounds of its own
    effect = stats.rounds_effect(pd.DataFrame(table), params.guidelines)
    cell = effect["lenet"]["magnitude 0.3"]
    assert list(cell) == ["fedsgd B=1", "fedsgd B=1 R=4 fresh", "fedsgd B=1 R=4 frozen"]
    one, fresh, frozen = cell.values()
    assert fresh["one_round"] == one["one_round"] == "fedsgd B=1"
    assert one["gap"] is None and one["median"] == 22.0 and one["he_mb_run"] == pytest.approx(305e-6)
    assert fresh["median"] == 32.0 and fresh["he_mb_run"] == pytest.approx(4 * 305e-6)
    assert fresh["gap"]["median"] == 10.0 and fresh["gap"]["n_samples"] == 5
    assert fresh["gap"]["p"] == pytest.approx(stats.min_wilcoxon_p(5)) and frozen["gap"]["median"] == 1.0
    strict = params.guidelines.levels["strict"].psnr_max
    assert fresh["strict"]["protected"] == sum(p < strict for p in [30, 31, 32, 33, 34])
    assert "lenet" not in stats.rounds_effect(pd.DataFrame([r for r in table if r["rounds"] == 1]), params.guidelines)


def test_rounds_effect_pairs_one_round_under_the_attacks_that_ran_on_every_update(params):
    """One round ran DLG and the inversion, four rounds the inversion alone: the one-round side of the pair is the
    inversion's, not the stronger DLG's, so the gap measures the rounds and not the missing attack."""
    table = []
    for change, rounds, dlg, linear in (({}, 1, 40.0, 20.0), ({"mask_policy": "fresh"}, 4, None, 25.0)):
        federation = {"rounds": rounds, "clients": 4, "server_lr": 1.0} if rounds > 1 else {}
        for attack, psnr in (("dlg", dlg), ("linear", linear)):
            if psnr is not None:
                part = rows(attack, "distance", {0.3: [psnr + t for t in range(5)]})
                table += [r | federation | change | {"he_bytes_run": rounds * r["he_bytes"]} for r in part]
    cell = stats.rounds_effect(pd.DataFrame(table), params.guidelines)["lenet"]["distance 0.3"]
    one, fresh = cell["fedsgd B=1"], cell["fedsgd B=1 R=4 fresh"]
    assert one["attacks"] == fresh["attacks"] == "linear"
    assert one["median"] == 22.0 and fresh["gap"]["median"] == 5.0


def test_the_rounds_attacker_holds_round_zero_where_it_is_the_one_round_message(params):
    """Frozen and consensus rounds whose joint attack does worse than one round (10-14 dB against 20-24): the frozen
    run's round 0 is the one-round message, so its strongest attacker reaches one round's success and protects no more;
    the consensus run's round 0 is another mask, so its own attack stands."""
    table = []
    policies = (({}, 20.0, 1), ({"mask_policy": "frozen"}, 10.0, 4), ({"mask_policy": "consensus"}, 10.0, 4))
    for change, psnr, rounds in policies:
        federation = {"rounds": rounds, "clients": 4, "server_lr": 1.0} if rounds > 1 else {}
        part = rows("dlg", "magnitude", {0.6: [psnr + t for t in range(5)]})
        table += [r | federation | change | {"he_bytes_run": rounds * r["he_bytes"]} for r in part]
    cell = stats.rounds_effect(pd.DataFrame(table), params.guidelines)["lenet"]["magnitude 0.6"]
    one, frozen, consensus = cell["fedsgd B=1"], cell["fedsgd B=1 R=4 frozen"], cell["fedsgd B=1 R=4 consensus"]
    assert frozen["median"] == one["median"] == 22.0 and frozen["joint_median"] == 12.0
    assert frozen["first_round_better"] == 5 and frozen["gap"]["median"] == 0.0
    assert frozen["moderate"]["protected"] == one["moderate"]["protected"] == 0
    assert consensus["median"] == 12.0 and consensus["first_round_better"] == 0
    assert consensus["moderate"]["protected"] == 5 and consensus["gap"]["median"] == -10.0


def test_a_baseline_is_broken_only_when_the_interval_of_its_protected_share_ends_below_the_rule(params):
    level = params.guidelines.levels["moderate"]  # min_protected 0.5
    assert [stats.baseline(k, 5, level) for k in range(6)] == ["broken"] + ["undecided"] * 4 + ["not broken"]
    assert stats.baseline(2, 20, level) == "broken" and stats.baseline(8, 20, level) == "undecided"
