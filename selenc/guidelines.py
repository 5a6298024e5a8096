"""From the per-cell summary to guidelines: which metric at which ratio protects, with what confidence and cost, and
what the claim rests on.

    python -m selenc.guidelines      # reads reports/results/summary.csv and frontier/<name>.csv; writes
                                     # reports/guidelines.{json,md}, ...

The searched answer comes first (`frontier_plan`): per architecture and level, the cheapest protecting (metric, ρ*)
of the frontier stages by HE bytes, with its bracket, samples and intervals, and the runner-up. The fixed grid's
per-attack table below it is the detailed view.

A cell's samples are *protected* at a privacy level when the attack stayed under every bound of the modality
(`stats.protected`). A ratio *protects* (arch, attack, metric, level) when the lower end of the Wilson interval of its
protected share reaches the level's `min_protected`, and so does every larger ratio in the grid (a single lucky small
ratio does not count). A cell with fewer samples than the rule can ever pass (`samples_needed`: even all of them
protected leaves the interval below `min_protected`) is "too few samples", never a protecting ratio. The
recommendation for (arch, level) reads the strongest attacker of each cell (`stats.STRONGEST`: the attacks that ran on
all of its samples at once, never a slice of them): the metric whose protecting ratio is smallest (ties: the cheaper
HE cost, then the name). Where no metric's ratio protects, it says so.

Each recommendation states what it rests on: its samples and interval, the victim it was read on and whether it also
holds on the other victim where that ran, the adversary and the attack budgets against the published ones. It is an
upper bound on protection: a longer or stronger attack may break what these did not.
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
from selenc.attacks import PUBLISHED_STEPS
from selenc.config import load_params
from selenc.grid import effective_metric
from selenc.plots import heatmap
from selenc.results import frontier_tables, main_trials, on_update
from selenc.settings import Attacks, ConfigError, Guidelines, PrivacyLevel, configurations
from selenc.stats import CONFIDENCE, STRONGEST, wilson

PROTECTS, NONE_PROTECTS, TOO_FEW = "protects", "no ratio protects", "too few samples"
RECORD_KEYS = (
    "arch",
    "attack",
    "attack_set",
    "slice",
    "privacy_level",
    "metric",
    "status",
    "min_ratio",
    "n_samples",
    "protected_share",
    "protected_share_ci",
    "he_encrypt_s",
    "he_bytes",
    "he_bytes_sd",
    "recommended",
)
UPPER_BOUND = (
    "Every recommendation is an upper bound on protection: it held against the attacks run here, at the budgets stated "
    "(below the published ones where so), on the samples counted; a longer or stronger attack may break it."
)


def samples_needed(level: PrivacyLevel, most: int = 1000) -> int:
    """The fewest samples with which the rule can pass: n all protected gives a Wilson lower end ≥ min_protected."""
    return next(n for n in range(1, most + 1) if wilson(n, n)[0] >= level.min_protected - 1e-12)


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
    """Records (RECORD_KEYS) per (arch, attack and its adversary set, metric, level) of the summary rows the
    guidelines read; n and the share are the protecting ratio's, or the largest ratio's when none protects."""
    records = []
    groups = main_trials(summary, cfg).groupby(["arch", "attack", "attack_set", "slice", "metric"], sort=True)
    for (arch, attack, attack_set, is_slice, metric), cells in groups:
        for name, level in cfg.levels.items():
            r = min_protecting_ratio(cells, name, level)
            at = cells[cells.ratio == (r if r is not None else cells.ratio.max())].iloc[0]
            if r is not None:
                status = PROTECTS
            else:
                status = TOO_FEW if cells.n_samples.max() < samples_needed(level) else NONE_PROTECTS
            records.append(
                {
                    "arch": arch,
                    "attack": attack,
                    "attack_set": attack_set,
                    "slice": bool(is_slice),
                    "privacy_level": name,
                    "metric": metric,
                    "status": status,
                    "min_ratio": r,
                    "n_samples": int(at.n_samples),
                    "protected_share": round(float(at[f"protected_{name}"]), 4),
                    "protected_share_ci": [round(float(at[f"{name}_low"]), 4), round(float(at[f"{name}_high"]), 4)],
                    "he_encrypt_s": float(at.he_encrypt_s) if r is not None else None,
                    "he_bytes": int(at.he_bytes) if r is not None else None,
                    "he_bytes_sd": float(at.he_bytes_sd) if r is not None else None,
                    "recommended": False,
                }
            )
    frame = pd.DataFrame(records, columns=list(RECORD_KEYS))
    adversary = frame[(frame.attack == STRONGEST) & ~frame.slice.astype(bool) & frame.min_ratio.notna()]
    for _, group in adversary.groupby(["arch", "privacy_level"]):
        best = min(group.itertuples(), key=lambda r: (r.min_ratio, r.he_encrypt_s, r.metric))
        frame.loc[best.Index, "recommended"] = True
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]


def budgets(attack_set: str, attacks: Attacks) -> str:
    """The study's budget of each attack of an adversary against its original procedure's, e.g. "dlg 1,000 of
    6,000 steps (0.17x)"; analytic attacks say so."""
    parts = []
    for name in attack_set.split("+"):
        knobs, published = attacks.of(name), PUBLISHED_STEPS[name]
        if knobs is None:
            parts.append(f"{name} analytic")
            continue
        spent = knobs.steps * knobs.restarts * configurations(knobs)
        runs = f"{knobs.steps:,} steps" + (f" x {knobs.restarts} restarts" if knobs.restarts > 1 else "")
        runs += f" x {configurations(knobs)} configurations" if configurations(knobs) > 1 else ""
        parts.append(
            f"{name} {runs}" + (f" of {published:,} published ({spent / published:.2g}x)" if published else "")
        )
    return "; ".join(parts)


