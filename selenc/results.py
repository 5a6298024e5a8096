"""The results table: its columns, the row constructor, and what the stages read off it.

A row = the trial's grid point (`grid.Trial`) + its dataset + what the trial measured (`Outcome`, the part that is
cached) + the HE cost of its ratio (`Cost`). The column set is derived from those three definitions. `Outcome` is
also the schema every cache entry is checked against before it is trusted.

Also here: the success column per modality, the main cell filter (the attacker and victim the guidelines read),
the sweep stage's metrics and plot data, and the compact encoding of reconstructed images kept in the table.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, model_validator

from selenc.grid import UPDATE, Trial, update_fields
from selenc.settings import Guidelines, ModelEntry, Update

STATUSES = ("ok", "error", "timeout")


class Outcome(BaseModel):
    """What one trial measured (None: not applicable to its modality, or not reached)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal[STATUSES]
    error: str = ""
    device: str | None = None  # where the trial ran (cpu, cuda)
    seed: int | None = None
    # images
    psnr: float | None = None
    ssim: float | None = None
    mse: float | None = None
    label_acc: float | None = None
    recovered: float | None = None  # share of the batch's images at metrics.RECOVERED_DB or more
    # text
    rouge1: float | None = None
    rouge2: float | None = None
    rougeL: float | None = None
    token_f1: float | None = None
    exact_match: float | None = None
    # theory.md: protected distance share and (B1) at the attack's output
    phi: float | None = None
    b1_mismatch: float | None = None
    b1_lipschitz: float | None = None
    b1_bound: float | None = None
    b1_error: float | None = None
    b1_tightness: float | None = None
    b1_violated: bool | None = None
    k: int | None = None  # encrypted coordinates (over rounds: the first round's)
    n: int | None = None  # all coordinates (of one message)
    hidden_all: int | None = None  # coordinates hidden in every round: what no message shows (one round: k)
    hidden_total: int | None = None  # encrypted coordinates summed over the rounds (one round: k)
    hidden_rounds: str | None = None  # each round's encrypted coordinates, space-separated (`cost.run_cost`)
    support: int | None = None  # non-zero coordinates of the update (a mask with k >= support can hide them all)
    attack_s: float | None = None
    trial_s: float | None = None
    reconstruction: str | None = None

    @model_validator(mode="after")
    def _finished_means_measured(self) -> Outcome:
        if self.status == "ok":
            missing = [f for f in ("seed", "phi", "k", "n", "attack_s", "trial_s") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a finished trial must record {', '.join(missing)}")
        elif not self.error:
            raise ValueError(f"a trial with status {self.status!r} must say why in `error`")
        return self


class Cost(BaseModel):
    """Measured CKKS cost of one client upload at the row's ratio (it depends on k only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    he_ciphertexts: int
    he_bytes: int  # on the wire: serialized ciphertexts, visible values as float32, the mask
    he_bytes_sd: float  # how much he_bytes varies between encryptions of the same update (`cost`)
    he_encrypt_s: float


class RunCost(BaseModel):
    """Measured CKKS cost of the row's whole federated run: every round's upload summed (`cost.run_cost`; one round:
    the upload's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    he_ciphertexts_run: int
    he_bytes_run: int
    he_encrypt_s_run: float


_GRID = tuple(f.name for f in dataclasses.fields(Trial))
# what the row says about its model beside its name: the data, the modality, the client's forward mode (train: BatchNorm
# on batch statistics)
MODEL = ("dataset", "modality", "model_mode")
COLUMNS: tuple[str, ...] = (
    _GRID[0],
    *MODEL,
    *_GRID[1:],
    *Outcome.model_fields,
    *Cost.model_fields,
    *RunCost.model_fields,
)


def row(trial: Trial, model: ModelEntry, outcome: Outcome, cost: Cost, run: RunCost | None = None) -> dict:
    """One results row: the grid point, its model's `MODEL` facts, what the trial measured, the HE cost of its ratio
    and of its federated run (None: one round, the ratio's cost)."""
    if run is None:
        run = RunCost(
            he_ciphertexts_run=cost.he_ciphertexts, he_bytes_run=cost.he_bytes, he_encrypt_s_run=cost.he_encrypt_s
        )
    measured = outcome.model_dump() | cost.model_dump() | run.model_dump()
    facts = dict(zip(MODEL, (model.dataset, model.modality, model.mode), strict=True))
    return dataclasses.asdict(trial) | facts | measured


def table(rows: list[dict]) -> pd.DataFrame:
    """The results table: `rows` (from `row`) in COLUMNS order."""
    return pd.DataFrame(rows, columns=list(COLUMNS))


def sweep_table(reports, name: str):
    """Where model `name`'s sweep table lives: reports/results/sweep/<name>.csv (one folder, so that later stages
    depend on the folder, whatever models params.yaml configures)."""
    return reports / "results" / "sweep" / f"{name}.csv"


def frontier_tables(reports, name: str) -> tuple:
    """Where model `name`'s frontier (ρ* per search) and its probes live: reports/results/frontier/<name>.csv and
    <name>_probes.csv."""
    folder = reports / "results" / "frontier"
    return folder / f"{name}.csv", folder / f"{name}_probes.csv"


# --- reading the table ---------------------------------------------------------------------------------------------
SUCCESS = {"image": ("psnr", "PSNR (dB)"), "text": ("rouge1", "ROUGE-1")}
PSNR_CAP = 100.0  # dB for exact copies (PSNR inf), so that means, medians and plots stay finite


def success_column(of: str | pd.DataFrame | dict) -> tuple[str, str]:
    """The attack-success column and its axis label of a modality ("image", "text"), or of what names one: a results
    or summary table (its `modality` column) or a model's entry of attacks.json (its "modality")."""
    if isinstance(of, pd.DataFrame):
        modalities = of["modality"].unique()
        if len(modalities) != 1:
            raise ValueError(f"a table of one modality has a success column; this one holds {list(modalities)}")
        of = modalities[0]
    elif isinstance(of, dict):
        of = of["modality"]
    return SUCCESS[of]


def finite(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Finished trials, with PSNR of exact copies (inf) capped at 100 dB so means and plots stay finite."""
    ok = table[table.status == "ok"].copy()
    ok[column] = ok[column].astype(float).clip(upper=PSNR_CAP)
    return ok


def matches(table: pd.DataFrame, columns: list[str], values: tuple) -> pd.Series:
    """Per row: do `columns` hold `values`?"""
    out = pd.Series(True, index=table.index)
    for column, value in zip(columns, values, strict=True):
        out &= table[column] == value
    return out


def on_update(table: pd.DataFrame, update: Update) -> pd.Series:
    """Per row: is it a trial of this client update (its `UPDATE` columns)?"""
    return matches(table, list(UPDATE), update_fields(update))


def _read(table: pd.DataFrame, cfg: Guidelines) -> pd.Series:
    """Rows of the attacker, mask source, ties and client update the guidelines read, on either victim."""
    main = (table.threat_model == cfg.threat_model) & (table.mask_source == cfg.mask_source) & (table.ties == cfg.ties)
    return main & on_update(table, cfg.reads)


def main_trials(table: pd.DataFrame, cfg: Guidelines) -> pd.DataFrame:
    """The rows of the attacker, victim and client update the guidelines read (`guidelines.threat_model`,
    `mask_source`, `ties`, `victim`, `update`: by default the mask-aware attacker of the untrained victim's own mask
    with index ties, on the `update` section's update). Figures, stage metrics and comparisons read the same rows; the
    other grid axes are compared against these on the same samples."""
    return table[_read(table, cfg) & (table.victim == cfg.victim)]


def both_victims(table: pd.DataFrame, cfg: Guidelines) -> pd.DataFrame:
    """Finished rows of the attacker, mask source and ties the guidelines read, on both victims, over the attacks,
    metrics and ratios run on the trained one (empty when none ran on it)."""
    col, _ = success_column(table)
    ok = finite(table, col)
    ok = ok[_read(ok, cfg)]
    trained = ok[ok.victim == "trained"]
    ran = ok.attack.isin(trained.attack.unique()) & ok.metric.isin(trained.metric.unique())
    return ok[ran & ok.ratio.isin(trained.ratio.unique())]


def plot_data(table: pd.DataFrame, cfg: Guidelines) -> pd.DataFrame:
    """Mean attack success per (attack, metric, ratio) of `main_trials`: the data of `dvc plots`."""
    col, _ = success_column(table)
    return (
        main_trials(finite(table, col), cfg).groupby(["attack", "metric", "ratio"], as_index=False)[col].mean().round(4)
    )


def stage_metrics(table: pd.DataFrame, cfg: Guidelines) -> dict:
    """The sweep stage's metrics JSON: trial counts and mean attack success per attack, metric and ratio of
    `main_trials`, so `dvc metrics diff` / `dvc exp show` compare experiments cell by cell."""
    col, _ = success_column(table)
    out: dict = {"trials": len(table), "not_ok": int((table.status != "ok").sum()), col: {}}
    for r in plot_data(table, cfg).itertuples():
        out[col].setdefault(r.attack, {}).setdefault(r.metric, {})[f"r{r.ratio:g}"] = round(float(getattr(r, col)), 4)
    return out


# --- reconstructions in the table ------------------------------------------------------------------------------------
def encode_images(images: torch.Tensor) -> str:
    """Reconstructed images as base64 uint8 (B, C, H, W), small enough to live in the results table."""
    arr = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return f"{'x'.join(map(str, arr.shape))}:" + base64.b64encode(arr.tobytes()).decode()


def decode_images(text: str) -> np.ndarray:
    """Inverse of `encode_images`: float (B, C, H, W) in [0, 1]."""
    shape, blob = text.split(":", 1)
    return np.frombuffer(base64.b64decode(blob), dtype=np.uint8).reshape(tuple(map(int, shape.split("x")))) / 255.0
