"""The comparison stage: every sweep's trials into per-cell statistics, paired comparisons and the stage metrics.

    python -m selenc.compare     # reads reports/results/<arch>.csv; writes reports/results/{summary,paired}.csv and
                                 # reports/metrics/attacks.json

- summary.csv: one row per cell and adversary, the strongest attacker's included (`stats.summary`).
- paired.csv: each metric against random at equal ratio on the same samples (`stats.paired_metrics`).
- attacks.json, per architecture: how much better the mask-aware attacker does than the zero-fill one (and how many
  cells zero-fill calls protected that the mask-aware attacker breaks), the shared-mask, decoy and trained-victim
  gaps, all over 0 < ρ < 1 with their samples (the unit of every test), pairs, intervals and p; the support threshold
  (the share of the update that is non-zero: a ratio at or above it can hide every non-zero coordinate); label
  accuracy with nothing encrypted; T4 per attack beyond the ratio; `decisive`, per level, the masked (cell, sample)
  pairs each attack alone broke among those it ran on beside another (`stats.decisive`; the frontier's attack sets
  lean on it); `updates`, per client update (batch size, FedAvg), the strongest attacker with nothing encrypted
  (median, share recovered, whether it is a valid baseline per level) and its paired gap to the guidelines' update on
  the same samples (`stats.update_effect`); `rounds`, per masked cell run over several rounds, the strongest attacker
  per mask policy against one round on the same samples, with the HE cost of the whole run (`stats.rounds_effect`).

Every p-value and interval counts samples, never rows (`stats`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from selenc import cache, stats
from selenc.config import load_params
from selenc.results import main_trials, success_column, sweep_table
from selenc.settings import ConfigError, Guidelines, PrivacyLevel


def read_tables(reports: Path, archs: list[str]) -> pd.DataFrame:
    """The sweeps' results tables, one below the other."""
    missing = [a for a in archs if not sweep_table(reports, a).is_file()]
    if missing:
        raise ConfigError(f"no results table for {', '.join(missing)}: run `python -m selenc.sweep --arch <name>`")
    return pd.concat([pd.read_csv(sweep_table(reports, a)) for a in archs], ignore_index=True)


def overstated(table: pd.DataFrame, level: str, levels: dict[str, PrivacyLevel]) -> pd.DataFrame:
    """Per architecture: cells (0 < ρ < 1) where the zero-fill attacker's protected share is at least one half and the
    mask-aware attacker's is below, out of the cells run under both."""
    rows = stats.trials(table, levels)
    rows = rows[(rows.ratio > 0) & (rows.ratio < 1) & (rows.attack != stats.STRONGEST)]
    keys = [c for c in stats.CELL if c != "threat_model"]
    share = rows.pivot_table(index=keys, columns="threat_model", values=f"protected_{level}", aggfunc="mean")
    if "zero_fill" not in share or "mask_aware" not in share:
        return pd.DataFrame(columns=["arch", "cells", "overstated"])
    both = share.dropna(subset=["zero_fill", "mask_aware"])
    flag = (both.zero_fill >= 0.5) & (both.mask_aware < 0.5)
    return flag.groupby(level="arch").agg(["size", "sum"]).rename(columns={"size": "cells", "sum": "overstated"})


def support_threshold(table: pd.DataFrame) -> dict[str, dict]:
    """Per architecture: the share of the untrained victim's update coordinates that are non-zero (median and range
    over samples)."""
    if "support" not in table:  # tables written before the column existed
        return {}
    ok = table[(table.status == "ok") & table.support.notna() & (table.victim == "untrained")]
    out = {}
    for arch, group in ok.groupby("arch"):
        share = (group.support / group.n).drop_duplicates()
        out[arch] = {"median": float(share.median()), "min": float(share.min()), "max": float(share.max())}
    return out


