"""From trials to findings: per-cell medians with bootstrap intervals, protected shares with Wilson intervals, the
strongest attacker per sample, and paired tests on the same samples.

A *cell* is one (arch, attack, threat_model, metric, ratio, mask_source, ties, victim) of the results tables; its
trials are its samples (`trial` = the same real client batch whatever the attack, metric or ratio), which is what
makes the comparisons paired. The *strongest* attacker of a sample is every attack run on it at once: its success is
the best attack's and the sample is protected only when every attack failed (`strongest`). Success is on one scale
per modality (`results.SUCCESS`: PSNR capped at 100 dB, or ROUGE-1).

Intervals: the median's is a percentile bootstrap (`scipy.stats.bootstrap`, seeded), the protected share's is
Wilson's (`statsmodels`); paired tests are Wilcoxon signed-rank with Holm's correction over the family tested.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from selenc.grid import Trial, effective_metric
from selenc.results import PSNR_CAP, SUCCESS, finite
from selenc.settings import ARCH_MODALITY, PrivacyLevel

CELL = [f.name for f in dataclasses.fields(Trial) if f.name != "trial"]  # a grid point minus its sample
STRONGEST = "strongest"  # the attack name of the strongest-attacker rows
COST = ["he_encrypt_s", "he_bytes"]  # the measured HE cost of the cell's ratio
CONFIDENCE = 0.95
RESAMPLES = 2000


def success(rows: pd.DataFrame) -> pd.Series:
    """Attack success per row on its modality's scale: PSNR (capped at 100 dB: exact copies are inf) or ROUGE-1."""
    image = rows.arch.map(ARCH_MODALITY) == "image"
    psnr = rows.psnr.astype(float).clip(upper=PSNR_CAP)
    return pd.Series(np.where(image, psnr, rows[SUCCESS["text"][0]].astype(float)), index=rows.index)


def protected(rows: pd.DataFrame, level: PrivacyLevel) -> pd.Series:
    """Per row: did the attack fail at this level (under every bound of its modality)? Unfinished rows: no."""
    image = rows.arch.map(ARCH_MODALITY) == "image"
    img = (rows.psnr <= level.psnr_max) & (rows.ssim <= level.ssim_max)
    txt = (rows.rouge1 <= level.rouge1_max) & (rows.token_f1.fillna(0) <= level.token_f1_max)
    return (rows.status == "ok") & pd.Series(np.where(image, img, txt), index=rows.index)


def trials(table: pd.DataFrame, levels: dict[str, PrivacyLevel]) -> pd.DataFrame:
    """Finished trials with `success` and one `protected_<level>` column per level, plus the strongest attacker's
    rows (attack = STRONGEST) for every sample."""
    ok = table[table.status == "ok"]
    out = ok[[*CELL, "trial", "phi", *COST]].assign(success=success(ok))
    for name, level in levels.items():
        out[f"protected_{name}"] = protected(ok, level)
    return pd.concat([out, strongest(out)], ignore_index=True)


def strongest(rows: pd.DataFrame) -> pd.DataFrame:
    """Per sample (a cell minus its attack, plus `trial`), over every attack run on it: the highest success, and
    protected only where every attack failed. A sample that one attack ran on has that attack as its strongest."""
    keys = [c for c in CELL if c != "attack"] + ["trial"]
    rows = rows[rows.attack != STRONGEST]
    agg = (
        {"success": "max"}
        | {c: "first" for c in ["phi", *COST]}
        | {c: "all" for c in rows if c.startswith("protected_")}
    )
    return rows.groupby(keys, as_index=False, sort=False).agg(agg).assign(attack=STRONGEST)


