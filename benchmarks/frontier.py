"""Trials the frontier's adaptive search spent against a fixed grid that answers the same questions.

Usage: python benchmarks/frontier.py [--params params.yaml] [--reports reports] [--archs lenet,cnn,bert,gpt2]

Reads each architecture's frontier outputs (`python -m selenc.frontier --arch <arch>`, or `dvc repro`): the distinct
trials the search ran (reports/metrics/frontier_<arch>.json) and its probes. The fixed grid is what the same
decisions need without a search: every ratio of `frontier.<arch>`'s grid for every metric, victim and tie rule, with
`frontier.n_max` samples each (the most any probe may take) and every attack of the frontier, counted as distinct
computations (`grid.Trial.identity`: ρ = 0 and ρ = 1 once for all metrics). Goal: the search needs >= 10x fewer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from selenc.config import load_params
from selenc.frontier import groups_of, probe_trials
from selenc.grid import distinct
from selenc.results import frontier_tables

REPO = Path(__file__).resolve().parent.parent


def fixed_grid_trials(params, arch: str) -> int:
    spec = params.frontier.grid(arch)
    groups = groups_of(params, arch)
    samples = range(params.frontier.n_max)
    return len(distinct([t for g in groups for r in spec.grid() for t in probe_trials(params, arch, g, r, samples)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--reports", type=Path, default=REPO / "reports")
    parser.add_argument("--archs", default="lenet,cnn,bert,gpt2")
    args = parser.parse_args()
    params = load_params(args.params)
    rows = []
    for arch in args.archs.split(","):
        metrics_path = args.reports / "metrics" / f"frontier_{arch}.json"
        if not metrics_path.is_file():
            print(f"(no {metrics_path}: run `python -m selenc.frontier --arch {arch}` first)")
            continue
        spent = json.loads(metrics_path.read_text())["trials"]
        found_csv, probes_csv = frontier_tables(args.reports, arch)
        probes = pd.read_csv(probes_csv)
        found = pd.read_csv(found_csv)
        fixed = fixed_grid_trials(params, arch)
        spec = params.frontier.grid(arch)
        rows.append(
            {
                "arch": arch,
                "searches": len(found),
                "grid ratios": len(spec.grid()),
                "n_max": params.frontier.n_max,
                "attacks": "+".join(spec.attacks),
                "fixed-grid trials": fixed,
                "probed cells": len(probes),
                "search trials": spent,
                "fewer": f"{fixed / spent:.1f}x",
            }
        )
    if rows:
        table = pd.DataFrame(rows)
        total = table[["fixed-grid trials", "search trials"]].sum()
        print(table.to_markdown(index=False))
        print(
            f"\nall: {total['fixed-grid trials']:,} fixed-grid trials vs {total['search trials']:,} searched "
            f"({total['fixed-grid trials'] / total['search trials']:.1f}x fewer; goal >= 10x)"
        )


if __name__ == "__main__":
    main()
