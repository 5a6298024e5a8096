"""What the notebooks show, computed from the stages' outputs: the tables and the sentences of their findings.

A notebook reads a stage's outputs (results tables, summary.csv, paired.csv, the metrics JSON), calls these functions
and displays what they return; every number in a sentence comes from the data passed in. Each function is a pure
function of its inputs, so the tests reach every finding a report states.
"""

from __future__ import annotations

import pandas as pd

from selenc.results import both_victims, finite, main_trials, success_column
from selenc.settings import Guidelines
from selenc.stats import CONFIDENCE, GAPS, STRONGEST

ALPHA = 1 - CONFIDENCE


def _p(p: float) -> str:
    return f"p = {p:.2g}" + ("" if p < ALPHA else ", not significant")


# --- notebook 02: one architecture's sweep -----------------------------------------------------------------------
def victim_medians(table: pd.DataFrame, arch: str, cfg: Guidelines) -> pd.DataFrame | None:
    """Median success and sample count per (attack, metric, ratio) on the untrained and the trained victim, over the
    attacks, metrics and ratios run on the trained one (the attacker, mask source and ties the guidelines read); None
    when no trial ran on a trained victim."""
    col, _ = success_column(arch)
    both = both_victims(table, arch, cfg)
    if not len(both):
        return None
    return both.groupby(["attack", "metric", "ratio", "victim"])[col].agg(["median", "size"]).unstack("victim").round(3)


def sweep_findings(table: pd.DataFrame, arch: str, cfg: Guidelines) -> str:
    """Per attack (of `main_trials`): mean success unprotected and fully encrypted, and the best and worst metric at
    the smallest ratio strictly between 0 and 1, with the samples each mean is over. Markdown lines."""
    col, label = success_column(arch)
    main = main_trials(finite(table, col), cfg)
    lines = []
    for attack, rows in main.groupby("attack"):
        base, full = rows[rows.ratio == 0][col], rows[rows.ratio == 1][col]
        lines.append(
            f"- **{attack}**: {label} {base.mean():.2f} unprotected (ρ=0, n = {len(base)}) and "
            + (f"{full.mean():.2f} fully encrypted (ρ=1, n = {len(full)})." if len(full) else "ρ=1 not run.")
        )
        mid = rows[(rows.ratio > 0) & (rows.ratio < 1)]
        if len(mid):
            r = min(mid.ratio.unique())
            best = mid[mid.ratio == r].groupby("metric")[col].agg(["mean", "size"]).sort_values("mean")
            lines.append(
                f"  At ρ={r:g} the best metric is **{best.index[0]}** ({best['mean'].iloc[0]:.2f}, "
                f"n = {best['size'].iloc[0]}), the worst {best.index[-1]} ({best['mean'].iloc[-1]:.2f}, "
                f"n = {best['size'].iloc[-1]})."
            )
    return "\n".join(lines) or "No finished trial of the attacker and victim the guidelines read."


# --- notebook 03: the comparison across architectures --------------------------------------------------------------
def cell_counts(summary: pd.DataFrame, cfg: Guidelines) -> pd.DataFrame:
    """Per (arch, attack) of `main_trials`: how many cells, and the smallest and largest sample count of a cell."""
    main = main_trials(summary, cfg)
    counts = main.groupby(["arch", "attack"]).n.agg(["size", "min", "max"])
    return counts.rename(columns={"size": "cells", "min": "min n", "max": "max n"})


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
                        "pairs": g["n"],
                        "median gap": g["median"],
                        "95% CI": f"[{g['ci_low']:.3g}, {g['ci_high']:.3g}]",
                        "Wilcoxon p": g["p"],
                        "significant": g["p"] < ALPHA,
                    }
                )
    return pd.DataFrame(
        rows, columns=["arch", "comparison", "pairs", "median gap", "95% CI", "Wilcoxon p", "significant"]
    )


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
            f"**{arch}**: over {zf['n']} paired samples with 0 < ρ < 1 the mask-aware attacker's success is higher by "
            f"a median of **{zf['median']:.3g}** (95% CI [{zf['ci_low']:.3g}, {zf['ci_high']:.3g}], Wilcoxon "
            f"{_p(zf['p'])})"
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
                f"**{arch}, trained victim**: over {tg['n']} paired samples with 0 < ρ < 1 the attack's success on the "
                f"trained victim differs from the untrained one's by a median of **{tg['median']:.3g}** (95% CI "
                f"[{tg['ci_low']:.3g}, {tg['ci_high']:.3g}], Wilcoxon {_p(tg['p'])})."
            )
    return "\n\n".join(lines)