def median_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Median and its percentile-bootstrap CONFIDENCE interval (both ends the median when n < 2 or all equal)."""
    values = np.asarray(values, dtype=float)
    med = float(np.median(values))
    if len(values) < 2 or np.ptp(values) == 0:
        return med, med, med
    res = sps.bootstrap(
        (values,),
        np.median,
        confidence_level=CONFIDENCE,
        n_resamples=RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return med, float(res.confidence_interval.low), float(res.confidence_interval.high)


def wilson(protected_count: int, n: int) -> tuple[float, float]:
    """Wilson CONFIDENCE interval of a share of `protected_count` out of `n`."""
    low, high = proportion_confint(protected_count, n, alpha=1 - CONFIDENCE, method="wilson")
    return float(low), float(high)


def summary(table: pd.DataFrame, levels: dict[str, PrivacyLevel], seed: int = 0) -> pd.DataFrame:
    """One row per cell (the strongest attacker's included): n, median success with its bootstrap interval, and per
    level the protected share with its Wilson interval. Written as reports/results/summary.csv."""
    rows = []
    for cell, group in trials(table, levels).groupby(CELL, sort=True):
        med, low, high = median_ci(group.success.to_numpy(), seed)
        row = (
            dict(zip(CELL, cell, strict=True))
            | {
                "measure": SUCCESS[ARCH_MODALITY[cell[0]]][0],
                "n": len(group),
                "median": med,
                "ci_low": low,
                "ci_high": high,
            }
            | {c: group[c].iloc[0] for c in COST}
        )
        for name in levels:
            k = int(group[f"protected_{name}"].sum())
            share_low, share_high = wilson(k, len(group))
            row |= {f"protected_{name}": k / len(group), f"{name}_low": share_low, f"{name}_high": share_high}
        rows.append(row)
    return pd.DataFrame(rows)


def wilcoxon(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (1.0 when all are zero)."""
    diff = np.asarray(diff, dtype=float)
    if len(diff) == 0 or not np.any(diff != 0):
        return 1.0
    return float(sps.wilcoxon(diff, zero_method="zsplit").pvalue)


def holm(pvalues: pd.Series) -> pd.Series:
    """Holm-corrected p-values of one family of tests."""
    if len(pvalues) == 0:
        return pvalues
    return pd.Series(multipletests(pvalues.to_numpy(), method="holm")[1], index=pvalues.index)


GAPS = {  # name: (column, better, worse): success under `better` minus under `worse`, same samples (`paired_gap`)
    "zero_fill_gap": ("threat_model", "mask_aware", "zero_fill"),
    "shared_mask_gap": ("mask_source", "shared", "own"),
    "decoy_gap": ("ties", "decoys", "index"),
    "trained_gap": ("victim", "trained", "untrained"),
}
BASELINE = "random"  # the metric every other one is tested against where it ran (`paired_metrics`)


def paired_metrics(table: pd.DataFrame, levels: dict[str, PrivacyLevel], seed: int = 0) -> pd.DataFrame:
    """Which metric protects better at equal ratio: per (arch, attack, threat model, mask source, ties, victim), each
    metric against BASELINE where it ran (every pair of metrics where it did not), on the pairs both ran: a pair is
    one sample at one ratio 0 < ρ < 1, so both metrics hide the same number of coordinates of the same update.

    Per comparison: pairs n, the median difference in success (a − b; negative: a protects better) with its bootstrap
    interval, the Wilcoxon p, and Holm's correction over each (arch, attack)'s family. Pooling the ratios and testing
    against one baseline keeps the family small enough for five samples per cell to reach significance (one ratio's
    five pairs cannot: their smallest two-sided p is 2/2^5)."""
    rows = trials(table, levels)
    rows = rows[(rows.ratio > 0) & (rows.ratio < 1)]
    keys = [c for c in CELL if c not in ("metric", "ratio")]
    cols = [*keys, "metric_a", "metric_b", "n", "median_diff", "ci_low", "ci_high", "p"]
    out = []
    for cell, group in rows.groupby(keys, sort=True):
        wide = group.pivot_table(index=["ratio", "trial"], columns="metric", values="success")
        names = sorted(wide.columns)
        if BASELINE in names:
            pairs = [(a, BASELINE) for a in names if a != BASELINE]
        else:
            pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        for a, b in pairs:
            diff = (wide[a] - wide[b]).dropna().to_numpy()
            if len(diff) < 2:
                continue
            med, low, high = median_ci(diff, seed)
            out.append(
                dict(zip(keys, cell, strict=True))
                | {"metric_a": a, "metric_b": b, "n": len(diff), "median_diff": med, "ci_low": low, "ci_high": high}
                | {"p": wilcoxon(diff)}
            )
    frame = pd.DataFrame(out, columns=cols)
    frame["p_holm"] = frame.groupby(["arch", "attack"]).p.transform(holm) if len(frame) else []
    frame["significant"] = frame.p_holm < 1 - CONFIDENCE
    return frame


def paired_gap(table: pd.DataFrame, column: str, better: str, worse: str, seed: int = 0) -> pd.DataFrame:
    """Per architecture, over the samples run under both values of `column` (everything else equal, 0 < ρ < 1):
    pairs n, the median of success(`better`) − success(`worse`) with its bootstrap interval, and the Wilcoxon p.
    E.g. column="threat_model", better="mask_aware", worse="zero_fill": how much zero-fill overstates protection."""
    ok = table[(table.status == "ok") & (table.ratio > 0) & (table.ratio < 1)]
    ok = ok.assign(success=success(ok))
    keys = [c for c in [*CELL, "trial"] if c != column]
    wide = ok[ok[column].isin([better, worse])].pivot_table(index=keys, columns=column, values="success")
    cols = ["arch", "n", "median", "ci_low", "ci_high", "p"]
    if better not in wide or worse not in wide:
        return pd.DataFrame(columns=cols)
    diff = (wide[better] - wide[worse]).dropna()
    out = []
    for arch, d in diff.groupby(level="arch"):
        med, low, high = median_ci(d.to_numpy(), seed)
        out.append({"arch": arch, "n": len(d), "median": med, "ci_low": low, "ci_high": high, "p": wilcoxon(d)})
    return pd.DataFrame(out, columns=cols)


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[float, int, float, float]:
    """Spearman correlation of x and y given z (the partial correlation of their ranks), its n and a Fisher-z
    CONFIDENCE interval. NaN when a variable is constant."""
    ranks = np.column_stack([sps.rankdata(v) for v in (x, y, z)])
    n = len(ranks)
    if n < 5 or np.any(ranks.std(axis=0) == 0):
        return float("nan"), n, float("nan"), float("nan")
    r = np.corrcoef(ranks, rowvar=False)
    rxy, rxz, ryz = r[0, 1], r[0, 2], r[1, 2]
    denom = np.sqrt((1 - rxz**2) * (1 - ryz**2))
    if denom == 0:
        return float("nan"), n, float("nan"), float("nan")
    partial = float(np.clip((rxy - rxz * ryz) / denom, -1, 1))
    half = sps.norm.ppf(0.5 + CONFIDENCE / 2) / np.sqrt(n - 4)  # one variable controlled: n - 3 - 1
    z_r = np.arctanh(np.clip(partial, -0.999999, 0.999999))
    return partial, int(n), float(np.tanh(z_r - half)), float(np.tanh(z_r + half))


# --- the theory's checks read off results tables (T2, T4; the theory stage's own trials or any sweep's) -------------
def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (nan when either is constant)."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman: lengths differ ({a.size} vs {b.size})")
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(sps.spearmanr(a[ok], b[ok]).statistic)


