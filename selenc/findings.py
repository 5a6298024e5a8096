"""What the notebooks show, computed from the stages' outputs: the tables and the sentences of their findings.

A notebook reads a stage's outputs (results tables, summary.csv, paired.csv, the metrics JSON), calls these functions
and displays what they return; every number in a sentence comes from the data passed in. Each function is a pure
function of its inputs, so the tests reach every finding a report states.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from selenc.grid import update_fields, update_label
from selenc.results import both_victims, finite, main_trials, success_column
from selenc.settings import Guidelines
from selenc.stats import BROKEN, CONFIDENCE, GAPS, NOT_BROKEN, STRONGEST, UNDECIDED, every_update, update_labels

ALPHA = 1 - CONFIDENCE


def _p(p: float, min_p: float) -> str:
    """A p-value and its verdict, saying so when the samples could never have reached significance."""
    if min_p >= ALPHA:
        return f"p = {p:.2g}, not significant: too few samples to reach {ALPHA:g} (smallest possible p {min_p:.2g})"
    return f"p = {p:.2g}" + ("" if p < ALPHA else ", not significant")


def _interval(e: dict) -> str:
    """An entry's 95% interval, as the sentences write it."""
    return f"95% CI [{e['ci_low']:.3g}, {e['ci_high']:.3g}]"


def _samples(g: dict) -> str:
    return f"{g['n_samples']} samples ({g['n_pairs']} pairs)"


# --- notebook 02: one architecture's sweep -----------------------------------------------------------------------
def victim_medians(table: pd.DataFrame, arch: str, cfg: Guidelines) -> pd.DataFrame | None:
    """Median success and sample count per (attack, metric, ratio) on the untrained and the trained victim, over the
    attacks, metrics and ratios run on the trained one (the attacker, mask source and ties the guidelines read); None
    when no trial ran on a trained victim."""
    col, _ = success_column(table)
    both = both_victims(table, cfg)
    if not len(both):
        return None
    return both.groupby(["attack", "metric", "ratio", "victim"])[col].agg(["median", "size"]).unstack("victim").round(3)


def sweep_findings(table: pd.DataFrame, arch: str, cfg: Guidelines) -> str:
    """Per attack (of `main_trials`): mean success unprotected and fully encrypted, and the best and worst metric at
    the smallest ratio strictly between 0 and 1, with the samples each mean is over. Markdown lines."""
    col, label = success_column(table)
    main = main_trials(finite(table, col), cfg)
    lines = []
    for attack, rows in main.groupby("attack"):
        base, full = rows[rows.ratio == 0][col], rows[rows.ratio == 1][col]
        lines.append(
            f"- **{attack}**: {label} {base.mean():.2f} unprotected (ρ=0, {len(base)} samples) and "
            + (f"{full.mean():.2f} fully encrypted (ρ=1, {len(full)} samples)." if len(full) else "ρ=1 not run.")
        )
        mid = rows[(rows.ratio > 0) & (rows.ratio < 1)]
        if len(mid):
            r = min(mid.ratio.unique())
            best = mid[mid.ratio == r].groupby("metric")[col].agg(["mean", "size"]).sort_values("mean")
            lines.append(
                f"  At ρ={r:g} the best metric is **{best.index[0]}** ({best['mean'].iloc[0]:.2f}, "
                f"{best['size'].iloc[0]} samples), the worst {best.index[-1]} ({best['mean'].iloc[-1]:.2f}, "
                f"{best['size'].iloc[-1]} samples); samples, not a test."
            )
    return "\n".join(lines) or "No finished trial of the attacker and victim the guidelines read."


# --- notebook 03: the comparison across architectures --------------------------------------------------------------
def cell_counts(summary: pd.DataFrame, cfg: Guidelines) -> pd.DataFrame:
    """Per (arch, attack and adversary) of `main_trials`: how many cells, and the fewest and most samples of a
    cell."""
    main = main_trials(summary, cfg)
    counts = main.groupby(["arch", "attack", "attack_set"]).n_samples.agg(["size", "min", "max"])
    return counts.rename(columns={"size": "cells", "min": "min samples", "max": "max samples"})


