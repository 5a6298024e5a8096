"""Figures and summary tables for the notebooks (seaborn on matplotlib).

Every function takes results tables (`selenc.sweep`) or guideline records and returns a matplotlib Figure or a
DataFrame; notebooks only call them and show the output.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from selenc.config import ARCH_MODALITY

SUCCESS = {"image": ("psnr", "PSNR (dB)"), "text": ("rouge1", "ROUGE-1")}


def success_column(arch: str) -> tuple[str, str]:
    """The attack-success column of an architecture's table and its axis label."""
    return SUCCESS[ARCH_MODALITY[arch]]


def finite(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Finished trials, with PSNR of exact copies (inf) capped at 100 dB so means and plots stay finite."""
    ok = table[table.status == "ok"].copy()
    ok[column] = ok[column].astype(float).clip(upper=100.0)
    return ok


def success_vs_ratio(table: pd.DataFrame, arch: str) -> plt.Figure:
    """Attack success vs encryption ratio, one line per metric with 95% bootstrap CIs, per attack × threat model."""
    col, label = success_column(arch)
    data = finite(table, col)
    grid = sns.relplot(
        data=data,
        x="ratio",
        y=col,
        hue="metric",
        col="attack",
        row="threat_model",
        kind="line",
        marker="o",
        errorbar=("ci", 95),
        n_boot=1000,
        seed=0,
        height=3.2,
        aspect=1.2,
        facet_kws={"sharey": True},
    )
    grid.set_axis_labels("encryption ratio ρ", label)
    grid.figure.suptitle(f"{arch}: attack success vs encryption ratio (lower = better protected)", y=1.02)
    return grid.figure


def he_cost_vs_ratio(table: pd.DataFrame, arch: str) -> plt.Figure:
    """Measured CKKS cost per client upload vs ratio: encryption seconds and MB on the wire."""
    cost = table.groupby("ratio")[["he_encrypt_s", "he_bytes", "he_ciphertexts"]].first().reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(cost.ratio, cost.he_encrypt_s, marker="o")
    axes[0].set(xlabel="encryption ratio ρ", ylabel="encrypt (s)", title="encryption time")
    axes[1].plot(cost.ratio, cost.he_bytes / 1e6, marker="o")
    axes[1].set(xlabel="encryption ratio ρ", ylabel="MB per upload", title="bytes on the wire")
    fig.suptitle(f"{arch}: HE cost (TenSEAL CKKS, measured)")
    fig.tight_layout()
    return fig


def reconstruction_grid(table: pd.DataFrame, originals: np.ndarray, attack: str, trial: int = 0) -> plt.Figure:
    """Original vs reconstructions across ratios (columns) and metrics (rows) for one attack and one trial."""
    from selenc.sweep import decode_images

    rows = table[
        (table.attack == attack)
        & (table.trial == trial)
        & (table.status == "ok")
        & (table.threat_model == table.threat_model.iloc[0])
        & (table.mask_source == "own")
    ]
    metrics, ratios = sorted(rows.metric.unique()), sorted(rows.ratio.unique())
    fig, axes = plt.subplots(
        len(metrics), len(ratios) + 1, figsize=(1.4 * (len(ratios) + 1), 1.5 * len(metrics)), squeeze=False
    )
    for i, metric in enumerate(metrics):
        axes[i, 0].imshow(_hwc(originals[0]))
        axes[i, 0].set_ylabel(metric, fontsize=8)
        for j, ratio in enumerate(ratios):
            cell = rows[(rows.metric == metric) & (rows.ratio == ratio)]
            ax = axes[i, j + 1]
            if len(cell):
                ax.imshow(_hwc(decode_images(cell.reconstruction.iloc[0])[0]))
                ax.set_xlabel(f"{cell.psnr.iloc[0]:.1f} dB", fontsize=7)
            if i == 0:
                ax.set_title(f"ρ={ratio:g}", fontsize=8)
    axes[0, 0].set_title("original", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{attack}: reconstructions of trial {trial} (PSNR under each)", fontsize=9)
    fig.tight_layout()
    return fig


def _hwc(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=float).transpose(1, 2, 0)
    return img[..., 0] if img.shape[-1] == 1 else img


def sentence_table(table: pd.DataFrame, truth: list[str], attack: str, trial: int = 0) -> pd.DataFrame:
    """Original vs reconstructed sentences across ratios and metrics, for one attack and trial."""
    rows = table[
        (table.attack == attack) & (table.trial == trial) & (table.status == "ok") & (table.mask_source == "own")
    ]
    rows = rows[rows.threat_model == rows.threat_model.iloc[0]] if len(rows) else rows
    out = rows[["metric", "ratio", "rouge1", "reconstruction"]].sort_values(["metric", "ratio"])
    return pd.concat(
        [pd.DataFrame([{"metric": "original", "ratio": None, "rouge1": 1.0, "reconstruction": truth[trial]}]), out],
        ignore_index=True,
    )


def heatmap(frame: pd.DataFrame, value: str, title: str, fmt: str = ".2f", cmap: str = "rocket_r") -> plt.Figure:
    """A heatmap of a (rows × columns) table, annotated."""
    fig, ax = plt.subplots(figsize=(1.1 * frame.shape[1] + 2, 0.5 * frame.shape[0] + 1.5))
    sns.heatmap(frame.astype(float), annot=True, fmt=fmt, cmap=cmap, ax=ax, cbar_kws={"label": value})
    ax.set_title(title)
    fig.tight_layout()
    return fig
