"""Figures and summary tables for the notebooks (seaborn on matplotlib).

Every function takes results tables (`selenc.results`) or guideline records and returns a matplotlib Figure or a
DataFrame; notebooks only call them and show the output.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from selenc.grid import update_label
from selenc.results import UPDATE, both_victims, decode_images, finite, main_trials, matches, success_column
from selenc.settings import Guidelines


def success_vs_ratio(table: pd.DataFrame, arch: str, cfg: Guidelines) -> plt.Figure:
    """Attack success vs encryption ratio, one line per metric with 95% bootstrap CIs, per attack × threat model (the
    mask source, ties and victim the guidelines read: the others have their own comparisons)."""
    col, label = success_column(table)
    data = finite(table, col)
    data = data[(data.mask_source == cfg.mask_source) & (data.ties == cfg.ties) & (data.victim == cfg.victim)]
    title = f"{arch}: attack success vs encryption ratio (lower = better protected)"
    return _success_lines(data, col, label, title, hue="metric", col="attack", row="threat_model")


def victims_vs_ratio(table: pd.DataFrame, arch: str, cfg: Guidelines) -> plt.Figure | None:
    """Attack success vs ratio on the untrained (solid) and the trained (dashed) victim, over the attacks, metrics
    and ratios run on both (the attacker, mask source and ties the guidelines read); None when no trial ran on a
    trained victim."""
    col, label = success_column(table)
    data = both_victims(table, cfg)
    if not len(data):
        return None
    title = f"{arch}: untrained vs trained victim, same samples (lower = better protected)"
    return _success_lines(
        data, col, label, title, hue="metric", style="victim", style_order=["untrained", "trained"], col="attack"
    )


def _success_lines(data: pd.DataFrame, y: str, label: str, title: str, **facets) -> plt.Figure:
    """Success vs ratio as lines with 95% bootstrap CIs (seeded), faceted and styled as `facets` say."""
    grid = sns.relplot(
        data=data,
        x="ratio",
        y=y,
        kind="line",
        marker="o",
        errorbar=("ci", 95),
        n_boot=1000,
        seed=0,
        height=3.2,
        aspect=1.2,
        facet_kws={"sharey": True},
        **facets,
    )
    grid.set_axis_labels("encryption ratio ρ", label)
    grid.figure.suptitle(title, y=1.02)
    return grid.figure


def updates_vs_ratio(rows: pd.DataFrame, arch: str) -> plt.Figure | None:
    """The strongest attacker's success vs ratio, one line per client update with 95% bootstrap CIs, per metric, over
    the (metric, ratio) cells run under more than one update (`rows`: `stats.update_rows`); None when `arch` ran one
    update."""
    data = rows[rows.arch == arch]
    data = data[data.groupby(["metric", "ratio"])["update"].transform("nunique") > 1]
    if data.empty:
        return None
    _, label = success_column(data)
    title = f"{arch}: the strongest attacker per client update, same clients (lower = better protected)"
    return _success_lines(data, "success", label, title, hue="update", col="metric")


def rounds_paired(rows: pd.DataFrame, arch: str) -> plt.Figure | None:
    """The strongest attacker's success per sample with one round and with several under each mask policy, a panel
    per masked cell run over several rounds (a row per metric), each sample's line joining its updates (`rows`:
    `stats.rounds_rows`, one adversary per cell); None when `arch` ran no cell over several rounds."""
    data = rows[rows.arch == arch]
    cells = sorted({(m, r) for m, r in data.loc[data.rounds > 1, ["metric", "ratio"]].itertuples(index=False)})
    if not cells:
        return None
    _, label = success_column(data)
    metrics = sorted({m for m, _ in cells})
    width = max(sum(m == metric for m, _ in cells) for metric in metrics)
    fig, axes = plt.subplots(len(metrics), width, figsize=(4.2 * width, 3.4 * len(metrics)), squeeze=False)
    slots = {cell: axes[metrics.index(cell[0])][[c for c in cells if c[0] == cell[0]].index(cell)] for cell in cells}
    for ax in axes.flat:
        ax.set_visible(ax in slots.values())
    for (metric, ratio), ax in slots.items():
        cell = data[(data.metric == metric) & (data.ratio == ratio)]
        order = sorted(cell["update"].unique(), key=lambda u: (" R=" in u, u))  # one round first
        wide = cell.pivot_table(index=["init", "trial"], columns="update", values="success")[order]
        x = np.arange(len(order))
        for _, sample in wide.iterrows():
            ax.plot(x, sample.to_numpy(), color="0.6", marker="o", lw=1)
        ax.plot(x, wide.median().to_numpy(), color="C3", marker="D", lw=2, label="median")
        ax.set_xticks(x, [u.replace(" R=", "\nR=") for u in order], fontsize=8)
        attacks = cell.attacks.iloc[0]
        ax.set(title=f"{metric}, ρ={ratio:g} ({len(wide)} samples, {attacks})", ylabel=label)
        ax.legend(fontsize=8)
    fig.suptitle(f"{arch}: the strongest attacker over rounds, same clients (lower = better protected)")
    fig.tight_layout()
    return fig


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


def reconstruction_grid(
    table: pd.DataFrame, originals: np.ndarray, attack: str, cfg: Guidelines, trial: int = 0
) -> plt.Figure:
    """Original vs reconstructions across ratios (columns) and metrics (rows) for one attack and one trial, of the
    attacker and victim the guidelines read."""
    rows = main_trials(table, cfg)
    rows = rows[(rows.attack == attack) & (rows.trial == trial) & (rows.status == "ok")]
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


def sentence_table(table: pd.DataFrame, truth: list[str], attack: str, cfg: Guidelines, trial: int = 0) -> pd.DataFrame:
    """Original vs reconstructed sentences across ratios and metrics, for one attack and trial, of the attacker and
    victim the guidelines read."""
    rows = main_trials(table, cfg)
    rows = rows[(rows.attack == attack) & (rows.trial == trial) & (rows.status == "ok")]
    out = rows[["metric", "ratio", "rouge1", "reconstruction"]].sort_values(["metric", "ratio"])
    return pd.concat(
        [pd.DataFrame([{"metric": "original", "ratio": None, "rouge1": 1.0, "reconstruction": truth[trial]}]), out],
        ignore_index=True,
    )


def heatmap(frame: pd.DataFrame, value: str, title: str, fmt: str = ".2f", cmap: str = "rocket_r") -> plt.Figure:
    """A heatmap of a (rows × columns) table, annotated."""
    fig, ax = plt.subplots(figsize=(1.1 * frame.shape[1] + 3, 0.5 * frame.shape[0] + 1.5))
    sns.heatmap(frame.astype(float), annot=True, fmt=fmt, cmap=cmap, ax=ax, cbar_kws={"label": value})
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_title(title)
    fig.tight_layout()
    return fig


# --- the theory check (theory.md T1-T5) -----------------------------------------------------------------------------
def identity_errors(identity: pd.DataFrame) -> plt.Figure:
    """T1: relative error of D = D_V + D_S per candidate, by case (log scale; float64 round-off is ~1e-16)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    data = identity.assign(rel_err=identity.rel_err.clip(lower=1e-18))
    sns.stripplot(data=data, x="case", y="rel_err", hue="metric", ax=ax, size=3, jitter=0.3, log_scale=True)
    ax.axhline(1e-5, color="red", ls="--", lw=1, label="tolerance 1e-5")
    ax.set(ylabel="|D − (D_V + D_S)| / D", title="T1: the Euclidean identity on random candidates (float64)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def bound_vs_error(trials: pd.DataFrame, tolerance: float) -> plt.Figure:
    """T2: every attack output's (B1) lower bound against its actual error ‖x̂ − x‖ (log-log); violations in red."""
    rows = trials[(trials.status == "ok") & (trials.k > 0) & trials.b1_error.notna()]
    violated = rows.b1_bound > rows.b1_error * (1 + tolerance) + 1e-12
    fig, axes = plt.subplots(
        1, rows.case.nunique() or 1, figsize=(4.5 * max(rows.case.nunique(), 1), 3.6), squeeze=False
    )
    for ax, (case, group) in zip(axes[0], rows.groupby("case"), strict=False):
        bad = violated.loc[group.index]
        values = group[["b1_error", "b1_bound"]].to_numpy()
        floor = float(values[values > 0].min()) / 10 if (values > 0).any() else 1e-12  # a zero bound sits here
        x, y = group.b1_error.clip(lower=floor), group.b1_bound.clip(lower=floor)
        sc = ax.scatter(x, y, c=group.ratio, cmap="viridis", s=18)
        ax.scatter(x[bad], y[bad], facecolors="none", edgecolors="red", s=60, label="violation")
        top = float(max(x.max(), y.max()))
        ax.plot([floor, top], [floor, top], "k--", lw=1, label="bound = error")
        ax.set(xscale="log", yscale="log", xlabel="actual error ‖x̂ − x‖", ylabel="(B1) bound (0 drawn at the floor)")
        ax.set_title(f"{case}: {int(bad.sum())} violations")
        fig.colorbar(sc, ax=ax, label="ρ")
        ax.legend(fontsize=7)
    fig.suptitle("T2: the reconstruction-error bound holds below the diagonal")
    fig.tight_layout()
    return fig


def field_scatter(fields: pd.DataFrame) -> plt.Figure:
    """T3: far-field s vs |g|² and near-field s vs ‖J_i‖² on a random subset of coordinates (log-log)."""
    cases = list(fields.case.unique())
    fig, axes = plt.subplots(len(cases), 2, figsize=(8, 3.4 * len(cases)), squeeze=False)
    for i, case in enumerate(cases):
        f = fields[fields.case == case]
        for ax, (x, y, xl, title) in zip(
            axes[i],
            [("g2", "s_far", "|g_i|²", "far field"), ("j2", "s_near", "‖J_i‖²", "near field")],
            strict=True,
        ):
            keep = (f[x] > 0) & (f[y] > 0)
            ax.scatter(f[x][keep], f[y][keep], s=3, alpha=0.4)
            ax.set(xscale="log", yscale="log", xlabel=xl, ylabel=f"s_i ({title})", title=f"{case}: {title}")
    fig.tight_layout()
    return fig


def phi_vs_success(cells: dict[str, pd.DataFrame], label: str = "attack success") -> plt.Figure:
    """T4: per (metric, ratio) cell, the protected distance share φ(S) against the attack's mean success."""
    fig, axes = plt.subplots(1, len(cells), figsize=(4 * len(cells), 3.4), squeeze=False)
    for ax, (name, frame) in zip(axes[0], cells.items(), strict=True):
        sns.scatterplot(data=frame, x="phi", y="success", hue="metric", style="attack", ax=ax, s=40)
        ax.set(xlabel="φ(S)", ylabel=label if len(cells) == 1 else "mean success", title=name)
        ax.legend(fontsize=6)
    fig.suptitle("T4: does the protected distance share predict protection? (expected: falling)")
    fig.tight_layout()
    return fig


def null_dim_vs_ratio(ranks: pd.DataFrame) -> plt.Figure:
    """T5: the near-null dimension of J_V and its effective rank vs encryption ratio, one line per metric."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    sns.lineplot(data=ranks, x="ratio", y="near_null_dim", hue="metric", marker="o", ax=axes[0])
    axes[0].set(xlabel="encryption ratio ρ", ylabel="near-null dimension of J_V", title="T5: directions J_V cannot see")
    sns.lineplot(data=ranks, x="ratio", y="effective_rank", hue="metric", marker="o", ax=axes[1], legend=False)
    axes[1].set(xlabel="encryption ratio ρ", ylabel="effective rank of J_V", title="entropy effective rank")
    fig.tight_layout()
    return fig


# --- cell statistics and guidelines (stats.summary rows) ------------------------------------------------------------
def protected_share(summary: pd.DataFrame, level: str, attack: str, cfg: Guidelines) -> plt.Figure:
    """Per architecture: the protected share of `attack`'s trials at `level` vs ratio, one line per metric, with its
    Wilson interval as error bars (the attacker and victim the guidelines read; each cell's own adversary)."""
    rows = main_trials(summary[(summary.attack == attack) & ~summary.slice.astype(bool)], cfg)
    archs = sorted(rows.arch.unique())
    fig, axes = plt.subplots(1, max(len(archs), 1), figsize=(4.2 * max(len(archs), 1), 3.4), squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=False):
        for metric, line in rows[rows.arch == arch].sort_values("ratio").groupby("metric"):
            share = line[f"protected_{level}"]
            err = np.vstack([share - line[f"{level}_low"], line[f"{level}_high"] - share]).clip(min=0)
            ax.errorbar(line.ratio, share, yerr=err, marker="o", ms=3, capsize=2, lw=1, label=metric)
        ax.set(xlabel="encryption ratio ρ", ylabel=f"protected share ({level})", title=arch, ylim=(-0.05, 1.05))
        ax.legend(fontsize=6)
    fig.suptitle(f"{attack}: protected share with its 95% Wilson interval")
    fig.tight_layout()
    return fig


LEVEL_MARKERS = ("*", "D", "s", "^", "v", "P")  # ρ* of the first, second, ... privacy level


def privacy_cost(probes: pd.DataFrame, found: pd.DataFrame, arch: str, levels: list[str]) -> plt.Figure:
    """The privacy–cost frontier (`frontier`): HE MB per upload (log) against the strongest attacker's median success
    with its 95% bootstrap interval at every probed ratio, one line per metric, one panel per (victim, ties, client
    update); each metric's ρ* marked per privacy level."""
    _, label = success_column(probes)
    keys = ["victim", "ties", *UPDATE]
    panels = sorted(probes.groupby(keys).groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False, sharey=True)
    metrics = sorted(probes.metric.unique())
    colours = dict(zip(metrics, sns.color_palette("tab10", len(metrics)), strict=True))
    for ax, panel in zip(axes[0], panels, strict=True):
        here = probes[matches(probes, keys, panel)].sort_values("ratio")
        for metric, rows in here.groupby("metric"):
            err = [rows.success_median - rows.success_low, rows.success_high - rows.success_median]
            ax.errorbar(rows.he_mb, rows.success_median, yerr=err, color=colours[metric], marker=".", lw=1, capsize=2,
                        label=metric)  # fmt: skip
            stars = found[(found.metric == metric) & matches(found, keys, panel)]
            for level, marker in zip(levels, LEVEL_MARKERS, strict=False):
                at = stars[(stars.privacy_level == level) & stars.ratio_star.notna()]
                if len(at):
                    ax.scatter(at.he_mb, at.success_median, marker=marker, s=110, color=colours[metric],
                               edgecolor="black", zorder=3)  # fmt: skip
        title = f"victim {panel[0]}, ties {panel[1]}, {update_label(*panel[2:])}"
        ax.set(xscale="log", xlabel="HE MB per upload (log)", title=title)
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))  # labels 1, 2, 5 per decade
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"strongest attacker's median {label}")
    handles = [plt.Line2D([], [], ls="", marker=m, color="grey", markeredgecolor="black", markersize=10) for m in
               LEVEL_MARKERS[: len(levels)]]  # fmt: skip
    first = axes[0][0].legend(handles, [f"ρ* {lv}" for lv in levels], loc="upper right", fontsize=8)
    axes[0][0].add_artist(first)
    axes[0][-1].legend(fontsize=8, loc="lower left", title="metric")
    fig.suptitle(f"{arch}: privacy–cost frontier (lower and further left = better; bars: 95% bootstrap over samples)")
    fig.tight_layout()
    return fig
