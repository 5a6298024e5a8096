"""From results tables to guidelines: which metric at which ratio protects, and what it costs.

A trial is *protected* at a privacy level when its attack stayed under every bound of the modality (images: PSNR and
SSIM; text: ROUGE-1 and token F1). A ratio *protects* (arch, attack, metric, level) when at least `success_fraction`
of its trials are protected, and so are those of every larger ratio in the grid (a single lucky small ratio does not
count). The recommended strategy for (arch, level) is the metric whose ratio protecting against every attack is
smallest (ties: the cheaper HE cost, then the name).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from selenc.config import ARCH_MODALITY, Guidelines, PrivacyLevel
from selenc.plots import heatmap

RECORD_KEYS = ("arch", "attack", "privacy_level", "metric", "min_ratio", "he_encrypt_s", "he_bytes", "recommended")


def protected(rows: pd.DataFrame, level: PrivacyLevel) -> pd.Series:
    """Per row: did the attack fail at this level? (rows that did not finish count as not protected)"""
    ok = rows.status == "ok"
    image = rows.arch.map(ARCH_MODALITY) == "image"
    img = (rows.psnr <= level.psnr_max) & (rows.ssim <= level.ssim_max)
    txt = (rows.rouge1 <= level.rouge1_max) & (rows.token_f1.fillna(0) <= level.token_f1_max)
    return ok & np.where(image, img, txt)


def min_protecting_ratio(rows: pd.DataFrame, level: PrivacyLevel, fraction: float) -> float | None:
    """The smallest ratio from which on every ratio protects `fraction` of its trials; None if even ρ=1 fails."""
    share = protected(rows, level).groupby(rows.ratio).mean().sort_index()
    good = (share >= fraction - 1e-12).to_numpy()
    if not good[-1]:
        return None
    first_bad_from_top = np.flatnonzero(~good)
    start = first_bad_from_top[-1] + 1 if len(first_bad_from_top) else 0
    return float(share.index[start])


def guidelines(table: pd.DataFrame, cfg: Guidelines) -> list[dict]:
    """Records (arch, attack, privacy_level, metric, min_ratio, he_encrypt_s, he_bytes, recommended)."""
    rows = table[
        (table.threat_model == cfg.threat_model) & (table.mask_source == cfg.mask_source) & (table.ties == cfg.ties)
    ]
    cost = table.groupby(["arch", "ratio"])[["he_encrypt_s", "he_bytes"]].first()
    records = []
    for (arch, attack, metric), cell in rows.groupby(["arch", "attack", "metric"], sort=True):
        for name, level in cfg.levels.items():
            r = min_protecting_ratio(cell, level, cfg.success_fraction)
            he = cost.loc[(arch, r)] if r is not None else None
            records.append(
                {
                    "arch": arch,
                    "attack": attack,
                    "privacy_level": name,
                    "metric": metric,
                    "min_ratio": r,
                    "he_encrypt_s": None if he is None else float(he.he_encrypt_s),
                    "he_bytes": None if he is None else int(he.he_bytes),
                    "recommended": False,
                }
            )
    frame = pd.DataFrame(records, columns=list(RECORD_KEYS))
    for (arch, level), group in frame.groupby(["arch", "privacy_level"]):
        need = group.groupby("metric").min_ratio.apply(lambda s: math.inf if s.isna().any() else s.max())
        need = need[np.isfinite(need)]
        if need.empty:
            continue
        cheapest = cost.loc[arch].he_encrypt_s.to_dict()
        best = min(need.index, key=lambda m: (need[m], cheapest.get(need[m], math.inf), m))
        frame.loc[(frame.arch == arch) & (frame.privacy_level == level) & (frame.metric == best), "recommended"] = True
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]


def strategy_table(records: list[dict]) -> pd.DataFrame:
    """Per (arch, level): the recommended metric, the ratio that protects against every attack, and its cost."""
    frame = pd.DataFrame(records, columns=list(RECORD_KEYS))
    rec = frame[frame.recommended].sort_values("min_ratio")
    binding = rec.groupby(["arch", "privacy_level"], as_index=False).last()  # the attack needing the largest ratio
    return binding.rename(columns={"min_ratio": "ratio", "attack": "binding_attack"})[
        ["arch", "privacy_level", "metric", "ratio", "binding_attack", "he_encrypt_s", "he_bytes"]
    ]


# --- comparisons across threat models and mask sources ---------------------------------------------------------------
def success(table: pd.DataFrame) -> pd.Series:
    """Attack success per row on one scale per modality: PSNR (capped at 100 dB) for images, ROUGE-1 for text."""
    image = table.arch.map(ARCH_MODALITY) == "image"
    return pd.Series(
        np.where(image, table.psnr.astype(float).clip(upper=100.0), table.rouge1.astype(float)), index=table.index
    )


def paired_gap(table: pd.DataFrame, column: str, better: str, worse: str, level: PrivacyLevel) -> pd.DataFrame:
    """Per (arch, attack, metric, ratio): mean success under `better` minus under `worse` (values of `column`),
    and whether `worse` calls the cell protected while `better` does not (protection overstated)."""
    ok = table[table.status == "ok"].assign(success=lambda t: success(t), protected=lambda t: protected(t, level))
    keys = ["arch", "attack", "metric", "ratio"]
    means = ok.groupby([*keys, column])[["success", "protected"]].mean().unstack(column)
    if better not in means.columns.get_level_values(1) or worse not in means.columns.get_level_values(1):
        return pd.DataFrame(columns=[*keys, "gap", "overstated"])
    out = pd.DataFrame(
        {
            "gap": means["success"][better] - means["success"][worse],
            "overstated": (means["protected"][worse] >= 0.5) & (means["protected"][better] < 0.5),
        }
    ).dropna(subset=["gap"])
    return out.reset_index()


def write_guidelines(records: list[dict], plan: pd.DataFrame, cfg: Guidelines, reports: Path) -> None:
    """reports/guidelines.{json,md}, the stage metrics (reports/metrics/guidelines.json) and a figure."""
    (reports / "metrics").mkdir(parents=True, exist_ok=True)
    (reports / "figures").mkdir(parents=True, exist_ok=True)
    (reports / "guidelines.json").write_text(json.dumps(records, indent=2) + "\n")
    levels = "; ".join(
        f"**{n}**: PSNR ≤ {lv.psnr_max:g} dB and SSIM ≤ {lv.ssim_max:g} (images), ROUGE-1 ≤ {lv.rouge1_max:g} and "
        f"token F1 ≤ {lv.token_f1_max:g} (text)"
        for n, lv in cfg.levels.items()
    )
    frame = pd.DataFrame(records, columns=list(RECORD_KEYS))
    lines = [
        "# Selective encryption guidelines",
        "",
        f"Privacy levels: {levels}. A ratio protects when at least {cfg.success_fraction:.0%} of its trials (and of "
        f"every larger ratio's) are protected, against the {cfg.threat_model} attacker with the "
        f"{cfg.mask_source} mask.",
        "",
        "## Recommended strategy per architecture and level",
        "",
        plan.to_markdown(index=False) if len(plan) else "No metric protects against every attack at any ratio tested.",
        "",
        "## Smallest protecting ratio per attack and metric (empty: no ratio tested protects)",
        "",
        frame.drop(columns="recommended").to_markdown(index=False),
        "",
    ]
    (reports / "guidelines.md").write_text("\n".join(lines))
    summary = {f"{r.arch}.{r.privacy_level}": {"metric": r.metric, "ratio": r.ratio} for r in plan.itertuples()}
    (reports / "metrics" / "guidelines.json").write_text(json.dumps(summary, indent=2) + "\n")
    frame_plan = plan if len(plan) else pd.DataFrame({"arch": ["none"], "privacy_level": ["none"], "ratio": [np.nan]})
    fig = heatmap(
        frame_plan.pivot_table(index="arch", columns="privacy_level", values="ratio", dropna=False),
        "encryption ratio",
        "recommended ratio (protects against every attack; blank: none does)",
    )
    fig.savefig(reports / "figures" / "guidelines.png", dpi=120, bbox_inches="tight")


def comparison_metrics(table: pd.DataFrame, level: PrivacyLevel) -> dict:
    """The attack-comparison stage's metrics: threat-model gap, shared-mask gap, decoy gap, leakage (per
    architecture)."""
    out: dict = {}
    tm = paired_gap(table, "threat_model", "mask_aware", "zero_fill", level)
    ms = paired_gap(table, "mask_source", "shared", "own", level)
    dc = paired_gap(table, "ties", "decoys", "index", level)
    ok = table[table.status == "ok"]
    for arch in sorted(table.arch.unique()):
        a, s, d = tm[tm.arch == arch], ms[ms.arch == arch], dc[dc.arch == arch]
        rows = ok[(ok.arch == arch) & (ok.ratio == 0)]
        out[arch] = {
            "zero_fill_gap": round(float(a.gap.mean()), 4) if len(a) else None,
            "zero_fill_overstated_cells": int(a.overstated.sum()) if len(a) else None,
            "shared_mask_gap": round(float(s.gap.mean()), 4) if len(s) else None,
            "decoy_gap": round(float(d.gap.mean()), 4) if len(d) else None,
            "label_acc_unprotected": round(float(rows.label_acc.mean()), 4) if len(rows) else None,
        }
    return out
