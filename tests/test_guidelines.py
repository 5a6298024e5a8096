"""Guidelines from the cell summary: the Wilson rule, every larger ratio, the strongest attacker, the CLI."""

import json

import pandas as pd

from selenc import stats
from selenc.guidelines import RECORD_KEYS, guidelines, main, min_protecting_ratio, strategy_table
from tests.test_stats import rows


def summary(params, *groups):
    return stats.summary(pd.DataFrame([r for g in groups for r in g]), params.guidelines.levels)


def test_min_ratio_needs_the_interval_and_every_larger_ratio(params):
    strict = params.guidelines.levels["strict"]
    lucky = summary(params, rows("dlg", "random", {0.0: 35.0, 0.05: 11.0, 0.1: 25.0, 0.5: 9.0, 1.0: 8.0}))
    assert min_protecting_ratio(lucky[lucky.attack == "dlg"], "strict", strict) == 0.5  # 0.05 passes, 0.1 not
    few = summary(params, rows("dlg", "random", {0.0: 35.0, 0.5: 9.0, 1.0: 8.0}, trials=3))  # 3 of 3: low end 0.44
    assert min_protecting_ratio(few[few.attack == "dlg"], "strict", strict) is None
    four_of_five = summary(params, rows("dlg", "random", {0.5: [9.0, 9, 9, 9, 30], 1.0: 8.0}))
    assert min_protecting_ratio(four_of_five[four_of_five.attack == "dlg"], "strict", strict) == 1.0


def test_recommendation_reads_the_strongest_attacker(params):
    table = summary(
        params,
        rows("dlg", "magnitude", {0.0: 35, 0.1: 10, 0.5: 9, 1.0: 8}),
        rows("linear", "magnitude", {0.0: 35, 0.1: 15, 0.5: 9, 1.0: 8}),
        rows("dlg", "random", {0.0: 35, 0.1: 30, 0.5: 11, 1.0: 8}),
        rows("linear", "random", {0.0: 35, 0.1: 30, 0.5: 10, 1.0: 8}),
    )
    records = guidelines(table, params.guidelines)
    assert all(set(r) == set(RECORD_KEYS) for r in records)
    strict = {(r["attack"], r["metric"]): r for r in records if r["privacy_level"] == "strict"}
    assert strict[("dlg", "magnitude")]["min_ratio"] == 0.1 and strict[("linear", "magnitude")]["min_ratio"] == 0.5
    best = strict[(stats.STRONGEST, "magnitude")]
    assert best["min_ratio"] == 0.5 and best["n"] == 5 and best["protected_share"] == 1.0
    assert best["protected_share_ci"][0] > 0.5 and best["he_encrypt_s"] == 5.0 and best["he_bytes"] == 505
    # magnitude and random both need 0.5 against the strongest attacker: equal cost, so the name decides
    recommended = [r for r in records if r["recommended"] and r["privacy_level"] == "strict"]
    assert [(r["attack"], r["metric"]) for r in recommended] == [(stats.STRONGEST, "magnitude")]
    plan = strategy_table(records).set_index("privacy_level")
    assert (plan.loc["strict", "metric"], plan.loc["strict", "ratio"]) == ("magnitude", 0.5)
    moderate = {(r["attack"], r["metric"]): r["min_ratio"] for r in records if r["privacy_level"] == "moderate"}
    assert moderate[("linear", "magnitude")] == 0.1 and moderate[("dlg", "random")] == 0.5


def test_no_protecting_ratio_is_said_and_the_cli_writes_its_files(params, tmp_path):
    table = summary(params, rows("dlg", "magnitude", {0.0: 35, 0.5: 30, 1.0: 8}, trials=2))
    plan = strategy_table(guidelines(table, params.guidelines))
    assert (plan.metric == "none").all() and plan.ratio.isna().all()
    (tmp_path / "results").mkdir()
    full = summary(params, rows("dlg", "magnitude", {0.0: 35, 0.5: 9, 1.0: 8}))
    full.to_csv(tmp_path / "results" / "summary.csv", index=False)
    assert main(["--reports", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "guidelines.json").read_text())
    assert {r["min_ratio"] for r in records if r["attack"] == stats.STRONGEST} == {0.5}
    assert "magnitude" in (tmp_path / "guidelines.md").read_text()
    assert (tmp_path / "figures" / "guidelines.png").stat().st_size > 1000
    (tmp_path / "results" / "summary.csv").unlink()
    assert main(["--reports", str(tmp_path)]) == 2 and not (tmp_path / "guidelines.json").exists()