def bound_summary(table: pd.DataFrame, tolerance: float) -> dict:
    """T2: (B1) points checked (finished trials with something encrypted and a comparable output), violations beyond
    `tolerance`, and the median tightness bound / error."""
    rows = table[(table.status == "ok") & (table.k > 0) & table.b1_error.notna()]
    bound_, error = rows.b1_bound.astype(float), rows.b1_error.astype(float)
    violated = bound_ > error * (1 + tolerance) + 1e-12
    tight = (bound_ / error)[error > 0]
    return {
        "checked": len(rows),
        "violations": int(violated.sum()),
        "tightness_median": float(tight.median()) if len(tight) else float("nan"),
    }


def phi_cells(table: pd.DataFrame, success: str) -> pd.DataFrame:
    """Mean φ(S) and mean attack success per (attack, metric, ratio) cell of `table`'s finished trials (one threat
    model, mask source, ties and victim: `results.main_trials`).

    ρ = 0 and ρ = 1 are one cell each whatever the metric (`grid.effective_metric`: none / all)."""
    ok = finite(table, success)
    ok["metric"] = [effective_metric(m, r) for m, r in zip(ok.metric, ok.ratio, strict=True)]
    return ok.groupby(["attack", "metric", "ratio"], as_index=False).agg(
        phi=("phi", "mean"), success=(success, "mean"), trials=("phi", "size")
    )


def phi_spearman(table: pd.DataFrame, success: str) -> dict[str, float]:
    """T4 per attack: Spearman correlation between a cell's φ(S) and its attack success (expected negative)."""
    cells = phi_cells(table, success)
    return {attack: spearman(group.phi, group.success) for attack, group in cells.groupby("attack")}


def phi_given_ratio(table: pd.DataFrame, success: str) -> dict[str, dict]:
    """T4 beyond the ratio, per attack, over `table`'s finished trials with 0 < ρ < 1: the partial Spearman
    correlation of φ(S) and success given ρ (with n and a Fisher-z interval), and the Spearman correlation within
    each ratio (with n and p; omitted where φ or success is constant)."""
    ok = finite(table, success)
    ok = ok[(ok.ratio > 0) & (ok.ratio < 1)]
    out = {}
    for attack, group in ok.groupby("attack"):
        r, n, low, high = partial_spearman(group.phi, group[success], group.ratio)
        per_ratio = {}
        for ratio, at in group.groupby("ratio"):
            if len(at) >= 3 and at.phi.nunique() > 1 and at[success].nunique() > 1:
                res = sps.spearmanr(at.phi, at[success])
                per_ratio[f"r{ratio:g}"] = {"spearman": float(res.statistic), "n": len(at), "p": float(res.pvalue)}
        out[attack] = {"partial_spearman": r, "n": n, "ci": [low, high], "per_ratio": per_ratio}
    return out
