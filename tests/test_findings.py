"""The notebooks' findings: every table and sentence computed from stage outputs, checked on inputs whose answer is
known."""

import io
import math

import pandas as pd

from selenc import findings, stats
from tests.conftest import FEDSGD_B1
from tests.test_stats import rows


def gap(n, median, low, high, p):
    return {
        "n_samples": n,
        "n_pairs": 2 * n,
        "median": median,
        "ci_low": low,
        "ci_high": high,
        "p": p,
        "min_p": 2 / 2**n,
    }


METRICS = {
    "lenet": {
        "zero_fill_gap": gap(16, 7.3, 3.8, 11.9, 6e-5),
        "decoy_gap": gap(3, 0.1, -0.2, 0.4, 0.25),
        "zero_fill_overstated_cells": {"overstated": 3, "cells": 8, "level": "moderate"},
        "shared_mask_gap": None,
        "trained_gap": gap(20, 0.5, -2.4, 2.4, 0.87),
        "support_threshold": {"median": 0.9, "min": 0.8, "max": 1.0},
        "label_acc_unprotected": 1.0,
        "t4": {"dlg": {"partial_spearman": -0.6, "n": 40, "n_samples": 5, "ci": [-0.77, -0.35], "per_ratio": {}}},
        "t4_spearman_cells": {"dlg": -0.9},
    },
    "bert": {"zero_fill_gap": None, "support_threshold": None, "label_acc_unprotected": None, "t4": {}},
}


def test_gap_table_and_sentences_carry_samples_interval_and_significance():
    table = findings.gap_table(METRICS, ["lenet", "bert"])
    assert table.comparison.tolist() == ["zero_fill_gap", "decoy_gap", "trained_gap"]
    assert table.significant.tolist() == [True, False, False] and table.samples.tolist() == [16, 3, 20]
    assert table.pairs.tolist() == [32, 6, 40] and table["smallest p possible"].iloc[1] == 0.25
    text = findings.gap_sentences(METRICS, ["lenet", "bert"])
    assert "over 16 samples (32 pairs)" in text and "**7.3**" in text and "[3.8, 11.9]" in text
    assert "**3 of 8** cells protected at the moderate level" in text  # the level compare counted at
    assert "p = 0.87, not significant" in text and "**bert**: no cell was run under both threat models" in text
    few = {"lenet": {"zero_fill_gap": gap(3, 2.0, 1.0, 3.0, 0.25), "zero_fill_overstated_cells": None}}
    assert "too few samples to reach 0.05 (smallest possible p 0.25)" in findings.gap_sentences(few, ["lenet"])


def test_t4_table_and_verdict_call_the_sign_only_when_the_interval_over_samples_excludes_zero():
    within = {"r0.3": {"spearman": -0.5, "n": 20, "n_samples": 5, "ci": [-0.9, -0.1]}}
    t4 = {
        "a": {"partial_spearman": -0.6, "n": 40, "n_samples": 5, "ci": [-0.77, -0.35], "per_ratio": within},
        "b": {"partial_spearman": 0.1, "n": 20, "n_samples": 5, "ci": [-0.3, 0.5], "per_ratio": {}},
        "c": {"partial_spearman": 0.7, "n": 20, "n_samples": 5, "ci": [0.2, 0.9], "per_ratio": {}},
        "d": {"partial_spearman": math.nan, "n": 3, "n_samples": 1, "ci": [math.nan, math.nan], "per_ratio": {}},
        "e": {"partial_spearman": -0.9, "n": 40, "n_samples": 2, "ci": [math.nan, math.nan], "per_ratio": {}},
    }
    table = findings.t4_table(t4, {"a": -0.9})
    assert table.loc["a", "within r0.3"] == "-0.50 [-0.90, -0.10] (5 samples)"
    assert table.loc["a", "across cells (ρ included)"] == -0.9 and table.loc["a", "samples"] == 5
    verdict = findings.t4_verdict(t4)
    assert "a: **-0.60** (95% CI [-0.77, -0.35] over 5 samples, 40 rows): negative beyond the ratio" in verdict
    assert "b: **0.10** (95% CI [-0.30, 0.50] over 5 samples, 20 rows): not significant" in verdict
    assert "c: **0.70**" in verdict and "): positive" in verdict
    assert "d: too few trials" in verdict and "e: -0.90 on 2 samples: too few samples for an interval" in verdict