def paired_counts(paired: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, attack) of paired.csv: comparisons, how many are significant after Holm, and the pair counts."""
    return paired.groupby(["arch", "attack"]).agg(
        comparisons=("p", "size"), significant=("significant", "sum"), min_n=("n", "min"), max_n=("n", "max")
    )


def significant_pairs(paired: pd.DataFrame) -> pd.DataFrame:
    """The significant rows of paired.csv, ordered by architecture, attack and Holm p."""
    return paired[paired.significant.astype(bool)].sort_values(["arch", "attack", "p_holm"])


def no_significance_note(paired: pd.DataFrame) -> str:
    """Why nothing can be significant when no comparison is: the smallest two-sided Wilcoxon p its pairs allow."""
    n = int(paired.n.max()) if len(paired) else 0
    return (
        "No metric comparison is significant after Holm's correction at these sample counts (at most "
        f"{n} pairs per comparison: the smallest two-sided Wilcoxon p-value {n} pairs can give is 2/2^{n} = "
        f"{2 / 2**n:.3g})."
    )


def strongest_verdict(paired: pd.DataFrame, cfg: Guidelines) -> str:
    """Against the strongest attacker (`main_trials`): how many comparisons find metric a significantly better or
    worse than metric b, and which are better (with median difference, interval and n). Markdown."""
    strong = main_trials(paired, cfg)
    strong = strong[strong.attack == STRONGEST]
    better, worse = (strong[strong.significant.astype(bool) & (sign * strong.median_diff < 0)] for sign in (1, -1))
    named = ", ".join(
        f"{r.arch} {r.metric_a} vs {r.metric_b} {r.median_diff:+.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}] (n = {r.n})"
        for r in better.itertuples()
    )
    return (
        f"Against the strongest attacker ({cfg.threat_model}, {cfg.mask_source} mask, {cfg.victim} victim): "
        f"**{len(better)} of {len(strong)}** comparisons find metric a significantly better than metric b, "
        f"{len(worse)} significantly worse. Better: {named or 'none'}."
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


# --- T4 (notebooks 01 and 03) ---------------------------------------------------------------------------------------
def t4_table(t4: dict[str, dict], across: dict[str, float | None]) -> pd.DataFrame:
    """T4 per label (a theory case, or arch/attack): the partial Spearman correlation of φ(S) and success given ρ,
    its interval and n, the correlation across cells (ρ included) and within each ratio. `t4[label]` is a
    `stats.phi_given_ratio` entry, `across[label]` a `stats.phi_spearman` value."""
    rows = []
    for label, t in t4.items():
        within = {
            f"within {k}": f"{v['spearman']:.2f} (n={v['n']}, p={v['p']:.2g})"
            for k, v in t.get("per_ratio", {}).items()
        }
        rows.append(
            {
                "label": label,
                "partial Spearman | ρ": t.get("partial_spearman"),
                "95% CI": t.get("ci"),
                "n": t.get("n"),
                "across cells (ρ included)": across.get(label),
            }
            | within
        )
    return pd.DataFrame(rows).set_index("label") if rows else pd.DataFrame()


def t4_verdict(t4: dict[str, dict]) -> str:
    """Per label: the partial correlation with its interval and n, called negative (interval below 0), positive
    (above) or not significant; or that too few trials had 0 < ρ < 1. Markdown."""
    lines = []
    for label, t in t4.items():
        r, ci = t.get("partial_spearman"), t.get("ci")
        if r is None or ci is None or ci[0] != ci[0]:
            lines.append(f"{label}: too few trials with 0 < ρ < 1 for a partial correlation")
            continue
        verdict = "negative beyond the ratio" if ci[1] < 0 else ("positive" if ci[0] > 0 else "not significant")
        lines.append(f"{label}: **{r:.2f}** (95% CI [{ci[0]:.2f}, {ci[1]:.2f}], n = {t['n']}): {verdict}")
    return "Partial Spearman correlation of φ(S) and attack success given ρ: " + "; ".join(lines) + "."
