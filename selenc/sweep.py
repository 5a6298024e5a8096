"""The sweep stage: one architecture's grid through the engine (`engine.run_sweep`), written as its results table, stage
metrics and plot data.

    python -m selenc.sweep --arch <name>         # writes reports/results/sweep/<name>.csv, metrics and plot data

A failed run leaves no table behind: the outputs are removed first and each is written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from selenc import cache, data, results
from selenc.config import known_model, load_params
from selenc.engine import SweepFailed, run_sweep
from selenc.settings import ConfigError, Guidelines


def output_paths(arch: str, reports: Path) -> list[Path]:
    """The stage's outputs: the results table, the metrics JSON and the plot data (its success column named
    `success` whatever the modality, so that dvc.yaml's plot reads one column for every model)."""
    return [
        results.sweep_table(reports, arch),
        reports / "metrics" / f"sweep_{arch}.json",
        reports / "plots" / f"sweep_{arch}.csv",
    ]


def write_outputs(table: pd.DataFrame, arch: str, reports: Path, cfg: Guidelines) -> None:
    """Write `output_paths`, each atomically (a temporary file, then a rename)."""
    contents = [
        table.to_csv(index=False),
        json.dumps(results.stage_metrics(table, cfg), indent=2),
        results.plot_data(table, cfg).rename(columns={results.success_column(table)[0]: "success"}).to_csv(index=False),
    ]
    for path, text in zip(output_paths(arch, reports), contents, strict=True):
        cache.write_atomic(path, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selenc.sweep", description="Run one architecture's sweep.")
    parser.add_argument("--arch", required=True, help="a model of params.yaml's models")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--reports", type=Path, default=cache.REPO_ROOT / "reports", help="where outputs go")
    parser.add_argument(
        "--allow-errors", action="store_true", help="write the table even when trials failed (exploration only)"
    )
    args = parser.parse_args(argv)
    for stale in output_paths(args.arch, args.reports):  # a failed run must not leave an older table behind
        stale.unlink(missing_ok=True)
    try:
        params = load_params(args.params)
        known_model(params, args.arch)
        table = run_sweep(params, args.arch, allow_errors=args.allow_errors)
    except (ConfigError, data.DataError, SweepFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    write_outputs(table, args.arch, args.reports, params.guidelines)
    bad = int((table.status != "ok").sum())
    print(f"{len(table)} trials -> {output_paths(args.arch, args.reports)[0]}" + (f" ({bad} not ok)" if bad else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
