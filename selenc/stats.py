"""From trials to findings, with the sample as the unit: per-cell medians with bootstrap intervals, protected shares
with Wilson intervals, one strongest attacker per cell, paired tests and correlations whose n counts samples.

A *sample* is one real client batch under one model initialisation (`SAMPLE`: init, trial): the same sample whatever
the attack, metric or ratio, which is what makes the comparisons paired, and the independent unit of every test and
interval here. A *cell* is one (arch, attack, threat_model, metric, ratio, mask_source, ties, victim) of the results
tables; it holds one row per sample, so its n is its sample count.

Rows of one sample are not independent (a sample attacked at two ratios is still one sample): every paired test first
averages a sample's differences within the comparison, then tests the per-sample means (exact Wilcoxon signed-rank,
Holm over the family), and correlations are computed within each sample and averaged over samples, with a t interval
over them (`over_samples`). With n samples the smallest two-sided Wilcoxon p is 2/2^n (`min_p`): below 6 samples no
test can reach 0.05, and the tables say so.

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
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from selenc.grid import Trial, effective_metric, update_fields, update_label
from selenc.results import PSNR_CAP, SUCCESS, UPDATE, Cost, RunCost, finite
from selenc.settings import FIRST_ROUND_IS_ONE_ROUND, Guidelines, PrivacyLevel

SAMPLE = ["init", "trial"]  # a sample: one model initialisation and one real client batch, the unit of every test
CELL = [f.name for f in dataclasses.fields(Trial) if f.name not in SAMPLE]  # a grid point minus its sample
STRONGEST = "strongest"  # the attack name of the strongest-attacker rows
# the measured HE cost of the cell's ratio, per upload and per federated run (`results.RunCost`)
COST = [f for f in [*Cost.model_fields, *RunCost.model_fields] if not f.startswith("he_ciphertexts")]
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
RESAMPLES = 2000


def success(rows: pd.DataFrame) -> pd.Series:
    """Attack success per row on its modality's scale: PSNR (capped at 100 dB: exact copies are inf) or ROUGE-1."""
    image = rows.modality == "image"
    psnr = rows.psnr.astype(float).clip(upper=PSNR_CAP)
    return pd.Series(np.where(image, psnr, rows[SUCCESS["text"][0]].astype(float)), index=rows.index)


def update_labels(table: pd.DataFrame) -> pd.Series:
    """Per row: its client update as a label (`grid.update_label` of its `results.UPDATE` columns): 'fedsgd B=4'."""
    labels = [update_label(*fields) for fields in table[list(UPDATE)].itertuples(index=False, name=None)]
    return pd.Series(labels, index=table.index, dtype=object)


def every_update(table: pd.DataFrame, cfg: Guidelines) -> pd.DataFrame:
    """The rows of the attacker, mask source, ties and victim the guidelines read, on every client update."""
    read = (table.threat_model == cfg.threat_model) & (table.mask_source == cfg.mask_source) & (table.ties == cfg.ties)
    return table[read & (table.victim == cfg.victim)]


def recovered(rows: pd.DataFrame) -> pd.Series:
    """Per row: the share of its batch recovered outright (images: at `metrics.RECOVERED_DB` or more; text: word for
    word)."""
    image = rows.modality == "image"
    column = {c: rows[c].astype(float) if c in rows else np.nan for c in ("recovered", "exact_match")}  # nan: not run
    return pd.Series(np.where(image, column["recovered"], column["exact_match"]), index=rows.index)


def protected(rows: pd.DataFrame, level: PrivacyLevel) -> pd.Series:
    """Per row: did the attack fail at this level (under every bound of its modality)? Unfinished rows: no."""
    image = rows.modality == "image"
    img = (rows.psnr <= level.psnr_max) & (rows.ssim <= level.ssim_max)
    txt = (rows.rouge1 <= level.rouge1_max) & (rows.token_f1.fillna(0) <= level.token_f1_max)
    return (rows.status == "ok") & pd.Series(np.where(image, img, txt), index=rows.index)