def paired_rows() -> pd.DataFrame:
    base = {
        "arch": "lenet",
        "modality": "image",
        "threat_model": "mask_aware",
        "mask_source": "own",
        "ties": "index",
        "victim": "untrained",
        **FEDSGD_B1,
    }

    def comparison(attack, metric, n, diff, low, high, p, p_holm, significant):
        return (
            base
            | {"attack": attack, "metric_a": metric, "metric_b": "random", "n_samples": n, "n_pairs": 2 * n}
            | {"median_diff": diff, "ci_low": low, "ci_high": high, "p": p, "min_p": 2 / 2**n, "p_holm": p_holm}
            | {"significant": significant}
        )

    return pd.DataFrame(
        [
            comparison("strongest", "distance", 10, -2.8, -3.0, -1.9, 0.002, 0.02, True),
            comparison("strongest", "layer_last", 10, 7.9, 6.4, 12.3, 0.002, 0.02, True),
            comparison("strongest", "weight", 10, -0.1, -1.0, 1.0, 0.8, 1.0, False),
            comparison("dlg", "weight", 5, -0.1, -1.0, 1.0, 0.8, 1.0, False),
        ]
    )


def test_paired_findings_count_and_name_the_significant_comparisons(params):
    paired = paired_rows()
    counts = findings.paired_counts(paired)
    assert counts.loc[("lenet", "strongest")].tolist() == [3, 2, 10, 10, 0]
    assert counts.loc[("lenet", "dlg")].tolist() == [1, 0, 5, 5, 1]  # five samples can never reach 0.05
    assert findings.significant_pairs(paired).metric_a.tolist() == ["distance", "layer_last"]
    verdict = findings.strongest_verdict(paired, params.guidelines)
    assert "**1 of 3** comparisons find metric a significantly better" in verdict and "1 significantly worse" in verdict
    assert "lenet distance vs random -2.8 [-3, -1.9] (10 samples)" in verdict and "layer_last vs" not in verdict
    assert "2/2^10 = 0.00195" in findings.no_significance_note(paired)
    empty = pd.read_csv(io.StringIO(",".join(paired.columns) + "\n"))  # paired.csv of a grid with no pairs
    assert findings.significant_pairs(empty).empty and "**0 of 0**" in findings.strongest_verdict(
        empty, params.guidelines
    )


def test_sweep_findings_and_victim_medians_read_the_guidelines_rows(params):
    table = pd.DataFrame(
        rows("dlg", "magnitude", {0.0: 40.0, 0.3: 20.0, 1.0: 5.0}) + rows("dlg", "random", {0.0: 40.0, 0.3: 30.0})
    )
    text = findings.sweep_findings(table, "lenet", params.guidelines)
    assert "PSNR (dB) 40.00 unprotected (ρ=0, 10 samples) and 5.00 fully encrypted (ρ=1, 5 samples)" in text
    assert "At ρ=0.3 the best metric is **magnitude** (20.00, 5 samples), the worst random (30.00, 5 samples)" in text
    assert findings.victim_medians(table, "lenet", params.guidelines) is None
    trained = pd.DataFrame(rows("dlg", "magnitude", {0.3: 25.0})).assign(victim="trained")
    medians = findings.victim_medians(pd.concat([table, trained]), "lenet", params.guidelines)
    assert medians.loc[("dlg", "magnitude", 0.3)].to_dict() == {
        ("median", "trained"): 25.0,
        ("median", "untrained"): 20.0,
        ("size", "trained"): 5,
        ("size", "untrained"): 5,
    }
    zero_fill = params.guidelines.model_copy(update={"threat_model": "zero_fill"})
    assert findings.sweep_findings(table, "lenet", zero_fill).startswith("No finished trial")


def test_cell_counts_median_tables_and_support_table(params):
    base = {
        "arch": "lenet",
        "modality": "image",
        "threat_model": "mask_aware",
        "mask_source": "own",
        "ties": "index",
        "victim": "untrained",
        **FEDSGD_B1,
    }
    columns = ["attack", "attack_set", "slice", "metric", "n_samples", "median"]
    cells = [
        ("dlg", "dlg", False, "magnitude", 5, 12.0),
        ("dlg", "dlg", False, "random", 3, 20.0),
        ("strongest", "dlg", False, "magnitude", 5, 12.0),
        ("strongest", "dlg+ig", True, "magnitude", 3, 99.0),
    ]
    summary = pd.DataFrame([base | {"ratio": 0.3} | dict(zip(columns, c, strict=True)) for c in cells])
    counts = findings.cell_counts(summary, params.guidelines)
    assert counts.loc[("lenet", "dlg", "dlg")].tolist() == [2, 3, 5]
    assert counts.loc[("lenet", "strongest", "dlg+ig")].tolist() == [1, 3, 3]
    medians, fewest, most = findings.median_tables(summary, params.guidelines, "lenet")[0.3]
    assert (fewest, most) == (3, 5) and medians.loc["strongest", "magnitude"] == 12.0  # the slice stays out
    support = findings.support_table(METRICS, ["lenet", "bert"])
    assert support.iloc[0, 1:].tolist() == [0.9, 0.8, 1.0, 1.0] and support.iloc[1, 1:].isna().all()


