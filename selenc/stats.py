"""From trials to findings, with the sample as the unit: per-cell medians with bootstrap intervals, protected shares
with Wilson intervals, one strongest attacker per cell, paired tests and correlations whose n counts samples.

A *sample* is one real client batch under one model initialisation (`SAMPLE`: init, trial): the same sample whatever
the attack, metric or ratio, which is what makes the comparisons paired, and the independent unit of every test and
interval here. A *cell* is one (arch, attack, threat_model, metric, ratio, mask_source, ties, victim) of the results
tables; it holds one row per sample, so its n is its sample count.

Rows of one sample are not independent (a sample attacked at two ratios is still one sample): every paired test first
averages a sample's differences within the comparison, then tests the per-sample means (exact Wilcoxon signed-rank,
Holm over the family), and correlations take their intervals from a cluster bootstrap that resamples samples. With n
samples the smallest two-sided Wilcoxon p is 2/2^n (`min_p`): below 6 samples no test can reach 0.05, and the tables
say so.

The *strongest* attacker of a cell is every attack that ran on all of the cell's samples at once (`attack_set`): a
sample's success is the best of those attacks' and it is protected only when every one failed. Attacks that ran on
only some of the cell's samples never enter that adversary: they form their own slice (`slice` True), the strongest
over the larger set on the samples that ran it. Success is on one scale per modality (`results.SUCCESS`: PSNR capped
at 100 dB, or ROUGE-1).

Intervals: the median's is a percentile bootstrap over samples (`scipy.stats.bootstrap`, seeded), the protected
share's is Wilson's (`statsmodels`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from selenc.grid import Trial, effective_metric
from selenc.results import PSNR_CAP, SUCCESS, Cost, finite
from selenc.settings import ARCH_MODALITY, PrivacyLevel

SAMPLE = ["init", "trial"]  # a sample: one model initialisation and one real client batch, the unit of every test
CELL = [f.name for f in dataclasses.fields(Trial) if f.name not in SAMPLE]  # a grid point minus its sample
STRONGEST = "strongest"  # the attack name of the strongest-attacker rows
COST = [f for f in Cost.model_fields if f != "he_ciphertexts"]  # the measured HE cost of the cell's ratio
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
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
    """Finished trials with `success`, one `protected_<level>` column per level and their adversary (`attack_set`:
    the attack itself; `slice` False), plus the strongest attacker's rows of every cell (`strongest`)."""
    ok = table[table.status == "ok"]
    out = ok[[*CELL, *SAMPLE, "phi", *COST]].assign(success=success(ok), attack_set=ok.attack, slice=False)
    for name, level in levels.items():
        out[f"protected_{name}"] = protected(ok, level)
    return pd.concat([out, strongest(out)], ignore_index=True)


def strongest(rows: pd.DataFrame) -> pd.DataFrame:
    """The strongest attacker of every cell (its rows minus the attack), one row per sample: the highest success of
    the attacks in `attack_set`, protected only where every one of them failed.

    The cell's adversary (`slice` False) is the set of attacks that ran on every one of its samples. Where some
    samples ran more attacks, each larger set is a slice of its own (`slice` True) over the samples that ran all of
    it: a cell's samples never face different adversaries."""
    rows = rows[rows.attack != STRONGEST]
    keys = [c for c in CELL if c != "attack"]
    flags = [c for c in rows if c.startswith("protected_")]
    agg = {"success": "max"} | {c: "first" for c in ["phi", *COST]} | dict.fromkeys(flags, "all")
    out = []
    for _, cell in rows.groupby(keys, sort=False):
        ran = cell.groupby(SAMPLE).attack.agg(frozenset)
        common = frozenset.intersection(*ran)
        for attack_set in sorted({common, *ran}, key=lambda s: (len(s), sorted(s))):
            if not attack_set:  # no attack ran on every sample: the cell has slices only
                continue
            samples = ran.index[[attack_set <= s for s in ran]]
            part = cell[cell.attack.isin(attack_set) & cell.set_index(SAMPLE).index.isin(samples)]
            best = part.groupby(keys + SAMPLE, as_index=False, sort=False).agg(agg)
            out.append(
                best.assign(attack=STRONGEST, attack_set="+".join(sorted(attack_set)), slice=attack_set != common)
            )
    columns = [*keys, *SAMPLE, *agg, "attack", "attack_set", "slice"]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=columns)


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


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p an exact Wilcoxon signed-rank test of n non-zero differences can give: 2/2^n (every
    difference of one sign). Below 6 samples it is above 0.05: such a comparison cannot be significant."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


