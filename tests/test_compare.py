"""The comparison stage: its metrics JSON (gaps, overstated cells, support, label leakage, T4) and its CLI, which
writes summary.csv, paired.csv and attacks.json or nothing at all."""

import json
import subprocess
import sys

import pandas as pd
import yaml

from selenc import compare, results
from tests.conftest import REPO
from tests.test_stats import rows


def table_of(rows_: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows_).assign(label_acc=1.0, support=300, n=1000)


def test_comparison_metrics_count_overstated_cells_and_the_support(params):
    aware = rows("dlg", "magnitude", {0.0: 40.0, 0.3: [30.0, 31, 32, 33, 34], 0.6: 9.0, 1.0: 5.0}, phi=0.2)
    zero = rows("dlg", "magnitude", {0.3: 10.0, 0.6: 8.0, 1.0: 5.0}, threat_model="zero_fill", phi=0.2)
    out = compare.comparison_metrics(table_of(aware + zero), params.guidelines, "strict", seed=0)["lenet"]
    # 0.3 overstated (zero-fill protected, mask-aware broken), 0.6 protected by both
    assert out["zero_fill_overstated_cells"] == {"overstated": 1, "cells": 2, "level": "strict"}
    gap = out["zero_fill_gap"]
    assert (gap["n_samples"], gap["n_pairs"]) == (5, 10) and gap["min_p"] == 0.0625 and out["shared_mask_gap"] is None
    assert out["support_threshold"] == {"median": 0.3, "min": 0.3, "max": 0.3}
    assert out["label_acc_unprotected"] == 1.0 and set(out["t4"]) == {"dlg"}
    moderate = compare.comparison_metrics(table_of(aware + zero), params.guidelines, "moderate", seed=0)["lenet"]
    assert moderate["zero_fill_overstated_cells"]["level"] == "moderate"


def test_comparison_metrics_read_the_attacker_the_guidelines_read(params):
    """Label accuracy and T4 come from the guidelines' rows: pointed at zero-fill, they are zero-fill's."""
    aware = rows("dlg", "magnitude", {0.0: 40.0, 0.3: 30.0, 0.6: 9.0}, phi=0.2)
    aware += rows("dlg", "random", {0.3: 32.0, 0.6: 12.0}, phi=0.1)
    zero = rows("dlg", "magnitude", {0.3: 10.0, 0.6: 8.0}, threat_model="zero_fill", phi=0.2)
    zero += rows("dlg", "random", {0.3: 12.0, 0.6: 9.0}, threat_model="zero_fill", phi=0.1)
    table = table_of(aware + zero)
    table.loc[table.threat_model == "zero_fill", "label_acc"] = 0.5
    zero_cfg = params.guidelines.model_copy(update={"threat_model": "zero_fill"})
    by_aware = compare.comparison_metrics(table, params.guidelines, "strict", seed=0)["lenet"]
    by_zero = compare.comparison_metrics(table, zero_cfg, "strict", seed=0)["lenet"]
    assert by_aware["t4"]["dlg"]["n"] == 20 and by_zero["t4"]["dlg"]["n"] == 20
    assert by_aware["t4"]["dlg"]["n_samples"] == 5  # four rows per sample (2 metrics x 2 ratios): five samples
    assert by_aware["label_acc_unprotected"] == 1.0 and by_zero["label_acc_unprotected"] is None  # no ρ = 0 row


def cli(tmp_path, table: pd.DataFrame, *args: str) -> subprocess.CompletedProcess:
    results.sweep_table(tmp_path, "lenet").parent.mkdir(parents=True, exist_ok=True)
    results.table(table.to_dict("records")).to_csv(results.sweep_table(tmp_path, "lenet"), index=False)
    cmd = [sys.executable, "-m", "selenc.compare", "--archs", "lenet", "--reports", str(tmp_path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)


def test_cli_writes_the_three_outputs_or_nothing(tmp_path):
    aware = rows("dlg", "magnitude", {0.0: 40.0, 0.3: 30.0, 0.6: 9.0}) + rows("dlg", "random", {0.3: 35.0, 0.6: 12.0})
    table = table_of(aware)
    done = cli(tmp_path, table)
    assert done.returncode == 0, done.stderr
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    assert set(summary.attack) == {"dlg", "strongest"} and (summary.n_samples == 5).all()
    paired = pd.read_csv(tmp_path / "results" / "paired.csv")
    assert paired[["metric_a", "metric_b"]].values.tolist() == [["magnitude", "random"]] * 2  # dlg and strongest
    assert (paired.n_samples == 5).all() and (paired.n_pairs == 10).all() and not paired.significant.any()
    metrics = json.loads((tmp_path / "metrics" / "attacks.json").read_text())
    assert set(metrics) == {"lenet"} and metrics["lenet"]["label_acc_unprotected"] == 1.0

    bad_level = cli(tmp_path, table, "--level", "paranoid")
    assert bad_level.returncode == 2 and "'paranoid': not a level of guidelines.levels" in bad_level.stderr
    assert not (tmp_path / "results" / "summary.csv").exists()  # a failed run leaves none of its outputs

    assert cli(tmp_path, table).returncode == 0
    unfinished = table.copy()
    unfinished.loc[0, "status"] = "timeout"
    failed = cli(tmp_path, unfinished)
    assert failed.returncode == 1 and "did not finish" in failed.stderr
    assert not any(
        (tmp_path / p).exists() for p in ("results/summary.csv", "results/paired.csv", "metrics/attacks.json")
    )


def test_cli_refuses_a_missing_table_and_bad_params(tmp_path):
    missing = subprocess.run(
        [sys.executable, "-m", "selenc.compare", "--archs", "cnn", "--reports", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert missing.returncode == 2 and "no results table for cnn" in missing.stderr
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["guidelines"]["victim"] = "pretrained"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    bad = cli(tmp_path, table_of(rows("dlg", "magnitude", {0.0: 40.0})), "--params", str(tmp_path / "p.yaml"))
    assert bad.returncode == 2 and "guidelines.victim" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
