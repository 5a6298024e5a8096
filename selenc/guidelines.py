"""From the per-cell summary to guidelines: which metric at which ratio protects, with what confidence and cost.

    python -m selenc.guidelines      # reads reports/results/summary.csv; writes reports/guidelines.{json,md}, ...

A cell's trials are *protected* at a privacy level when the attack stayed under every bound of the modality
(`stats.protected`). A ratio *protects* (arch, attack, metric, level) when the lower end of the Wilson interval of its
protected share reaches the level's `min_protected`, and so does every larger ratio in the grid (a single lucky small
ratio does not count). The recommendation for (arch, level) reads the strongest attacker (`stats.STRONGEST`: every
attack run on the same sample at once): the metric whose protecting ratio is smallest (ties: the cheaper HE cost, then
the name). Where no metric's ratio protects, it says so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from selenc import cache
from selenc.config import load_params
from selenc.grid import effective_metric
from selenc.plots import heatmap
from selenc.settings import ConfigError, Guidelines, PrivacyLevel
from selenc.stats import CONFIDENCE, STRONGEST

RECORD_KEYS = (
    "arch",
    "attack",
    "privacy_level",
    "metric",
    "min_ratio",
    "n",
    "protected_share",
    "protected_share_ci",
    "he_encrypt_s",
    "he_bytes",
    "recommended",
)


def min_protecting_ratio(cells: pd.DataFrame, name: str, level: PrivacyLevel) -> float | None:
    """The smallest ratio of `cells` (one per ratio, from `stats.summary`) from which on every ratio's Wilson lower
    bound of the protected share at level `name` reaches `level.min_protected`; None if even the largest fails."""
    cells = cells.sort_values("ratio")
    good = (cells[f"{name}_low"] >= level.min_protected - 1e-12).to_numpy()
    if not len(good) or not good[-1]:
        return None
    bad = np.flatnonzero(~good)
    return float(cells.ratio.iloc[bad[-1] + 1 if len(bad) else 0])


def guidelines(summary: pd.DataFrame, cfg: Guidelines) -> list[dict]:
    """Records (RECORD_KEYS) per (arch, attack, metric, level) of the summary rows the guidelines read
    (`cfg.threat_model`, `cfg.mask_source`, `cfg.ties`, `cfg.victim`); n and the share are the protecting ratio's, or
    the largest ratio's when none protects."""
    rows = summary[
        (summary.threat_model == cfg.threat_model)
        & (summary.mask_source == cfg.mask_source)
        & (summary.ties == cfg.ties)
        & (summary.victim == cfg.victim)
    ]
    records = []
    for (arch, attack, metric), cells in rows.groupby(["arch", "attack", "metric"], sort=True):
        for name, level in cfg.levels.items():
            r = min_protecting_ratio(cells, name, level)
            at = cells[cells.ratio == (r if r is not None else cells.ratio.max())].iloc[0]
            records.append(
                {
                    "arch": arch,
                    "attack": attack,
                    "privacy_level": name,
                    "metric": metric,
                    "min_ratio": r,
                    "n": int(at.n),
                    "protected_share": round(float(at[f"protected_{name}"]), 4),
                    "protected_share_ci": [round(float(at[f"{name}_low"]), 4), round(float(at[f"{name}_high"]), 4)],
                    "he_encrypt_s": float(at.he_encrypt_s) if r is not None else None,
                    "he_bytes": int(at.he_bytes) if r is not None else None,
                    "recommended": False,
                }
            )
    frame = pd.DataFrame(records, columns=list(RECORD_KEYS))
    strongest = frame[(frame.attack == STRONGEST) & frame.min_ratio.notna()]
    for _, group in strongest.groupby(["arch", "privacy_level"]):
        best = min(group.itertuples(), key=lambda r: (r.min_ratio, r.he_encrypt_s, r.metric))
        frame.loc[best.Index, "recommended"] = True
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]


PLAN_KEYS = (
    "arch",
    "privacy_level",
    "metric",
    "ratio",
    "n",
    "protected_share",
    "protected_share_ci",
    "he_encrypt_s",
    "he_bytes",
)


def strategy_table(records: list[dict]) -> pd.DataFrame:
    """Per (arch, level): the recommended metric and ratio against the strongest attacker, its protected share with
    the interval and n, and its cost; metric `none` where no ratio protects, `all` where only ρ = 1 does (there every
    metric encrypts everything, `grid.effective_metric`)."""
    frame = pd.DataFrame(records, columns=list(RECORD_KEYS))
    out = []
    for (arch, level), group in frame[frame.attack == STRONGEST].groupby(["arch", "privacy_level"], sort=True):
        rec = group[group.recommended]
        if not len(rec):
            out.append(dict.fromkeys(PLAN_KEYS) | {"arch": arch, "privacy_level": level, "metric": "none"})
            continue
        row = {("ratio" if k == "min_ratio" else k): v for k, v in records[rec.index[0]].items()}
        out.append({k: row[k] for k in PLAN_KEYS} | {"metric": effective_metric(row["metric"], row["ratio"])})
    return pd.DataFrame(out, columns=list(PLAN_KEYS), dtype=object)