def trials(table: pd.DataFrame, levels: dict[str, PrivacyLevel]) -> pd.DataFrame:
    """Finished trials with `success`, one `protected_<level>` column per level and their adversary (`attack_set`:
    the attack itself; `slice` False), plus the strongest attacker's rows of every cell (`strongest`)."""
    ok = table[table.status == "ok"]
    out = ok[[*CELL, *SAMPLE, "modality", "phi", *COST]].assign(success=success(ok), recovered=recovered(ok))
    out = out.assign(attack_set=ok.attack, slice=False)
    for name, level in levels.items():
        out[f"protected_{name}"] = protected(ok, level)
    return pd.concat([out, strongest(out)], ignore_index=True)


def strongest(rows: pd.DataFrame) -> pd.DataFrame:
    """The strongest attacker of every cell (its rows minus the attack), one row per sample: the highest success of
    the attacks in `attack_set` (and the largest share any of them recovered), protected only where every one of
    them failed.

    The cell's adversary (`slice` False) is the set of attacks that ran on every one of its samples. Where some
    samples ran more attacks, each larger set is a slice of its own (`slice` True) over the samples that ran all of
    it: a cell's samples never face different adversaries."""
    rows = rows[rows.attack != STRONGEST]
    keys = [c for c in CELL if c != "attack"]
    flags = [c for c in rows if c.startswith("protected_")]
    agg = (
        {"success": "max", "recovered": "max"}
        | {c: "first" for c in ["modality", "phi", *COST]}
        | dict.fromkeys(flags, "all")
    )
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