def megabytes(size: float, sd: float) -> str:
    """Bytes as MB in human units with their spread between encryptions, e.g. "1,841 ± 0.02"."""
    mb = size / 1e6
    value = f"{mb:,.0f}" if mb >= 100 else f"{mb:.3g}"
    return f"{value} ± {sd / 1e6:.1g}"


PLAN_KEYS = (
    "arch",
    "privacy_level",
    "metric",
    "ratio",
    "n_samples",
    "protected_share",
    "protected_share_ci",
    "he_mb",
    "he_ms",
    "adversary",
    "other_victim",
)


def strategy_table(records: list[dict], summary: pd.DataFrame, cfg: Guidelines) -> pd.DataFrame:
    """Per (arch, level): the recommended metric and ratio against the strongest attacker, its protected share with
    the interval and samples, its cost in MB (± its spread between encryptions) and ms, the adversary, and whether it
    holds on the other victim (`other_victim`: its share and interval there, or "not run"); metric `none` where no
    ratio protects, `all` where only ρ = 1 does (there every metric encrypts everything, `grid.effective_metric`)."""
    frame = pd.DataFrame(records, columns=list(RECORD_KEYS))
    other = "trained" if cfg.victim == "untrained" else "untrained"
    there = main_trials(summary, cfg.model_copy(update={"victim": other}))
    out = []
    main = frame[(frame.attack == STRONGEST) & ~frame.slice.astype(bool)]
    for (arch, level), group in main.groupby(["arch", "privacy_level"], sort=True):
        rec = group[group.recommended]
        if not len(rec):
            out.append(dict.fromkeys(PLAN_KEYS) | {"arch": arch, "privacy_level": level, "metric": "none"})
            continue
        r = records[rec.index[0]]
        cell = there[
            (there.arch == arch)
            & (there.attack == STRONGEST)
            & ~there.slice.astype(bool)
            & (there.metric == r["metric"])
            & (there.ratio == r["min_ratio"])
        ]
        if len(cell):
            c = cell.iloc[0]
            holds = "holds" if c[f"{level}_low"] >= cfg.levels[level].min_protected - 1e-12 else "does not hold"
            on_other = (
                f"{holds} on the {other} victim: {c[f'protected_{level}']:.2f} "
                f"[{c[f'{level}_low']:.2f}, {c[f'{level}_high']:.2f}], n = {int(c.n_samples)} ({c.attack_set})"
            )
        else:
            on_other = f"not run on the {other} victim"
        out.append(
            {
                "arch": arch,
                "privacy_level": level,
                "metric": effective_metric(r["metric"], r["min_ratio"]),
                "ratio": r["min_ratio"],
                "n_samples": r["n_samples"],
                "protected_share": r["protected_share"],
                "protected_share_ci": r["protected_share_ci"],
                "he_mb": megabytes(r["he_bytes"], r["he_bytes_sd"]),
                "he_ms": f"{1000 * r['he_encrypt_s']:,.0f}"
                if r["he_encrypt_s"] >= 0.1
                else f"{1000 * r['he_encrypt_s']:.1f}",
                "adversary": r["attack_set"],
                "other_victim": on_other,
            }
        )
    return pd.DataFrame(out, columns=list(PLAN_KEYS), dtype=object)