def median_tables(summary: pd.DataFrame, cfg: Guidelines, arch: str) -> dict[float, tuple[pd.DataFrame, int, int]]:
    """Per ratio 0 < ρ < 1 of `arch`: the median success of each (attack, metric) cell of `main_trials` (each cell's
    own adversary, no slices), with the fewest and most samples of a cell."""
    main = main_trials(summary, cfg)
    cells = main[(main.arch == arch) & (main.ratio > 0) & (main.ratio < 1) & ~main.slice.astype(bool)]
    return {
        ratio: (
            at.pivot_table(index="attack", columns="metric", values="median"),
            int(at.n_samples.min()),
            int(at.n_samples.max()),
        )
        for ratio, at in cells.groupby("ratio")
    }


def gap_table(metrics: dict, archs: list[str]) -> pd.DataFrame:
    """Every paired gap of attacks.json (`stats.GAPS`) per architecture: pairs, median, interval, p, significance."""
    rows = []
    for arch in archs:
        for name in GAPS:
            g = metrics[arch].get(name)
            if g is not None:
                rows.append(
                    {
                        "arch": arch,
                        "comparison": name,
                        "samples": g["n_samples"],
                        "pairs": g["n_pairs"],
                        "median gap": g["median"],
                        "95% CI": f"[{g['ci_low']:.3g}, {g['ci_high']:.3g}]",
                        "Wilcoxon p": g["p"],
                        "smallest p possible": g["min_p"],
                        "significant": g["p"] < ALPHA,
                    }
                )
    columns = ["arch", "comparison", "samples", "pairs", "median gap", "95% CI", "Wilcoxon p", "smallest p possible"]
    return pd.DataFrame(rows, columns=[*columns, "significant"])


def gap_sentences(metrics: dict, archs: list[str]) -> str:
    """The zero-fill gap and the cells zero-fill calls protected that the mask-aware attacker breaks (at the level
    compare counted them at), and the trained-victim gap, per architecture. Markdown."""
    lines = []
    for arch in archs:
        zf, over = metrics[arch].get("zero_fill_gap"), metrics[arch].get("zero_fill_overstated_cells")
        if zf is None:
            lines.append(f"**{arch}**: no cell was run under both threat models.")
            continue
        lines.append(
            f"**{arch}**: over {_samples(zf)} with 0 < ρ < 1, a sample's mask-aware success is higher than its "
            f"zero-fill success by a median of **{zf['median']:.3g}** (95% CI [{zf['ci_low']:.3g}, "
            f"{zf['ci_high']:.3g}], Wilcoxon {_p(zf['p'], zf['min_p'])})"
            + (
                f"; zero-fill calls **{over['overstated']} of {over['cells']}** cells protected at the {over['level']} "
                "level (share ≥ 1/2) that the mask-aware attacker breaks."
                if over
                else "."
            )
        )
    for arch in archs:
        tg = metrics[arch].get("trained_gap")
        if tg is not None:
            lines.append(
                f"**{arch}, trained victim**: over {_samples(tg)} with 0 < ρ < 1 the attack's success on the trained "
                f"victim differs from the untrained one's by a median of **{tg['median']:.3g}** (95% CI "
                f"[{tg['ci_low']:.3g}, {tg['ci_high']:.3g}], Wilcoxon {_p(tg['p'], tg['min_p'])})."
            )
    return "\n\n".join(lines)


