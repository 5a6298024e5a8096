"""Guidelines from the cell summary: the Wilson rule, every larger ratio, too few samples, the strongest attacker, what
each pick rests on (samples, interval, victim, budgets), the CLI."""

import json

import pandas as pd

from selenc import stats
from selenc.guidelines import (
    NONE_PROTECTS,
    PROTECTS,
    RECORD_KEYS,
    TOO_FEW,
    budgets,
    guidelines,
    main,
    min_protecting_ratio,
    samples_needed,
    strategy_table,
)
from tests.test_stats import rows


def summary(params, *groups):
    return stats.summary(pd.DataFrame([r for g in groups for r in g]), params.guidelines.levels)


def test_min_ratio_needs_the_interval_and_every_larger_ratio(params):
    strict = params.guidelines.levels["strict"]
    lucky = summary(params, rows("dlg", "random", {0.0: 35.0, 0.05: 11.0, 0.1: 25.0, 0.5: 9.0, 1.0: 8.0}))
    assert min_protecting_ratio(lucky[lucky.attack == "dlg"], "strict", strict) == 0.5  # 0.05 passes, 0.1 not
    four_of_five = summary(params, rows("dlg", "random", {0.5: [9.0, 9, 9, 9, 30], 1.0: 8.0}))
    assert min_protecting_ratio(four_of_five[four_of_five.attack == "dlg"], "strict", strict) == 1.0


def test_cells_the_rule_cannot_pass_are_too_few_samples_not_a_verdict(params):
    """min_protected 0.5 needs 4 samples, all protected (Wilson lower end 0.51; 3 of 3 give 0.44)."""
    strict = params.guidelines.levels["strict"]
    assert samples_needed(strict) == 4 and stats.wilson(3, 3)[0] < 0.5 < stats.wilson(4, 4)[0]
    few = summary(params, rows("dlg", "random", {0.0: 35.0, 0.5: 9.0, 1.0: 8.0}, trials=3))
    broken = summary(params, rows("dlg", "random", {0.0: 35.0, 0.5: 30.0, 1.0: 30.0}))
    records = guidelines(pd.concat([few, broken.assign(arch="cnn")]), params.guidelines)
    status = {(r["arch"], r["attack"], r["privacy_level"]): r["status"] for r in records}
    assert status[("lenet", "dlg", "strict")] == TOO_FEW and status[("cnn", "dlg", "strict")] == NONE_PROTECTS
    assert all(r["min_ratio"] is None for r in records if r["arch"] == "lenet")


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
    assert best["min_ratio"] == 0.5 and best["n_samples"] == 5 and best["protected_share"] == 1.0
    assert best["status"] == PROTECTS and best["attack_set"] == "dlg+linear" and not best["slice"]
    assert best["protected_share_ci"][0] > 0.5 and best["he_encrypt_s"] == 5.0 and best["he_bytes"] == 505
    # magnitude and random both need 0.5 against the strongest attacker: equal cost, so the name decides
    recommended = [r for r in records if r["recommended"] and r["privacy_level"] == "strict"]
    assert [(r["attack"], r["metric"]) for r in recommended] == [(stats.STRONGEST, "magnitude")]
    plan = strategy_table(records, table, params.guidelines).set_index("privacy_level")
    assert (plan.loc["strict", "metric"], plan.loc["strict", "ratio"]) == ("magnitude", 0.5)
    assert plan.loc["strict", "n_samples"] == 5 and plan.loc["strict", "adversary"] == "dlg+linear"
    assert plan.loc["strict", "other_victim"] == "not run on the trained victim"
    moderate = {(r["attack"], r["metric"]): r["min_ratio"] for r in records if r["privacy_level"] == "moderate"}
    assert moderate[("linear", "magnitude")] == 0.1 and moderate[("dlg", "random")] == 0.5


def test_a_pick_says_whether_it_holds_on_the_other_victim_and_slices_never_decide(params):
    untrained = rows("dlg", "magnitude", {0.0: 35, 0.5: 9, 1.0: 8})
    trained = [r | {"victim": "trained"} for r in rows("dlg", "magnitude", {0.0: 35, 0.5: [9, 9, 30, 30, 30]})]
    extra = rows("ig", "magnitude", {0.3: 9, 0.5: 9, 1.0: 8}, trials=3)  # ran on samples 0-2 only: a slice
    table = summary(params, untrained, trained, extra)
    records = guidelines(table, params.guidelines)
    sliced = [r for r in records if r["slice"]]
    assert sliced and all(r["status"] == TOO_FEW and not r["recommended"] for r in sliced)
    plan = strategy_table(records, table, params.guidelines).set_index("privacy_level")
    assert plan.loc["strict", "ratio"] == 0.5 and plan.loc["strict", "adversary"] == "dlg"
    assert plan.loc["strict", "other_victim"].startswith("does not hold on the trained victim: 0.40 [")
    assert "n = 5 (dlg)" in plan.loc["strict", "other_victim"]


def test_budgets_are_stated_against_the_published_procedures(params):
    text = budgets("dlg+linear", params.attacks)
    assert "dlg 2,000 steps of 6,000 published (0.33x)" in text and "linear 500 steps x 2 configurations" in text
    assert "published" not in text.split(";")[1]  # the linear inversion's image search has no published budget
    assert budgets("dager+token_leakage", params.attacks) == "dager analytic; token_leakage analytic"
    twice = params.attacks.model_copy(
        update={
            "image": params.attacks.image.model_copy(
                update={"ig": params.attacks.image.ig.model_copy(update={"restarts": 2, "tv": [0.003, 0.03]})}
            )
        }
    )
    assert "ig 1,000 steps x 2 restarts x 2 configurations of 24,000 published (0.17x)" in budgets("ig", twice)


def test_the_cli_writes_its_files_with_what_each_pick_rests_on(params, tmp_path):
    table = summary(params, rows("dlg", "magnitude", {0.0: 35, 0.5: 30, 1.0: 8}, trials=2))
    plan = strategy_table(guidelines(table, params.guidelines), table, params.guidelines)
    assert (plan.metric == "none").all() and plan.ratio.isna().all()
    (tmp_path / "results").mkdir()
    full = summary(params, rows("dlg", "magnitude", {0.0: 35, 0.5: 9, 1.0: 8}))
    full.to_csv(tmp_path / "results" / "summary.csv", index=False)
    assert main(["--reports", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "guidelines.json").read_text())
    assert {r["min_ratio"] for r in records if r["attack"] == stats.STRONGEST} == {0.5}
    text = (tmp_path / "guidelines.md").read_text()
    assert "magnitude" in text and "upper bound on protection" in text and "on the **untrained** victim" in text
    assert "- dlg: dlg 2,000 steps of 6,000 published" in text and "needs at least 4 samples" in text
    assert "he_mb" in text and "0.000505 ± 1e-06" in text and "he_bytes" not in text  # human units, with the spread
    metrics = json.loads((tmp_path / "metrics" / "guidelines.json").read_text())
    assert metrics["lenet.strict"]["n_samples"] == 5 and "not run" in metrics["lenet.strict"]["other_victim"]
    assert (tmp_path / "figures" / "guidelines.png").stat().st_size > 1000
    full.drop(columns="attack_set").to_csv(tmp_path / "results" / "summary.csv", index=False)
    assert main(["--reports", str(tmp_path)]) == 2 and not (tmp_path / "guidelines.json").exists()
    (tmp_path / "results" / "summary.csv").unlink()
    assert main(["--reports", str(tmp_path)]) == 2