def write_guidelines(records: list[dict], plan: pd.DataFrame, cfg: Guidelines, reports: Path) -> None:
    """reports/guidelines.{json,md}, the stage metrics (reports/metrics/guidelines.json) and a figure."""
    (reports / "metrics").mkdir(parents=True, exist_ok=True)
    (reports / "figures").mkdir(parents=True, exist_ok=True)
    levels = "; ".join(
        f"**{n}**: PSNR ≤ {lv.psnr_max:g} dB and SSIM ≤ {lv.ssim_max:g} (images), ROUGE-1 ≤ {lv.rouge1_max:g} and "
        f"token F1 ≤ {lv.token_f1_max:g} (text); a ratio protects when the {CONFIDENCE:.0%} Wilson interval of its "
        f"protected share starts at {lv.min_protected:g} or above"
        for n, lv in cfg.levels.items()
    )
    frame = pd.DataFrame(records, columns=list(RECORD_KEYS))
    missing = plan[plan.ratio.isna()]
    lines = [
        "# Selective encryption guidelines",
        "",
        f"Privacy levels: {levels}. Every larger ratio must protect too. Read against the {cfg.threat_model} "
        f"attacker with the {cfg.mask_source} mask and {cfg.ties} ties, on the {cfg.victim} victim. `{STRONGEST}` is "
        "every attack run on the same sample at once: a sample is protected only when all of them failed. Metric "
        "`all`: only ρ = 1 protects, where every metric encrypts everything.",
        "",
        "## Recommended strategy per architecture and level (against the strongest attacker)",
        "",
        plan.to_markdown(index=False),
        "",
        *(
            [
                f"No metric protects {a} at the {lv} level at any ratio tested, with these samples."
                for a, lv in zip(missing.arch, missing.privacy_level, strict=True)
            ]
            + [""]
            if len(missing)
            else []
        ),
        "## Smallest protecting ratio per attack and metric (empty: no ratio tested protects)",
        "",
        frame.drop(columns="recommended").to_markdown(index=False),
        "",
    ]
    files = {
        reports / "guidelines.json": json.dumps(records, indent=2) + "\n",
        reports / "guidelines.md": "\n".join(lines),
        reports / "metrics" / "guidelines.json": json.dumps(
            {
                f"{r.arch}.{r.privacy_level}": {
                    "metric": r.metric,
                    "ratio": r.ratio,
                    "n": r.n,
                    "protected_share": r.protected_share,
                    "protected_share_ci": r.protected_share_ci,
                }
                for r in plan.itertuples()
            },
            indent=2,
        )
        + "\n",
    }
    for path, text in files.items():
        cache.write_atomic(path, text)
    fig = heatmap(
        plan.pivot_table(index="arch", columns="privacy_level", values="ratio", dropna=False)
        if plan.ratio.notna().any()
        else pd.DataFrame(np.nan, index=sorted(set(plan.arch)) or ["none"], columns=sorted(cfg.levels)),
        "encryption ratio",
        "recommended ratio against the strongest attacker (blank: none protects)",
    )
    fig.savefig(reports / "figures" / "guidelines.png", dpi=120, bbox_inches="tight")


def outputs(reports: Path) -> list[Path]:
    """What the stage writes (removed first, so a failed run leaves none of it behind)."""
    names = ["guidelines.json", "guidelines.md", "metrics/guidelines.json", "figures/guidelines.png"]
    return [reports / n for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selenc.guidelines", description="Guidelines from summary.csv.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--reports", type=Path, default=cache.REPO_ROOT / "reports")
    args = parser.parse_args(argv)
    for stale in outputs(args.reports):
        stale.unlink(missing_ok=True)
    source = args.reports / "results" / "summary.csv"
    try:
        cfg = load_params(args.params).guidelines
        if not source.is_file():
            raise ConfigError(f"{source}: no summary table; run `python -m selenc.compare` first")
        summary = pd.read_csv(source)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = [f"{name}_low" for name in cfg.levels if f"{name}_low" not in summary]
    if missing:
        print(f"error: {source} has no {', '.join(missing)}: rerun `python -m selenc.compare`", file=sys.stderr)
        return 2
    records = guidelines(summary, cfg)
    plan = strategy_table(records)
    write_guidelines(records, plan, cfg, args.reports)
    print(plan.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