def comparison_metrics(table: pd.DataFrame, cfg: Guidelines, level: str, seed: int) -> dict:
    """The stage's metrics JSON (see the module docstring); label accuracy and T4 read `results.main_trials`, the
    zero-fill count the privacy level `level`."""
    levels = cfg.levels
    modality = table.groupby("arch").modality.first()
    out: dict = {arch: {"modality": modality[arch]} for arch in sorted(table.arch.unique())}
    for name, (column, better, worse) in stats.GAPS.items():
        gaps = stats.paired_gap(table, column, better, worse, seed).set_index("arch")
        for arch in out:
            if arch not in gaps.index:
                out[arch][name] = None
                continue
            g = gaps.loc[arch]
            out[arch][name] = (
                {"n_samples": int(g.n_samples), "n_pairs": int(g.n_pairs)}
                | {k: _round(g[k]) for k in ("median", "ci_low", "ci_high")}
                | {"p": float(f"{g.p:.3g}"), "min_p": float(f"{g.min_p:.3g}")}
            )
    for arch, per_update in stats.update_effect(table, cfg, seed).items():
        out[arch]["updates"] = {label: _rounded(entry) for label, entry in per_update.items()}
    for arch, per_cell in stats.rounds_effect(table, cfg, seed).items():
        out[arch]["rounds"] = {cell: _rounded(entry) for cell, entry in per_cell.items()}
    flags = overstated(table, level, levels)
    support = support_threshold(table)
    decisive = stats.decisive(main_trials(table, cfg), levels)
    ok = table[table.status == "ok"]
    for arch in out:
        out[arch]["zero_fill_overstated_cells"] = (
            {"overstated": int(flags.loc[arch, "overstated"]), "cells": int(flags.loc[arch, "cells"]), "level": level}
            if arch in flags.index
            else None
        )
        out[arch]["support_threshold"] = support.get(arch)
        out[arch]["decisive"] = decisive.get(arch)
        unprotected = main_trials(ok[(ok.arch == arch) & (ok.ratio == 0)], cfg)
        out[arch]["label_acc_unprotected"] = _round(unprotected.label_acc.mean()) if len(unprotected) else None
        col, _ = success_column(out[arch])
        rows = main_trials(table[table.arch == arch], cfg)
        out[arch]["t4_spearman_cells"] = {a: _round(r) for a, r in stats.phi_spearman(rows, col).items()}
        out[arch]["t4"] = {
            attack: {k: (_round(v) if isinstance(v, float) else v) for k, v in t4.items()}
            for attack, t4 in stats.phi_given_ratio(rows, col).items()
        }
    return out


def _round(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _rounded(entry):
    """`entry` with its floats rounded (`_round`; p-values to 3 significant digits), at any depth."""
    if isinstance(entry, dict):
        return {k: float(f"{v:.3g}") if k in ("p", "min_p") else _rounded(v) for k, v in entry.items()}
    if isinstance(entry, bool | np.bool_):
        return bool(entry)
    if isinstance(entry, int | np.integer):
        return int(entry)
    return entry if entry is None or isinstance(entry, str) else _round(entry)


def outputs(reports: Path) -> list[Path]:
    """What the stage writes (removed first, so a failed run leaves none of it behind)."""
    return [
        reports / "results" / "summary.csv",
        reports / "results" / "paired.csv",
        reports / "metrics" / "attacks.json",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selenc.compare", description="Cell statistics and comparisons.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--reports", type=Path, default=cache.REPO_ROOT / "reports")
    parser.add_argument("--archs", nargs="+", default=None, help="models to compare (default: every model of params)")
    parser.add_argument("--level", default=None, help="privacy level of the overstated-cell count (default: first)")
    args = parser.parse_args(argv)
    for stale in outputs(args.reports):
        stale.unlink(missing_ok=True)
    try:
        params = load_params(args.params)
        levels = params.guidelines.levels
        level = args.level or next(iter(levels))
        if level not in levels:
            raise ConfigError(f"--level {level!r}: not a level of guidelines.levels; allowed: {', '.join(levels)}")
        archs = args.archs or list(params.models.names)
        unknown = [a for a in archs if a not in params.models.names]
        if unknown:
            raise ConfigError(
                f"--archs: {unknown[0]!r} is not a model of params; allowed: {', '.join(params.models.names)}"
            )
        table = read_tables(args.reports, archs)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if (table.status != "ok").any():
        print("error: the results tables hold trials that did not finish; rerun their sweeps", file=sys.stderr)
        return 1
    seed = params.study.seed
    metrics = comparison_metrics(table, params.guidelines, level, seed)
    files = {
        outputs(args.reports)[0]: stats.summary(table, levels, seed).to_csv(index=False),
        outputs(args.reports)[1]: stats.paired_metrics(table, levels, seed).to_csv(index=False),
        outputs(args.reports)[2]: json.dumps(metrics, indent=2) + "\n",
    }
    for path, text in files.items():
        cache.write_atomic(path, text)
    print(f"{len(table)} trials -> " + ", ".join(str(p) for p in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