def summary(table: pd.DataFrame, levels: dict[str, PrivacyLevel], seed: int = 0) -> pd.DataFrame:
    """One row per cell and adversary (the strongest attacker's included): its samples `n_samples`, the median
    success with its bootstrap interval over them, and per level the protected share with its Wilson interval.
    Written as reports/results/summary.csv."""
    rows = []
    keys = [*CELL, "attack_set", "slice"]
    for cell, group in trials(table, levels).groupby(keys, sort=True):
        n = len(group)
        if group[SAMPLE].duplicated().any():
            raise ValueError(f"cell {dict(zip(keys, cell, strict=True))} holds a sample twice")
        med, low, high = median_ci(group.success.to_numpy(), seed)
        row = (
            dict(zip(keys, cell, strict=True))
            | {"measure": SUCCESS[ARCH_MODALITY[cell[0]]][0], "n_samples": n, "median": med}
            | {"ci_low": low, "ci_high": high}
            | {c: group[c].iloc[0] for c in COST}
        )
        for name in levels:
            k = int(group[f"protected_{name}"].sum())
            share_low, share_high = wilson(k, n)
            row |= {f"protected_{name}": k / n, f"{name}_low": share_low, f"{name}_high": share_high}
        rows.append(row)
    return pd.DataFrame(rows)


