"""The notebooks' findings: every table and sentence computed from stage outputs, checked on inputs whose answer is
known."""

import io
import math

import pandas as pd

from selenc import findings
from tests.test_stats import rows


def gap(n, median, low, high, p):
    return {"n": n, "median": median, "ci_low": low, "ci_high": high, "p": p}


METRICS = {
    "lenet": {
        "zero_fill_gap": gap(16, 7.3, 3.8, 11.9, 6e-5),
        "zero_fill_overstated_cells": {"overstated": 3, "cells": 8, "level": "moderate"},
        "shared_mask_gap": None,
        "trained_gap": gap(20, 0.5, -2.4, 2.4, 0.87),
        "support_threshold": {"median": 0.9, "min": 0.8, "max": 1.0},
        "label_acc_unprotected": 1.0,
        "t4": {"dlg": {"partial_spearman": -0.6, "n": 40, "ci": [-0.77, -0.35], "per_ratio": {}}},
        "t4_spearman_cells": {"dlg": -0.9},
    },
    "bert": {"zero_fill_gap": None, "support_threshold": None, "label_acc_unprotected": None, "t4": {}},
}


def test_gap_table_and_sentences_carry_n_interval_and_significance():
    table = findings.gap_table(METRICS, ["lenet", "bert"])
    assert table.comparison.tolist() == ["zero_fill_gap", "trained_gap"]
    assert table.significant.tolist() == [True, False] and table.pairs.tolist() == [16, 20]
    text = findings.gap_sentences(METRICS, ["lenet", "bert"])
    assert "over 16 paired samples" in text and "**7.3**" in text and "[3.8, 11.9]" in text
    assert "**3 of 8** cells protected at the moderate level" in text  # the level compare counted at
    assert "p = 0.87, not significant" in text and "**bert**: no cell was run under both threat models" in text


def test_t4_table_and_verdict_call_the_sign_only_when_the_interval_excludes_zero():
    t4 = {
        "a": {
            "partial_spearman": -0.6,
            "n": 40,
            "ci": [-0.77, -0.35],
            "per_ratio": {"r0.3": {"spearman": -0.5, "n": 20, "p": 0.02}},
        },
        "b": {"partial_spearman": 0.1, "n": 20, "ci": [-0.3, 0.5], "per_ratio": {}},
        "c": {"partial_spearman": 0.7, "n": 20, "ci": [0.2, 0.9], "per_ratio": {}},
        "d": {"partial_spearman": math.nan, "n": 3, "ci": [math.nan, math.nan], "per_ratio": {}},
    }
    table = findings.t4_table(t4, {"a": -0.9})
    assert (
        table.loc["a", "within r0.3"] == "-0.50 (n=20, p=0.02)" and table.loc["a", "across cells (ρ included)"] == -0.9
    )
    verdict = findings.t4_verdict(t4)
    assert "a: **-0.60** (95% CI [-0.77, -0.35], n = 40): negative beyond the ratio" in verdict
    assert "b: **0.10** (95% CI [-0.30, 0.50], n = 20): not significant" in verdict
    assert "c: **0.70**" in verdict and "): positive" in verdict
    assert "d: too few trials" in verdict


def paired_rows() -> pd.DataFrame:
    base = {"arch": "lenet", "threat_model": "mask_aware", "mask_source": "own", "ties": "index", "victim": "untrained"}
    out = [
        base
        | {
            "attack": "strongest",
            "metric_a": "distance",
            "metric_b": "random",
            "n": 10,
            "median_diff": -2.8,
            "ci_low": -3.0,
            "ci_high": -1.9,
            "p": 0.002,
            "p_holm": 0.02,
            "significant": True,
        },
        base
        | {
            "attack": "strongest",
            "metric_a": "layer_last",
            "metric_b": "random",
            "n": 10,
            "median_diff": 7.9,
            "ci_low": 6.4,
            "ci_high": 12.3,
            "p": 0.002,
            "p_holm": 0.02,
            "significant": True,
        },
        base
        | {
            "attack": "strongest",
            "metric_a": "weight",
            "metric_b": "random",
            "n": 10,
            "median_diff": -0.1,
            "ci_low": -1.0,
            "ci_high": 1.0,
            "p": 0.8,
            "p_holm": 1.0,
            "significant": False,
        },
        base
        | {
            "attack": "dlg",
            "metric_a": "weight",
            "metric_b": "random",
            "n": 5,
            "median_diff": -0.1,
            "ci_low": -1.0,
            "ci_high": 1.0,
            "p": 0.8,
            "p_holm": 1.0,
            "significant": False,
        },
    ]
    return pd.DataFrame(out)


def test_paired_findings_count_and_name_the_significant_comparisons(params):
    paired = paired_rows()
    counts = findings.paired_counts(paired)
    assert counts.loc[("lenet", "strongest")].tolist() == [3, 2, 10, 10]
    assert findings.significant_pairs(paired).metric_a.tolist() == ["distance", "layer_last"]
    verdict = findings.strongest_verdict(paired, params.guidelines)
    assert "**1 of 3** comparisons find metric a significantly better" in verdict and "1 significantly worse" in verdict
    assert "lenet distance vs random -2.8 [-3, -1.9] (n = 10)" in verdict and "layer_last vs" not in verdict
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
    assert "PSNR (dB) 40.00 unprotected (ρ=0, n = 10) and 5.00 fully encrypted (ρ=1, n = 5)" in text
    assert "At ρ=0.3 the best metric is **magnitude** (20.00, n = 5), the worst random (30.00, n = 5)" in text
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


def test_cell_counts_and_support_table(params):
    summary = pd.DataFrame(
        [
            {
                "arch": "lenet",
                "attack": "dlg",
                "threat_model": "mask_aware",
                "mask_source": "own",
                "ties": "index",
                "victim": "untrained",
                "n": n,
            }
            for n in (5, 3)
        ]
    )
    assert findings.cell_counts(summary, params.guidelines).loc[("lenet", "dlg")].tolist() == [2, 3, 5]
    support = findings.support_table(METRICS, ["lenet", "bert"])
    assert support.iloc[0, 1:].tolist() == [0.9, 0.8, 1.0, 1.0] and support.iloc[1, 1:].isna().all()