def paired_counts(paired: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, attack) of paired.csv: comparisons, how many are significant after Holm, the sample counts, and
    how many comparisons had too few samples to ever reach significance."""
    return paired.groupby(["arch", "attack"]).agg(
        comparisons=("p", "size"),
        significant=("significant", "sum"),
        min_samples=("n_samples", "min"),
        max_samples=("n_samples", "max"),
        cannot_reach=("min_p", lambda p: int((p >= ALPHA).sum())),
    )


def significant_pairs(paired: pd.DataFrame) -> pd.DataFrame:
    """The significant rows of paired.csv, ordered by architecture, attack and Holm p."""
    return paired[paired.significant.astype(bool)].sort_values(["arch", "attack", "p_holm"])


def no_significance_note(paired: pd.DataFrame) -> str:
    """Why nothing can be significant when no comparison is: the smallest two-sided Wilcoxon p its samples allow."""
    n = int(paired.n_samples.max()) if len(paired) else 0
    return (
        "No metric comparison is significant after Holm's correction at these sample counts (at most "
        f"{n} samples per comparison: the smallest two-sided Wilcoxon p-value {n} samples can give is 2/2^{n} = "
        f"{2 / 2**n:.3g})."
    )


def strongest_verdict(paired: pd.DataFrame, cfg: Guidelines) -> str:
    """Against the strongest attacker (`main_trials`): how many comparisons find metric a significantly better or
    worse than metric b, and which are better (with median difference, interval and n). Markdown."""
    strong = main_trials(paired, cfg)
    strong = strong[strong.attack == STRONGEST]
    better, worse = (strong[strong.significant.astype(bool) & (sign * strong.median_diff < 0)] for sign in (1, -1))
    named = ", ".join(
        f"{r.arch} {r.metric_a} vs {r.metric_b} {r.median_diff:+.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}] "
        f"({r.n_samples} samples)"
        for r in better.itertuples()
    )
    hopeless = int((strong.min_p >= ALPHA).sum())
    return (
        f"Against the strongest attacker ({cfg.threat_model}, {cfg.mask_source} mask, {cfg.victim} victim): "
        f"**{len(better)} of {len(strong)}** comparisons find metric a significantly better than metric b, "
        f"{len(worse)} significantly worse. Better: {named or 'none'}."
        + (
            f" {hopeless} of them had too few samples to reach significance whatever the data (n ≤ 5)."
            if hopeless
            else ""
        )
    )


def support_table(metrics: dict, archs: list[str]) -> pd.DataFrame:
    """Per architecture: the non-zero share of the update (median, range) and label accuracy with nothing
    encrypted."""
    rows = []
    for a in archs:
        support = metrics[a].get("support_threshold") or {}
        rows.append(
            {
                "arch": a,
                "non-zero share of the update (median)": support.get("median"),
                "min": support.get("min"),
                "max": support.get("max"),
                "label accuracy, nothing encrypted": metrics[a].get("label_acc_unprotected"),
            }
        )
    return pd.DataFrame(rows)


def decisive_table(metrics: dict, archs: list[str]) -> pd.DataFrame:
    """Per architecture, level and attack: the masked (cell, sample) pairs it alone broke, of those it ran on beside
    another attack, and the samples they span (`stats.decisive`)."""
    rows = []
    for a in archs:
        for level, per_attack in (metrics[a].get("decisive") or {}).items():
            for attack, d in per_attack.items():
                rows.append(
                    {"arch": a, "level": level, "attack": attack, "alone broke": d["alone_broke"]}
                    | {"pairs": d["pairs"], "samples": d["samples"]}
                )
    return pd.DataFrame(rows, columns=["arch", "level", "attack", "alone broke", "pairs", "samples"])


# --- client updates (notebook 03) -----------------------------------------------------------------------------------
def _levels(entry: dict) -> list[str]:
    return [k for k, v in entry.items() if isinstance(v, dict)]


def update_table(metrics: dict, archs: list[str]) -> pd.DataFrame:
    """Per architecture and client update (attacks.json `updates`): the strongest attacker with nothing encrypted
    (samples, median success and its interval, share recovered outright, protected samples per level and whether the
    attack is a valid baseline there) and the paired gap to the guidelines' update over 0 < ρ < 1."""
    rows = []
    for arch in archs:
        for label, entry in (metrics[arch].get("updates") or {}).items():
            row = {"arch": arch, "update": label}
            u, g = entry.get("unprotected"), entry.get("gap")
            if u:
                row |= {"samples (ρ=0)": u["n_samples"], "median (ρ=0)": u["median"]}
                row |= {"95% CI (ρ=0)": f"[{u['ci_low']:.3g}, {u['ci_high']:.3g}]", "recovered": u["recovered"]}
                for level in _levels(u):
                    v = u[level]
                    row[f"{level}: protected at ρ=0"] = f"{v['protected']}/{u['n_samples']}"
                    row[f"{level}: baseline"] = v["baseline"]
            if g:
                row |= {"gap samples": g["n_samples"], "gap pairs": g["n_pairs"], "median gap": g["median"]}
                row |= {"gap 95% CI": f"[{g['ci_low']:.3g}, {g['ci_high']:.3g}]", "Wilcoxon p": g["p"]}
                row["gap significant"] = g["p"] < ALPHA
            rows.append(row)
    return pd.DataFrame(rows)


