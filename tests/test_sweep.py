"""The sweep stage's CLI: one clear line for bad params, no table when trials failed, the outputs it writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from selenc import results, sweep
from selenc.results import COLUMNS
from tests.conftest import REPO, with_changes
from tests.test_engine import TINY


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd)


def sweep_cli(params: Path, reports: Path, cache: Path) -> subprocess.CompletedProcess:
    """`python -m selenc.sweep --arch lenet` with these params, reports folder and trial cache."""
    cmd = [sys.executable, "-m", "selenc.sweep", "--arch", "lenet", "--params", str(params), "--reports", str(reports)]
    env = {**os.environ, "SELENC_CACHE_DIR": str(cache)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)


def test_cli_config_error_is_one_line_on_stderr(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text((REPO / "params.yaml").read_text().replace("seed: 0 ", "seed: -1 ", 1))
    for module in ("selenc.sweep", "selenc.theory_check"):
        args = ["--params", str(bad), "--reports", str(tmp_path / "reports")]
        out = _cli(module, *(["--arch", "lenet"] if module == "selenc.sweep" else []), *args)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.strip().splitlines() == [
            f"error: {bad}: study.seed: Input should be greater than or equal to 0 (got -1)"
        ]


def test_cli_sweep_with_failed_trials_writes_no_table(raw, tmp_path):
    changes = TINY | {"sweep.time_limit_s": 0.5, "attacks.image.dlg.steps": 100_000}
    params = json.loads(with_changes(raw, **changes).model_dump_json())
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    reports = tmp_path / "reports"
    results.sweep_table(reports, "lenet").parent.mkdir(parents=True)
    results.sweep_table(reports, "lenet").write_text("an older table\n")
    env_run = sweep_cli(path, reports, tmp_path / "c")
    assert env_run.returncode == 1
    assert "6 of 6 trials did not finish" in env_run.stderr and "6 x timeout" in env_run.stderr
    assert not results.sweep_table(reports, "lenet").exists() and not (reports / "metrics").exists()
    assert not (tmp_path / "c" / "trials" / "lenet").exists() or not any(
        (tmp_path / "c" / "trials" / "lenet").iterdir()
    )


def test_cli_writes_the_table_metrics_and_plot_data_of_the_guidelines_rows(raw, tmp_path):
    """The stage's three outputs: the table (every trial), and metrics and plot data over the rows the guidelines
    read; pointing the guidelines at zero-fill changes the metrics, not the table."""
    grid = TINY["sweep.lenet"] | {"threat_models": ["mask_aware", "zero_fill"], "ratios": [0.5], "trials": 1}
    outputs = {}
    for threat in ("mask_aware", "zero_fill"):
        changes = TINY | {"sweep.lenet": grid, "guidelines.threat_model": threat}
        path = tmp_path / f"{threat}.yaml"
        path.write_text(yaml.safe_dump(json.loads(with_changes(raw, **changes).model_dump_json())))
        reports = tmp_path / threat
        done = sweep_cli(path, reports, tmp_path / "cache")
        assert done.returncode == 0, done.stderr[-2000:]
        assert [p.exists() for p in sweep.output_paths("lenet", reports)] == [True, True, True]
        table = pd.read_csv(results.sweep_table(reports, "lenet"))
        assert list(table.columns) == list(COLUMNS) and len(table) == 4
        outputs[threat] = (table, json.loads((reports / "metrics" / "sweep_lenet.json").read_text()))
    (aware, aware_metrics), (zero, zero_metrics) = outputs["mask_aware"], outputs["zero_fill"]
    pd.testing.assert_frame_equal(
        aware.drop(columns=["attack_s", "trial_s"]), zero.drop(columns=["attack_s", "trial_s"])
    )
    for threat, metrics in (("mask_aware", aware_metrics), ("zero_fill", zero_metrics)):
        rows = aware[(aware.threat_model == threat) & (aware.metric == "magnitude")]
        assert metrics["psnr"]["dlg"]["magnitude"]["r0.5"] == round(float(rows.psnr.clip(upper=100).mean()), 4)
    assert metrics["trials"] == 4 and metrics["not_ok"] == 0