def test_update_findings_say_where_the_attack_is_not_a_valid_baseline(params):
    b4 = FEDSGD_B1 | {"batch_size": 4}
    table = []
    for update, base, masked in ((FEDSGD_B1, 40.0, 20.0), (b4, 10.0, [15.0, 15.0, 15.0, 11.0, 11.0])):
        for metric in ("magnitude", "distance"):
            table += [r | update | {"recovered": 0.5} for r in rows("dlg", metric, {0.0: base, 0.3: masked})]
    table = pd.DataFrame(table)
    metrics = {"lenet": {"modality": "image", "updates": stats.update_effect(table, params.guidelines)}}
    metrics["lenet"]["updates"] = metrics["lenet"]["updates"]["lenet"]
    shown = findings.update_table(metrics, ["lenet"]).set_index("update")
    assert shown.loc["fedsgd B=4", "strict: baseline"] == "not broken"
    assert shown.loc["fedsgd B=1", "strict: baseline"] == "broken"
    assert shown.loc["fedsgd B=4", "strict: protected at ρ=0"] == "5/5" and shown.loc["fedsgd B=4", "gap samples"] == 5
    text = findings.update_sentences(metrics, ["lenet"], params.guidelines)
    assert "**lenet, fedsgd B=4**" in text and "**not a valid baseline** at the strict and moderate level" in text
    assert "lower than under fedsgd B=1 by a median of **5**" in text and "not significant: too few samples" in text
    assert "a valid baseline (it breaks the update) at the strict and moderate level" in text
    assert "recovers 50% of the images at 30 dB or more" in text
    protection = findings.update_protection(stats.summary(table, params.guidelines.levels), params.guidelines, "lenet")
    strict = protection["strict"]
    assert (
        strict.loc[("magnitude", 0.3), "fedsgd B=4"] == "2/5" and strict.loc[("magnitude", 0.3), "fedsgd B=1"] == "0/5"
    )
    assert strict.loc[("magnitude", 0.0), "fedsgd B=4"] == "5/5 ✓"
    assert (
        findings.update_protection(
            stats.summary(table[table.batch_size == 1], params.guidelines.levels), params.guidelines, "lenet"
        )
        is None
    )


def test_rounds_findings_say_which_policy_holds_one_rounds_protection_and_at_what_cost(params):
    """Magnitude 0.3 protects one round (5-9 dB); four fresh rounds break it (24-28 dB), frozen ones keep it."""
    table = []
    policies = (({}, 5.0, 1), ({"mask_policy": "fresh"}, 24.0, 4), ({"mask_policy": "frozen"}, 6.0, 4))
    for change, psnr, rounds in policies:
        federation = {"rounds": rounds, "clients": 4, "server_lr": 1.0} if rounds > 1 else {}
        part = rows("dlg", "magnitude", {0.3: [psnr + t for t in range(5)]})
        table += [r | federation | change | {"he_bytes_run": rounds * 1_000_000} for r in part]
    rounds = stats.rounds_effect(pd.DataFrame(table), params.guidelines)["lenet"]
    metrics = {"lenet": {"modality": "image", "rounds": rounds}}
    shown = findings.rounds_table(metrics, ["lenet"]).set_index("update")
    assert shown.loc["fedsgd B=1 R=4 fresh", "strict: protected"] == "0/5"
    assert shown.loc["fedsgd B=1", "strict: protected"] == "5/5"
    assert shown.loc["fedsgd B=1 R=4 frozen", "HE MB per run"] == 4
    assert shown.loc["fedsgd B=1 R=4 fresh", "gap vs 1 round"] == 19.0
    text = findings.rounds_sentences(metrics, ["lenet"], params.guidelines)
    assert (
        "**lenet, magnitude 0.3** (strongest of dlg)" in text
        and "*fedsgd B=1 R=4 fresh*: median PSNR (dB) **26**" in text
    )
    assert "does not protect at the strict level (0/5, one round 5/5)" in text
    assert "*fedsgd B=1 R=4 frozen*" in text and "protects at the strict level (5/5, one round 5/5)" in text
    assert "+19 per sample against one round" in text and "4 MB of HE per run" in text
    assert findings.rounds_sentences({"lenet": {}}, ["lenet"], params.guidelines) == "No cell ran over several rounds."