def decisive(table: pd.DataFrame, levels: dict[str, PrivacyLevel]) -> dict:
    """Which attacks decide the strongest attacker's verdicts: per architecture and level, over the masked cells
    (0 < ρ < 1) of the rows given, for each attack the (cell, sample) pairs it alone broke (every other attack that
    ran on the pair failed there), out of the pairs where two or more attacks ran, and the samples those span. An
    attack that alone breaks none adds nothing to the verdicts it ran beside."""
    ok = table[(table.status == "ok") & (table.ratio > 0) & (table.ratio < 1)]
    keys = [c for c in CELL if c != "attack"] + SAMPLE
    out: dict = {}
    for arch, rows in ok.groupby("arch"):
        for name, level in levels.items():
            flags = rows.assign(broken=~protected(rows, level)).pivot_table(
                index=keys, columns="attack", values="broken", aggfunc="first"
            )
            flags = flags[flags.notna().sum(axis=1) >= 2]
            samples = flags.reset_index()[SAMPLE].drop_duplicates()
            level_out = out.setdefault(arch, {}).setdefault(name, {})
            for attack in flags.columns:
                ran = flags[flags[attack].notna()]
                if ran.empty:
                    continue
                others = ran.drop(columns=attack)
                alone = ran[attack].astype(bool) & ~others.fillna(False).astype(bool).any(axis=1)
                level_out[attack] = {"alone_broke": int(alone.sum()), "pairs": len(ran), "samples": len(samples)}
    return out


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
            | {"modality": group.modality.iloc[0], "measure": SUCCESS[group.modality.iloc[0]][0]}
            | {"n_samples": n, "median": med}
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
    E.g. column="threat_model", better="mask_aware", worse="zero_fill": how much zero-fill overstates protection.
    `column` "update" compares client updates by their labels (`results.update_labels`), e.g. "fedsgd B=1"."""
    ok = table[(table.status == "ok") & (table.ratio > 0) & (table.ratio < 1)]
    return _gap(ok.assign(success=success(ok), update=update_labels(ok)), column, better, worse, seed)


def _gap(rows: pd.DataFrame, column: str, better: str, worse: str, seed: int) -> pd.DataFrame:
    """`paired_gap` on rows that carry `success` and an `update` label."""
    fields = [c for c in [*CELL, *SAMPLE] if c not in UPDATE] + ["update"]
    keys = [c for c in fields if c != column]
    wide = rows[rows[column].isin([better, worse])].pivot_table(index=keys, columns=column, values="success")
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


BROKEN, NOT_BROKEN, UNDECIDED = "broken", "not broken", "undecided"


def baseline(protected_count: int, n: int, level: PrivacyLevel) -> str:
    """Whether an attack is a valid baseline at `level`, from its protected samples with nothing encrypted: `broken`
    (the Wilson interval of the protected share ends below min_protected: it breaks the unprotected update),
    `not broken` (it starts at or above: ρ = 0 already protects by the level's rule, so a masked cell protected
    against this attack says nothing about the mask) or `undecided` (the interval straddles it)."""
    low, high = wilson(protected_count, n)
    if high < level.min_protected:
        return BROKEN
    return NOT_BROKEN if low >= level.min_protected else UNDECIDED


def update_rows(table: pd.DataFrame, cfg: Guidelines) -> pd.DataFrame:
    """The strongest attacker's rows (one per cell and sample, no slices) of the attacker, mask source, ties and victim
    the guidelines read, on every one-message client update (several rounds are `rounds_rows`'), each with its
    update's label (`update`)."""
    table = table[table.rounds == 1]
    strong = trials(every_update(table, cfg), cfg.levels)
    strong = strong[(strong.attack == STRONGEST) & ~strong.slice.astype(bool)]
    return strong.assign(update=update_labels(strong))


def update_effect(table: pd.DataFrame, cfg: Guidelines, seed: int = 0) -> dict[str, dict[str, dict]]:
    """What the client update changes, per architecture and update (label), for the strongest attacker of the rows
    the guidelines read on every update (`every_update`):

    - `unprotected` (ρ = 0): its samples, median success with the bootstrap interval, the mean share recovered
      outright, and per level the protected samples with their Wilson interval and `baseline` (`baseline`);
    - `gap` (every update but the guidelines' own): over 0 < ρ < 1, each sample's success under the guidelines'
      update minus under this one, averaged over its cells, then tested over samples (`paired_gap`); positive: this
      update leaks less on the same clients."""
    strong = update_rows(table, cfg)
    reference = update_label(*update_fields(cfg.reads))
    flags = [f"protected_{name}" for name in cfg.levels]
    out: dict[str, dict[str, dict]] = {}
    for (arch, label), group in strong[strong.ratio == 0].groupby(["arch", "update"]):
        # the ρ = 0 cells of different metrics are one computation (`grid.Trial.identity`): one row per sample
        per = group.groupby(SAMPLE).agg({"success": "max", "recovered": "max"} | dict.fromkeys(flags, "all"))
        med, low, high = median_ci(per.success.to_numpy(), seed)
        entry = {"n_samples": len(per), "median": med, "ci_low": low, "ci_high": high}
        entry["recovered"] = float(per.recovered.mean())
        for name, level in cfg.levels.items():
            k = int(per[f"protected_{name}"].sum())
            share_low, share_high = wilson(k, len(per))
            entry[name] = {
                "protected": k,
                "low": share_low,
                "high": share_high,
                "baseline": baseline(k, len(per), level),
            }
        out.setdefault(arch, {})[label] = {"unprotected": entry, "gap": None}
    masked = strong[(strong.ratio > 0) & (strong.ratio < 1)]
    for label in sorted(set(masked["update"]) - {reference}):
        for g in _gap(masked, "update", reference, label, seed).to_dict("records"):
            out.setdefault(g.pop("arch"), {}).setdefault(label, {"unprotected": None})["gap"] = g
    return out


def rounds_rows(table: pd.DataFrame, cfg: Guidelines) -> pd.DataFrame:
    """The strongest attacker's rows (one per sample) of every masked cell run over several rounds and of the
    one-round updates of the same clients, for the rows the guidelines read, each with its `update` label and its
    adversary (`attacks`). One adversary per cell: the attacks that ran on every sample under every update of the
    cell, so a rounds slice that runs fewer attacks than the one-round grid is paired with one round under those
    attacks only, never with a stronger one-round adversary. Where round 0 is the one-round message
    (`with_first_round`), the several-round rows hold that message's attack too."""
    rows = trials(every_update(table, cfg), cfg.levels)
    rows = rows[(rows.attack != STRONGEST) & (rows.ratio > 0) & (rows.ratio < 1)]
    rows = rows.assign(update=update_labels(rows))
    parts = []
    for _, cell in rows.groupby(["arch", "metric", "ratio"]):
        several = cell[cell.rounds > 1]
        if several.empty:
            continue
        cell = cell[(cell.rounds > 1) | cell["update"].isin({_one_round(label) for label in several["update"]})]
        attacks = frozenset.intersection(*cell.groupby(["update", *SAMPLE]).attack.agg(frozenset))
        if attacks:
            strong = strongest(cell[cell.attack.isin(attacks)])
            strong = strong.assign(update=update_labels(strong), attacks="+".join(sorted(attacks)))
            parts.append(with_first_round(strong.reset_index(drop=True)))
    empty = rows.iloc[:0].assign(attacks="", joint_success=np.nan, first_round_better=False)
    return pd.concat(parts, ignore_index=True) if parts else empty


def with_first_round(strong: pd.DataFrame) -> pd.DataFrame:
    """Strongest-attacker rows of one cell with the several-round rows' round 0 taken into account: under a policy
    whose round 0 is the one-round message (`settings.FIRST_ROUND_IS_ONE_ROUND`) the server holds that message, so a
    sample's success is the larger of the multi-round attack's (`joint_success`) and the one-round attack's on the
    same sample, and it is protected only where both failed; `first_round_better` marks the samples where the
    one-round attack did better than the joint one."""
    flags = [c for c in strong if c.startswith("protected_")]
    one = strong[strong.rounds == 1].set_index(["update", *SAMPLE])
    base = one.reindex(pd.MultiIndex.from_arrays([strong["update"].map(_one_round), strong.init, strong.trial]))
    holds = (strong.rounds > 1) & strong.mask_policy.isin(FIRST_ROUND_IS_ONE_ROUND) & base.success.notna().to_numpy()
    out = strong.assign(joint_success=strong.success, first_round_better=False)
    at = holds.to_numpy()
    out.loc[holds, "first_round_better"] = base.success.to_numpy()[at] > out.success.to_numpy()[at]
    out.loc[holds, "success"] = np.fmax(out.success.to_numpy()[at], base.success.to_numpy()[at])
    out.loc[holds, "recovered"] = np.fmax(out.recovered.to_numpy()[at], base.recovered.to_numpy()[at])
    for flag in flags:
        out.loc[holds, flag] = out[flag].to_numpy()[at] & base[flag].to_numpy()[at].astype(bool)
    return out


def rounds_effect(table: pd.DataFrame, cfg: Guidelines, seed: int = 0) -> dict[str, dict[str, dict]]:
    """What combining rounds changes, per architecture and masked cell ("<metric> <ratio>") that ran several rounds,
    for its strongest attacker (`rounds_rows`): per update of the cell (`update` label; the one-round updates of the
    same clients first, `one_round` naming each update's) its samples, median success with the bootstrap interval,
    per level the protected samples with their Wilson interval, the HE megabytes of the whole run (median over
    samples) and, for several rounds, the paired gap to one round on the same samples (success with R rounds minus
    with one, per sample; positive: the rounds leak more), with the exact Wilcoxon p."""
    out: dict[str, dict[str, dict]] = {}
    for (arch, metric, ratio), cell in rounds_rows(table, cfg).groupby(["arch", "metric", "ratio"]):
        single, entry = cell[cell.rounds == 1], {}
        for label, group in [*single.groupby("update"), *cell[cell.rounds > 1].groupby("update")]:
            per = group.set_index(SAMPLE)
            med, low, high = median_ci(per.success.to_numpy(), seed)
            row = {"rounds": int(per.rounds.iloc[0]), "attacks": per.attacks.iloc[0], "n_samples": len(per)}
            row["first_round_better"] = int(per.first_round_better.sum())  # samples the joint attack fell behind on
            row["joint_median"] = float(per.joint_success.median())  # the multi-round attack's own
            row |= {"median": med, "ci_low": low, "ci_high": high, "he_mb_run": float(per.he_bytes_run.median()) / 1e6}
            for name in cfg.levels:
                k = int(per[f"protected_{name}"].sum())
                share_low, share_high = wilson(k, len(per))
                row[name] = {"protected": k, "low": share_low, "high": share_high}
            row["gap"], row["one_round"] = None, _one_round(label)
            base = single[single["update"] == _one_round(label)].set_index(SAMPLE).success
            if row["rounds"] > 1 and len(base):
                diff = (per.success - base).dropna().to_numpy()
                if len(diff):
                    g_med, g_low, g_high = median_ci(diff, seed)
                    row["gap"] = {"n_samples": len(diff), "median": g_med, "ci_low": g_low, "ci_high": g_high}
                    row["gap"] |= {"p": wilcoxon(diff), "min_p": min_wilcoxon_p(len(diff))}
            entry[label] = row
        out.setdefault(arch, {})[f"{metric} {ratio:g}"] = entry
    return out


def _one_round(label: str) -> str:
    """The one-round update of a label: 'fedsgd B=1 R=4 frozen' -> 'fedsgd B=1'."""
    return label.split(" R=")[0]


def _partial(ranks: np.ndarray) -> float:
    """The partial correlation of columns 0 and 1 of `ranks` given column 2 (nan when undefined)."""
    if np.any(ranks.std(axis=0) == 0):
        return float("nan")
    r = np.corrcoef(ranks, rowvar=False)
    rxy, rxz, ryz = r[0, 1], r[0, 2], r[1, 2]
    denom = np.sqrt((1 - rxz**2) * (1 - ryz**2))
    return float(np.clip((rxy - rxz * ryz) / denom, -1, 1)) if denom > 0 else float("nan")


def over_samples(
    statistic: Callable[..., float], columns: list[np.ndarray], samples: np.ndarray
) -> tuple[float, int, int, float, float]:
    """A correlation computed within each sample (rows of one sample together), then averaged over samples in
    Fisher-z with a t interval over them (n_samples − 1 degrees of freedom): the sample is the unit, however many rows
    each contributes. Returns (the back-transformed mean, rows, samples with a defined value, low, high); no interval
    below 2 samples."""
    ids, inverse = np.unique(samples, return_inverse=True, axis=0)
    zs = []
    for c in range(len(ids)):
        rows = inverse.ravel() == c
        value = statistic(*(col[rows] for col in columns))
        if np.isfinite(value):
            zs.append(np.arctanh(np.clip(value, -0.999999, 0.999999)))
    n = len(zs)
    if n == 0:
        return float("nan"), len(columns[0]), 0, float("nan"), float("nan")
    mean = float(np.mean(zs))
    if n < 2:
        return float(np.tanh(mean)), len(columns[0]), n, float("nan"), float("nan")
    half = sps.t.ppf(1 - ALPHA / 2, n - 1) * float(np.std(zs, ddof=1)) / np.sqrt(n)
    return float(np.tanh(mean)), len(columns[0]), n, float(np.tanh(mean - half)), float(np.tanh(mean + half))


def partial_spearman(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, samples: np.ndarray | None = None
) -> tuple[float, int, int, float, float]:
    """Spearman correlation of x and y given z (the partial correlation of their ranks) within each sample
    (`samples`: the sample of each row; None: one sample), averaged over samples with a CONFIDENCE interval over them
    (`over_samples`): its value, rows, samples, low, high. NaN where a variable is constant within every sample."""
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    samples = np.zeros(len(x), dtype=int) if samples is None else np.asarray(samples)

    def statistic(a, b, c):
        return _partial(np.column_stack([sps.rankdata(v) for v in (a, b, c)])) if len(a) >= 4 else float("nan")

    return over_samples(statistic, [x, y, z], samples)


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
    correlation of φ(S) and success given ρ, and the Spearman correlation within each ratio, each computed within every
    sample and averaged over samples with a t interval over them (`over_samples`): n counts rows, n_samples samples."""
    ok = finite(table, success)
    ok = ok[(ok.ratio > 0) & (ok.ratio < 1)]
    out = {}
    for attack, group in ok.groupby("attack"):
        samples = group[SAMPLE].to_numpy()
        r, n, n_samples, low, high = partial_spearman(group.phi, group[success], group.ratio, samples)
        per_ratio = {}
        for ratio, at in group.groupby("ratio"):
            x, y = at.phi.to_numpy(float), at[success].to_numpy(float)
            rho, rows, k, lo, hi = over_samples(spearman, [x, y], at[SAMPLE].to_numpy())
            if k:
                per_ratio[f"r{ratio:g}"] = {"spearman": rho, "n": rows, "n_samples": k, "ci": [lo, hi]}
        out[attack] = {"partial_spearman": r, "n": n, "n_samples": n_samples, "ci": [low, high], "per_ratio": per_ratio}
    return out