def update_sentences(metrics: dict, archs: list[str], cfg: Guidelines) -> str:
    """Per architecture and client update: how well the strongest attacker does with nothing encrypted, whether it is
    a valid baseline at each level, and how its success under masks compares with the guidelines' update on the same
    samples. Markdown."""
    reference = update_label(*update_fields(cfg.reads))
    lines = []
    for arch in archs:
        for update, entry in (metrics[arch].get("updates") or {}).items():
            _, label = success_column(metrics[arch])
            whole = "images at 30 dB or more" if metrics[arch]["modality"] == "image" else "sentences word for word"
            u, g = entry.get("unprotected"), entry.get("gap")
            parts = []
            if u:
                by = {v: [lv for lv in _levels(u) if u[lv]["baseline"] == v] for v in (BROKEN, NOT_BROKEN, UNDECIDED)}
                said = []
                if by[BROKEN]:
                    said.append(f"a valid baseline (it breaks the update) at the {' and '.join(by[BROKEN])} level")
                if by[NOT_BROKEN]:
                    said.append(
                        f"**not a valid baseline** at the {' and '.join(by[NOT_BROKEN])} level (ρ = 0 already "
                        "protects there: a masked cell protected under this update says nothing about the mask)"
                    )
                for lv in by[UNDECIDED]:
                    said.append(f"undecided at the {lv} level ({u[lv]['protected']} of {u['n_samples']} protected)")
                parts.append(
                    f"nothing encrypted, the strongest attacker reaches a median {label} of **{u['median']:.3g}** "
                    f"({_interval(u)}, {u['n_samples']} samples) and recovers "
                    f"{u['recovered']:.0%} of the {whole}; " + "; ".join(said)
                )
            if g:
                parts.append(
                    f"under masks (0 < ρ < 1) its success is lower than under {reference} by a median of "
                    f"**{g['median']:.3g}** per sample ({_interval(g)}, {_samples(g)}, "
                    f"Wilcoxon {_p(g['p'], g['min_p'])})"
                )
            if parts:
                lines.append(f"**{arch}, {update}**: " + "; ".join(parts) + ".")
    return "\n\n".join(lines) or "No client update other than the guidelines' ran."


def update_protection(summary: pd.DataFrame, cfg: Guidelines, arch: str) -> pd.DataFrame | None:
    """Per (metric, ratio) run under more than one client update: the strongest attacker's protected samples per
    level and update ("k/n", with ✓ where the ratio protects by the level's rule), from summary.csv. None when `arch`
    ran one update."""
    rows = every_update(summary[(summary.arch == arch) & (summary.attack == STRONGEST)], cfg)
    rows = rows[~rows.slice.astype(bool)].copy()
    rows["update"] = update_labels(rows)
    if rows["update"].nunique() < 2:
        return None
    shared = rows.groupby(["metric", "ratio"])["update"].transform("nunique") > 1
    rows = rows[shared]
    out = {}
    for name, level in cfg.levels.items():
        k = (rows[f"protected_{name}"] * rows.n_samples).round().astype(int)
        mark = np.where(rows[f"{name}_low"] >= level.min_protected, " ✓", "")
        cell = k.astype(str) + "/" + rows.n_samples.astype(str) + mark
        out[name] = rows.assign(cell=cell).pivot_table(
            index=["metric", "ratio"], columns="update", values="cell", aggfunc="first"
        )
    return pd.concat(out, axis=1, names=["level", "update"])


# --- rounds (notebook 03) -------------------------------------------------------------------------------------------
def rounds_table(metrics: dict, archs: list[str]) -> pd.DataFrame:
    """Per architecture, masked cell and update (attacks.json `rounds`): the strongest attacker's samples, median
    success with its interval, protected samples per level, the HE megabytes of the whole run and the paired gap to
    one round on the same samples."""
    rows = []
    for arch in archs:
        for cell, per_update in (metrics[arch].get("rounds") or {}).items():
            for label, e in per_update.items():
                row = {"arch": arch, "cell": cell, "update": label, "attacks": e["attacks"], "samples": e["n_samples"]}
                row["median"] = e["median"]
                row |= {"95% CI": f"[{e['ci_low']:.3g}, {e['ci_high']:.3g}]", "HE MB per run": e["he_mb_run"]}
                for level in _levels(e):
                    if level != "gap":
                        row[f"{level}: protected"] = f"{e[level]['protected']}/{e['n_samples']}"
                if e["rounds"] > 1:
                    row["joint attack median"] = e["joint_median"]
                    row["round 0 better"] = f"{e['first_round_better']}/{e['n_samples']}"
                g = e["gap"]
                if g:
                    row |= {"gap vs 1 round": g["median"], "gap 95% CI": f"[{g['ci_low']:.3g}, {g['ci_high']:.3g}]"}
                    row |= {"Wilcoxon p": g["p"], "gap significant": g["p"] < ALPHA}
                rows.append(row)
    return pd.DataFrame(rows)