FRONTIER_KEYS = (
    "arch",
    "privacy_level",
    "metric",
    "ratio_star",
    "bracket",
    "n",
    "protected_share",
    "success_median",
    "he_mb",
    "he_ms",
    "monotone",
    "runner_up",
)


def read_frontiers(reports: Path, models: tuple[str, ...]) -> pd.DataFrame:
    """The frontier tables of `models` that were written (`frontier.FOUND_COLUMNS`; empty when none was)."""
    found = [frontier_tables(reports, name)[0] for name in models]
    tables = [pd.read_csv(p) for p in found if p.is_file()]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _mb(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def frontier_plan(frontiers: pd.DataFrame, cfg: Guidelines) -> pd.DataFrame:
    """Per (arch, level) of the victim and ties the guidelines read: the cheapest protecting (metric, ρ*) by HE MB per
    upload (ties: the smaller ρ*, then the name), its bracket (the highest failing and the protecting ratio probed),
    samples, Wilson interval of the protected share, the strongest attacker's median success with its bootstrap
    interval, the cost in MB and ms, whether the metric's curve was monotone above ρ*, and the runner-up."""
    out = []
    if not len(frontiers):
        return pd.DataFrame(columns=list(FRONTIER_KEYS))
    read = frontiers[(frontiers.victim == cfg.victim) & (frontiers.ties == cfg.ties) & on_update(frontiers, cfg.reads)]
    for (arch, level), group in read.groupby(["arch", "privacy_level"], sort=True):
        ranked = group[group.status == PROTECTS].sort_values(["he_mb", "ratio_star", "metric"])
        if not len(ranked):
            out.append(dict.fromkeys(FRONTIER_KEYS) | {"arch": arch, "privacy_level": level, "metric": "none"})
            continue
        best = ranked.iloc[0]
        runner = ranked.iloc[1] if len(ranked) > 1 else None
        out.append(
            {
                "arch": arch,
                "privacy_level": level,
                "metric": effective_metric(best.metric, best.ratio_star),
                "ratio_star": f"{best.ratio_star:.4g}",
                "bracket": f"({best.bracket_low:.4g}, {best.ratio_star:.4g}]",
                "n": int(best.n),
                "protected_share": f"{best.protected_share:.2f} [{best.protected_low:.2f}, {best.protected_high:.2f}]",
                "success_median": f"{best.success_median:.3g} [{best.success_low:.3g}, {best.success_high:.3g}]",
                "he_mb": _mb(best.he_mb),
                "he_ms": f"{best.he_ms:,.1f}",
                "monotone": "yes" if bool(best.monotone) else f"no (fails at {best.violating_ratio:.4g})",
                "runner_up": "none"
                if runner is None
                else f"{runner.metric} at {runner.ratio_star:.4g} ({_mb(runner.he_mb)} MB)",
            }
        )
    return pd.DataFrame(out, columns=list(FRONTIER_KEYS), dtype=object)


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """The records table in human units: MB (± spread) and ms instead of bytes and seconds."""
    cost = [
        (megabytes(b, sd), f"{1000 * t:,.1f}") if pd.notna(b) else (None, None)
        for b, sd, t in zip(frame.he_bytes, frame.he_bytes_sd, frame.he_encrypt_s, strict=True)
    ]
    out = frame.drop(columns=["recommended", "he_bytes", "he_bytes_sd", "he_encrypt_s"])
    return out.assign(he_mb=[c[0] for c in cost], he_ms=[c[1] for c in cost])


def write_guidelines(
    records: list[dict],
    plan: pd.DataFrame,
    cfg: Guidelines,
    attacks: Attacks,
    reports: Path,
    searched: pd.DataFrame | None = None,
    frontiers: pd.DataFrame | None = None,
) -> None:
    """reports/guidelines.{json,md}, the stage metrics (reports/metrics/guidelines.json) and a figure; `searched`
    (`frontier_plan`) and `frontiers` (`read_frontiers`) add the searched ρ* first, where the frontier stages ran."""
    searched = searched if searched is not None else pd.DataFrame(columns=list(FRONTIER_KEYS))
    frontiers = frontiers if frontiers is not None else pd.DataFrame()
    (reports / "metrics").mkdir(parents=True, exist_ok=True)
    (reports / "figures").mkdir(parents=True, exist_ok=True)
    levels = "; ".join(
        f"**{n}**: PSNR ≤ {lv.psnr_max:g} dB and SSIM ≤ {lv.ssim_max:g} (images), ROUGE-1 ≤ {lv.rouge1_max:g} and "
        f"token F1 ≤ {lv.token_f1_max:g} (text); a ratio protects when the {CONFIDENCE:.0%} Wilson interval of its "
        f"protected share starts at {lv.min_protected:g} or above, which needs at least {samples_needed(lv)} samples, "
        "all protected"
        for n, lv in cfg.levels.items()
    )
    frame = pd.DataFrame(records, columns=list(RECORD_KEYS))
    missing = plan[plan.ratio.isna()]
    adversaries = sorted(set(plan.adversary.dropna()) | set(frame[frame.attack == STRONGEST].attack_set))
    lines = [
        "# Selective encryption guidelines",
        "",
        f"Privacy levels: {levels}. Every larger ratio must protect too. Read against the {cfg.threat_model} "
        f"attacker with the {cfg.mask_source} mask and {cfg.ties} ties, on the **{cfg.victim}** victim. `{STRONGEST}` "
        "is every attack that ran on all samples of a cell at once: a sample is protected only when all of them "
        "failed; attacks run on only some samples form their own slice (`slice`), never part of a cell's adversary. "
        "Metric `all`: only ρ = 1 protects, where every metric encrypts everything. A sample is one model "
        "initialisation and one real target; n counts samples.",
        "",
        UPPER_BOUND,
        "",
        *(
            [
                "## The cheapest protecting strategy, searched (frontier stages)",
                "",
                "Per architecture and level: the metric whose searched protecting ratio ρ\\* costs the fewest HE MB "
                "per upload, against the strongest of the frontier's attacks on the same samples. `bracket`: the "
                "highest probed ratio that fails and ρ\\* (the search's resolution); n: samples at ρ\\*; intervals: "
                f"Wilson ({CONFIDENCE:.0%}) for the protected share, bootstrap for the median success. `monotone`: "
                "whether every probed and check ratio above ρ\\* protects (where one failed, ρ\\* was moved above it).",
                "",
                searched.to_markdown(index=False),
                "",
                *sorted(
                    {f"- {a}: {budgets(s, attacks)}" for a, s in zip(frontiers.arch, frontiers.attack_set, strict=True)}
                ),
                "",
            ]
            if len(searched)
            else []
        ),
        "## Recommended strategy per architecture and level, on the fixed grid (against the strongest attacker)",
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
        "## Attack budgets (this study's against the original procedures')",
        "",
        *[f"- {a}: {budgets(a, attacks)}" for a in adversaries],
        "",
        "## Smallest protecting ratio per attack and metric",
        "",
        f"`status`: {PROTECTS} (from `min_ratio` on), {NONE_PROTECTS} (with enough samples), or {TOO_FEW} (fewer "
        "samples than the rule can pass: not evidence either way).",
        "",
        readable(frame).to_markdown(index=False),
        "",
    ]
    searched_metrics = {
        f"{r.arch}.{r.privacy_level}.searched": {"metric": r.metric, "ratio_star": r.ratio_star, "n": r.n}
        for r in searched.itertuples()
    }
    files = {
        reports / "guidelines.json": json.dumps(records, indent=2) + "\n",
        reports / "guidelines.md": "\n".join(lines),
        reports / "metrics" / "guidelines.json": json.dumps(
            {
                f"{r.arch}.{r.privacy_level}": {
                    "metric": r.metric,
                    "ratio": r.ratio,
                    "n_samples": r.n_samples,
                    "protected_share": r.protected_share,
                    "protected_share_ci": r.protected_share_ci,
                    "other_victim": r.other_victim,
                }
                for r in plan.itertuples()
            }
            | searched_metrics,
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
        params = load_params(args.params)
        cfg = params.guidelines
        if not source.is_file():
            raise ConfigError(f"{source}: no summary table; run `python -m selenc.compare` first")
        summary = pd.read_csv(source)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    needed = [f"{name}_low" for name in cfg.levels] + ["n_samples", "attack_set", "slice", "he_bytes_sd"]
    missing = [c for c in needed if c not in summary]
    if missing:
        print(f"error: {source} has no {', '.join(missing)}: rerun `python -m selenc.compare`", file=sys.stderr)
        return 2
    records = guidelines(summary, cfg)
    plan = strategy_table(records, summary, cfg)
    frontiers = read_frontiers(args.reports, params.models.names)
    searched = frontier_plan(frontiers, cfg)
    write_guidelines(records, plan, cfg, params.attacks, args.reports, searched, frontiers)
    if len(searched):
        print(searched.to_string(index=False))
    print(plan.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