def wilcoxon(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences, one per sample (exact up to 50 samples, ties and
    zeros included; 1.0 when all are zero)."""
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


def per_sample(diff: pd.Series) -> pd.Series:
    """Paired differences indexed by (..., init, trial), averaged per sample: the values a test may count."""
    return diff.groupby(level=SAMPLE).mean()


def paired_metrics(table: pd.DataFrame, levels: dict[str, PrivacyLevel], seed: int = 0) -> pd.DataFrame:
    """Which metric protects better at equal ratio: per (arch, attack and its adversary set, threat model, mask
    source, ties, victim), each metric against BASELINE where it ran (every pair of metrics where it did not). A pair
    is one sample at one ratio 0 < ρ < 1, so both metrics hide the same number of coordinates of the same update; a
    sample's pairs are averaged over the ratios before testing, so the test counts samples.

    Per comparison: n_samples and the pairs behind them (n_pairs), the median over samples of the difference in
    success (a − b; negative: a protects better) with its bootstrap interval, the exact Wilcoxon p, the smallest p
    n_samples allow (`min_p`), and Holm's correction over each (arch, attack)'s family."""
    rows = trials(table, levels)
    rows = rows[(rows.ratio > 0) & (rows.ratio < 1) & ~rows.slice.astype(bool)]
    keys = [c for c in [*CELL, "attack_set"] if c not in ("metric", "ratio")]
    cols = [*keys, "metric_a", "metric_b", "n_samples", "n_pairs", "median_diff", "ci_low", "ci_high", "p", "min_p"]
    out = []
    for cell, group in rows.groupby(keys, sort=True):
        wide = group.pivot_table(index=["ratio", *SAMPLE], columns="metric", values="success")
        names = sorted(wide.columns)
        if BASELINE in names:
            pairs = [(a, BASELINE) for a in names if a != BASELINE]
        else:
            pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        for a, b in pairs:
            diff = (wide[a] - wide[b]).dropna()
            means = per_sample(diff).to_numpy()
            if len(means) < 2:
                continue
            med, low, high = median_ci(means, seed)
            out.append(
                dict(zip(keys, cell, strict=True))
                | {"metric_a": a, "metric_b": b, "n_samples": len(means), "n_pairs": len(diff)}
                | {"median_diff": med, "ci_low": low, "ci_high": high}
                | {"p": wilcoxon(means), "min_p": min_wilcoxon_p(len(means))}
            )
    frame = pd.DataFrame(out, columns=cols)
    frame["p_holm"] = frame.groupby(["arch", "attack"]).p.transform(holm) if len(frame) else []
    frame["significant"] = frame.p_holm < ALPHA
    return frame


def paired_gap(table: pd.DataFrame, column: str, better: str, worse: str, seed: int = 0) -> pd.DataFrame:
    """Per architecture, over the samples run under both values of `column` (everything else equal, 0 < ρ < 1): each
    sample's mean of success(`better`) − success(`worse`) over its pairs (cells), then over samples: n_samples,
    n_pairs, the median with its bootstrap interval, the exact Wilcoxon p and the smallest p n_samples allow.
    E.g. column="threat_model", better="mask_aware", worse="zero_fill": how much zero-fill overstates protection."""
    ok = table[(table.status == "ok") & (table.ratio > 0) & (table.ratio < 1)]
    ok = ok.assign(success=success(ok))
    keys = [c for c in [*CELL, *SAMPLE] if c != column]
    wide = ok[ok[column].isin([better, worse])].pivot_table(index=keys, columns=column, values="success")
    cols = ["arch", "n_samples", "n_pairs", "median", "ci_low", "ci_high", "p", "min_p"]
    if better not in wide or worse not in wide:
        return pd.DataFrame(columns=cols)
    diff = (wide[better] - wide[worse]).dropna()
    out = []
    for arch, d in diff.groupby(level="arch"):
        means = per_sample(d).to_numpy()
        med, low, high = median_ci(means, seed)
        out.append(
            {"arch": arch, "n_samples": len(means), "n_pairs": len(d), "median": med, "ci_low": low, "ci_high": high}
            | {"p": wilcoxon(means), "min_p": min_wilcoxon_p(len(means))}
        )
    return pd.DataFrame(out, columns=cols)


def _partial(ranks: np.ndarray) -> float:
    """The partial correlation of columns 0 and 1 of `ranks` given column 2 (nan when undefined)."""
    if np.any(ranks.std(axis=0) == 0):
        return float("nan")
    r = np.corrcoef(ranks, rowvar=False)
    rxy, rxz, ryz = r[0, 1], r[0, 2], r[1, 2]
    denom = np.sqrt((1 - rxz**2) * (1 - ryz**2))
    return float(np.clip((rxy - rxz * ryz) / denom, -1, 1)) if denom > 0 else float("nan")


def cluster_bootstrap(statistic, columns: list[np.ndarray], clusters: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Percentile CONFIDENCE interval of `statistic(*columns)` from RESAMPLES resamples of whole clusters (samples)
    with replacement: rows of one sample stay together, so the interval counts samples, not rows. nan with fewer
    than 3 clusters."""
    ids, inverse = np.unique(clusters, return_inverse=True, axis=0)
    if len(ids) < 3:
        return float("nan"), float("nan")
    members = [np.flatnonzero(inverse.ravel() == c) for c in range(len(ids))]
    gen = np.random.default_rng(seed)
    values = []
    for _ in range(RESAMPLES):
        idx = np.concatenate([members[c] for c in gen.integers(0, len(ids), len(ids))])
        values.append(statistic(*(col[idx] for col in columns)))
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < RESAMPLES / 2:  # most resamples undefined (a constant variable): no interval
        return float("nan"), float("nan")
    tail = 100 * ALPHA / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def partial_spearman(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, clusters: np.ndarray | None = None, seed: int = 0
) -> tuple[float, int, int, float, float]:
    """Spearman correlation of x and y given z (the partial correlation of their ranks), its rows, its samples
    (`clusters`: the sample of each row; None: every row its own) and a cluster-bootstrap CONFIDENCE interval over
    samples. NaN when a variable is constant, no interval below 3 samples."""
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    clusters = np.arange(len(x)) if clusters is None else np.asarray(clusters)
    n_samples = len(np.unique(clusters, axis=0))

    def statistic(a, b, c):
        return _partial(np.column_stack([sps.rankdata(v) for v in (a, b, c)]))

    r = statistic(x, y, z) if len(x) >= 4 else float("nan")
    if not np.isfinite(r):
        return float("nan"), len(x), n_samples, float("nan"), float("nan")
    low, high = cluster_bootstrap(statistic, [x, y, z], clusters, seed)
    return r, len(x), n_samples, low, high


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


def phi_given_ratio(table: pd.DataFrame, success: str, seed: int = 0) -> dict[str, dict]:
    """T4 beyond the ratio, per attack, over `table`'s finished trials with 0 < ρ < 1: the partial Spearman
    correlation of φ(S) and success given ρ, and the Spearman correlation within each ratio (omitted where φ or
    success is constant), each with its rows, its samples and a cluster-bootstrap interval over samples."""
    ok = finite(table, success)
    ok = ok[(ok.ratio > 0) & (ok.ratio < 1)]
    out = {}
    for attack, group in ok.groupby("attack"):
        clusters = group[SAMPLE].to_numpy()
        r, n, n_samples, low, high = partial_spearman(group.phi, group[success], group.ratio, clusters, seed)
        per_ratio = {}
        for ratio, at in group.groupby("ratio"):
            if len(at) >= 3 and at.phi.nunique() > 1 and at[success].nunique() > 1:
                x, y = at.phi.to_numpy(float), at[success].to_numpy(float)
                lo, hi = cluster_bootstrap(spearman, [x, y], at[SAMPLE].to_numpy(), seed)
                per_ratio[f"r{ratio:g}"] = {
                    "spearman": spearman(x, y),
                    "n": len(at),
                    "n_samples": len(np.unique(at[SAMPLE].to_numpy(), axis=0)),
                    "ci": [lo, hi],
                }
        out[attack] = {"partial_spearman": r, "n": n, "n_samples": n_samples, "ci": [low, high], "per_ratio": per_ratio}
    return out
