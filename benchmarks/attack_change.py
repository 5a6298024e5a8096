"""What a change of the attacks changes: the strongest attacker's success before and after, paired by sample.

Usage: python benchmarks/attack_change.py BEFORE_DIR AFTER_DIR [--archs lenet,cnn] [--ratios 0.3,0.6]
                                          [--params params.yaml]

Reads `<arch>.csv` (a sweep's results table, e.g. reports/results/sweep/) from both folders, takes the strongest
attacker (`stats.trials`: the cell's adversary, not its slices) of the rows the guidelines read
(`results.main_trials`) at the given ratios for every metric, and pairs the two runs by (metric, ratio, sample).
Prints, per architecture and per (architecture, metric):

- the paired difference after − before of the success (PSNR, dB), averaged per sample first (the sample is the unit),
  with its median, bootstrap 95% interval over the samples, n samples and the exact two-sided Wilcoxon p (below 6
  samples it cannot reach 0.05: `stats.min_wilcoxon_p`);
- the protected share at each privacy level before and after over the paired rows, so that a changed decision shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from selenc.config import load_params
from selenc.results import main_trials
from selenc.stats import SAMPLE, STRONGEST, median_ci, min_wilcoxon_p, per_sample, trials, wilcoxon

REPO = Path(__file__).resolve().parent.parent


def strongest_rows(folder: Path, arch: str, ratios: list[float], params) -> pd.DataFrame:
    """The strongest attacker's rows of the main grid (the attacker and victim the guidelines read) at `ratios`."""
    table = pd.read_csv(folder / f"{arch}.csv")
    # tables written before a sample had a model initialisation, or costs a spread: the one initialisation, unknown
    table = table.assign(**{c: v for c, v in (("init", 0), ("he_bytes_sd", float("nan"))) if c not in table})
    rows = main_trials(trials(table, params.guidelines.levels), params.guidelines)
    chosen = (rows.attack == STRONGEST) & ~rows.slice.astype(bool) & rows.ratio.isin(ratios)
    return rows[chosen].set_index(["metric", "ratio", *SAMPLE])


def row(label: str, diff: pd.Series, before: pd.DataFrame, after: pd.DataFrame, levels) -> str:
    samples = per_sample(diff)
    med, low, high = median_ci(samples.to_numpy())
    p = wilcoxon(samples.to_numpy())
    shares = " | ".join(
        f"{before[f'protected_{name}'].mean():.2f} → {after[f'protected_{name}'].mean():.2f}" for name in levels
    )
    floor = f" (min p {min_wilcoxon_p(len(samples)):.3g})" if min_wilcoxon_p(len(samples)) > 0.05 else ""
    return (
        f"| {label} | {len(diff)} | {len(samples)} | {med:+.2f} [{low:+.2f}, {high:+.2f}] | {p:.3g}{floor} | {shares} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--archs", default="lenet,cnn")
    parser.add_argument("--ratios", default="0.3,0.6")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    levels = params.guidelines.levels
    ratios = [float(r) for r in args.ratios.split(",")]
    header = " | ".join(f"protected {name} (before → after)" for name in levels)
    print(f"| cells | rows | samples | after − before, per-sample median [95% CI] | Wilcoxon p | {header} |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(levels))
    for arch in args.archs.split(","):
        before = strongest_rows(args.before, arch, ratios, params)
        after = strongest_rows(args.after, arch, ratios, params)
        both = before.index.intersection(after.index)
        before, after = before.loc[both], after.loc[both]
        diff = after.success - before.success
        print(row(f"{arch}, every metric", diff, before, after, levels))
        for metric in sorted(both.get_level_values("metric").unique()):
            part = both.get_level_values("metric") == metric
            print(row(f"{arch} {metric}", diff[part], before[part], after[part], levels))


if __name__ == "__main__":
    main()
