"""The results row: columns derived from the grid point, Outcome and Cost; what finished means; the rows the
guidelines read; the stage metrics and plot data; reconstructions kept in the table."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from selenc import results
from selenc.grid import Trial
from selenc.results import COLUMNS, Cost, Outcome, RunCost
from selenc.settings import ModelEntry
from tests.test_grid import trial as grid_point

TRIAL = grid_point()
OK = Outcome(status="ok", seed=1, phi=0.2, k=3, n=10, attack_s=1.0, trial_s=2.0, psnr=20.0, ssim=0.4)
LENET = ModelEntry.model_validate(
    {"builder": "selenc.zoo:lenet", "source": "selenc/zoo.py", "modality": "image", "dataset": "cifar10",
     "pretrain": {"epochs": 0, "samples": 1, "batch_size": 1, "lr": 0.1}}
)  # fmt: skip
COST = Cost(he_ciphertexts=1, he_bytes=100, he_bytes_sd=0.5, he_encrypt_s=0.01)


def test_columns_are_derived_from_the_four_definitions_and_a_row_has_exactly_them():
    grid = [f.name for f in dataclasses.fields(Trial)]
    measured = [*Outcome.model_fields, *Cost.model_fields, *RunCost.model_fields]
    assert list(COLUMNS) == [grid[0], "dataset", "modality", "model_mode", *grid[1:], *measured]
    row = results.row(TRIAL, LENET, OK, COST)
    assert set(row) == set(COLUMNS)
    table = results.table([row])
    assert list(table.columns) == list(COLUMNS) and table.loc[0, "psnr"] == 20.0 and table.loc[0, "he_bytes"] == 100
    assert table.loc[0, "he_bytes_run"] == 100  # one round: the run is the upload


def test_an_outcome_says_what_finished_means():
    with pytest.raises(ValidationError, match="must record seed, phi"):
        Outcome(status="ok", k=1, n=2, attack_s=0.1, trial_s=0.1)
    with pytest.raises(ValidationError, match="must say why"):
        Outcome(status="timeout")
    with pytest.raises(ValidationError, match="extra"):
        Outcome(status="error", error="boom", psnr_db=3.0)  # a misnamed score is refused, never dropped
    assert Outcome(status="error", error="boom").psnr is None


def rows() -> pd.DataFrame:
    """LeNet DLG rows: one per (threat model, victim) with psnr 10 × its position, plus an unfinished one."""
    out = []
    for i, (threat, victim) in enumerate(
        [("mask_aware", "untrained"), ("zero_fill", "untrained"), ("mask_aware", "trained")]
    ):
        trial = dataclasses.replace(TRIAL, threat_model=threat, victim=victim)
        out.append(results.row(trial, LENET, OK.model_copy(update={"psnr": 10.0 * (i + 1)}), COST))
    out.append(results.row(TRIAL, LENET, Outcome(status="error", error="boom"), COST))
    out.append(
        results.row(dataclasses.replace(TRIAL, ratio=0.0), LENET, OK.model_copy(update={"psnr": math.inf}), COST)
    )
    return results.table(out)


def test_main_trials_stage_metrics_and_plot_data_read_the_guidelines_choice(params):
    table = rows()
    default = params.guidelines
    assert set(results.main_trials(table, default).psnr.dropna()) == {10.0, math.inf}
    zero_fill = default.model_copy(update={"threat_model": "zero_fill"})
    assert results.main_trials(table, zero_fill).psnr.tolist() == [20.0]
    trained = default.model_copy(update={"victim": "trained"})
    metrics = results.stage_metrics(table, trained)
    assert metrics == {"trials": 5, "not_ok": 1, "psnr": {"dlg": {"magnitude": {"r0.3": 30.0}}}}
    plot = results.plot_data(table, default)
    assert plot.to_dict("list") == {
        "attack": ["dlg", "dlg"],
        "metric": ["magnitude", "magnitude"],
        "ratio": [0.0, 0.3],
        "psnr": [results.PSNR_CAP, 10.0],
    }  # unfinished left out
    assert results.success_column("text") == ("rouge1", "ROUGE-1") == results.success_column({"modality": "text"})
    assert results.success_column(table) == ("psnr", "PSNR (dB)")
    with pytest.raises(ValueError, match="one modality"):
        results.success_column(pd.concat([table, table.assign(modality="text")]))


def test_reconstructions_round_trip_through_the_table_at_8_bits():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    text = results.encode_images(images)
    back = results.decode_images(text)
    assert text.startswith("2x3x32x32:") and back.shape == (2, 3, 32, 32)
    assert np.abs(back - images.numpy()).max() <= 0.5 / 255 + 1e-7
    assert results.decode_images(results.encode_images(torch.full((1, 1, 2, 2), 7.0))).max() == 1.0  # clamped