def rounds_sentences(metrics: dict, archs: list[str], cfg: Guidelines) -> str:
    """Per architecture and masked cell run over several rounds: for each mask policy, how the strongest attacker that
    combines the rounds does against one round on the same samples, whether the cell still protects at each level,
    and at what HE cost per run. Markdown."""
    lines = []
    for arch in archs:
        for cell, per_update in (metrics[arch].get("rounds") or {}).items():
            _, label = success_column(metrics[arch])
            parts = []
            for update, e in per_update.items():
                if e["rounds"] == 1:
                    continue
                held, one = [], per_update.get(e["one_round"])
                for name, level in cfg.levels.items():
                    v = e[name]
                    verdict = "protects" if v["low"] >= level.min_protected else "does not protect"
                    before = f", one round {one[name]['protected']}/{one['n_samples']}" if one else ""
                    held.append(f"{verdict} at the {name} level ({v['protected']}/{e['n_samples']}{before})")
                g = e["gap"]
                gap = (
                    f"{g['median']:+.3g} per sample against one round ({_interval(g)}, {g['n_samples']} samples, "
                    f"Wilcoxon {_p(g['p'], g['min_p'])})"
                    if g
                    else "no one-round pair"
                )
                behind = (
                    f" (round 0's own attack did better than the joint one on {e['first_round_better']} of "
                    f"{e['n_samples']} samples; the joint attack alone: {e['joint_median']:.3g})"
                    if e["first_round_better"]
                    else ""
                )
                parts.append(
                    f"*{update}*: median {label} **{e['median']:.3g}** "
                    f"({_interval(e)}){behind}, {gap}; {'; '.join(held)}; "
                    f"{e['he_mb_run']:.3g} MB of HE per run"
                )
            if parts:
                attacks = next(iter(per_update.values()))["attacks"]
                lines.append(f"**{arch}, {cell}** (strongest of {attacks}): " + " — ".join(parts) + ".")
    return "\n\n".join(lines) or "No cell ran over several rounds."


# --- T4 (notebooks 01 and 03) ---------------------------------------------------------------------------------------
def _ci(ci: list[float]) -> str:
    return "no interval" if ci[0] != ci[0] else f"{ci[0]:.2f}, {ci[1]:.2f}"


def t4_table(t4: dict[str, dict], across: dict[str, float | None]) -> pd.DataFrame:
    """T4 per label (a theory case, or arch/attack): the partial Spearman correlation of φ(S) and success given ρ,
    computed within each sample and averaged over samples with a t interval over them, its samples and rows, the
    correlation across cells (ρ included) and
    within each ratio. `t4[label]` is a `stats.phi_given_ratio` entry, `across[label]` a `stats.phi_spearman`
    value."""
    rows = []
    for label, t in t4.items():
        within = {
            f"within {k}": f"{v['spearman']:.2f} [{_ci(v['ci'])}] ({v['n_samples']} samples)"
            for k, v in t.get("per_ratio", {}).items()
        }
        rows.append(
            {
                "label": label,
                "partial Spearman | ρ": t.get("partial_spearman"),
                "95% CI (over samples)": t.get("ci"),
                "samples": t.get("n_samples"),
                "rows": t.get("n"),
                "across cells (ρ included)": across.get(label),
            }
            | within
        )
    return pd.DataFrame(rows).set_index("label") if rows else pd.DataFrame()


def t4_verdict(t4: dict[str, dict]) -> str:
    """Per label: the partial correlation with its interval over samples, called negative (interval below 0),
    positive (above) or not significant; or that too few samples had 0 < ρ < 1 for an interval. Markdown."""
    lines = []
    for label, t in t4.items():
        r, ci = t.get("partial_spearman"), t.get("ci")
        if r is None or r != r:
            lines.append(f"{label}: too few trials with 0 < ρ < 1 for a partial correlation")
            continue
        if ci is None or ci[0] != ci[0]:
            lines.append(f"{label}: {r:.2f} on {t['n_samples']} samples: too few samples for an interval")
            continue
        verdict = "negative beyond the ratio" if ci[1] < 0 else ("positive" if ci[0] > 0 else "not significant")
        lines.append(
            f"{label}: **{r:.2f}** (95% CI [{ci[0]:.2f}, {ci[1]:.2f}] over {t['n_samples']} samples, {t['n']} rows): "
            f"{verdict}"
        )
    return "Partial Spearman correlation of φ(S) and attack success given ρ: " + "; ".join(lines) + "."
