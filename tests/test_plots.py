"""The figures show the data they are given: the rows the guidelines read, the measured costs, the intervals."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch

from selenc import plots, results, stats
from tests.conftest import FEDSGD_B1
from tests.test_stats import rows


@pytest.fixture(autouse=True)
def close_figures():
    yield
    matplotlib.pyplot.close("all")


def test_success_vs_ratio_draws_the_guidelines_victim_only(params):
    untrained = rows("dlg", "magnitude", {0.0: 40.0, 0.5: 20.0})
    trained = pd.DataFrame(rows("dlg", "magnitude", {0.0: 90.0, 0.5: 80.0})).assign(victim="trained")
    table = pd.concat([pd.DataFrame(untrained), trained])
    fig = plots.success_vs_ratio(table, "lenet", params.guidelines)
    (line,) = [ln for ln in fig.axes[0].lines if len(ln.get_xdata())]
    assert line.get_xdata().tolist() == [0.0, 0.5] and line.get_ydata().tolist() == [40.0, 20.0]
    on_trained = plots.success_vs_ratio(table, "lenet", params.guidelines.model_copy(update={"victim": "trained"}))
    (line,) = [ln for ln in on_trained.axes[0].lines if len(ln.get_xdata())]
    assert line.get_ydata().tolist() == [90.0, 80.0]
    assert plots.victims_vs_ratio(pd.DataFrame(untrained), "lenet", params.guidelines) is None


def test_he_cost_plots_the_measured_seconds_and_megabytes():
    table = pd.DataFrame(
        {
            "ratio": [0.0, 0.5, 1.0],
            "he_encrypt_s": [0.0, 0.2, 0.4],
            "he_bytes": [1e6, 3e6, 5e6],
            "he_ciphertexts": [0, 1, 2],
        }
    )
    fig = plots.he_cost_vs_ratio(table, "lenet")
    assert fig.axes[0].lines[0].get_ydata().tolist() == [0.0, 0.2, 0.4]
    assert fig.axes[1].lines[0].get_ydata().tolist() == [1.0, 3.0, 5.0]


def test_protected_share_draws_each_metric_with_its_wilson_interval(params):
    base = {
        "arch": "lenet",
        "modality": "image",
        "attack": "strongest",
        "threat_model": "mask_aware",
        "mask_source": "own",
        "ties": "index",
        "victim": "untrained",
        **FEDSGD_B1,
        "slice": False,
    }
    summary = pd.DataFrame(
        [
            base | {"metric": "magnitude", "ratio": r, "protected_strict": p, "strict_low": lo, "strict_high": hi}
            for r, p, lo, hi in [(0.3, 0.4, 0.1, 0.8), (0.6, 1.0, 0.57, 1.0)]
        ]
    )
    fig = plots.protected_share(summary, "strict", "strongest", params.guidelines)
    container = fig.axes[0].containers[0]
    assert container.lines[0].get_ydata().tolist() == [0.4, 1.0]
    (segments,) = [c for c in container.lines[2]]
    spans = sorted((round(float(s[0][1]), 2), round(float(s[1][1]), 2)) for s in segments.get_segments())
    assert spans == [(0.1, 0.8), (0.57, 1.0)]


def test_heatmap_annotates_every_cell_with_its_value():
    frame = pd.DataFrame([[1.234, 2.0], [np.nan, 4.5]], index=["a", "b"], columns=["x", "y"])
    fig = plots.heatmap(frame, "value", "title")
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["1.23", "2.00", "4.50"]


def test_reconstruction_grid_shows_each_metric_and_ratio_of_one_trial(params):
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    table = pd.DataFrame(rows("dlg", "magnitude", {0.0: 40.0, 0.5: 20.0}) + rows("dlg", "random", {0.5: 15.0}))
    table["reconstruction"] = results.encode_images(images)
    fig = plots.reconstruction_grid(table, images.numpy(), "dlg", params.guidelines)
    assert len(fig.axes) == 2 * 3  # metrics x (original + ratios)
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
    assert labels == ["40.0 dB", "20.0 dB", "15.0 dB"]  # random at ρ = 0 was not run: an empty panel


def test_updates_vs_ratio_draws_one_line_per_update_on_the_cells_they_share(params):
    one = pd.DataFrame(rows("dlg", "magnitude", {0.0: 40.0, 0.3: 20.0, 0.6: 15.0}))
    four = pd.DataFrame(rows("dlg", "magnitude", {0.0: 18.0, 0.3: 12.0})).assign(batch_size=4)
    data = stats.update_rows(pd.concat([one, four], ignore_index=True), params.guidelines)
    fig = plots.updates_vs_ratio(data, "lenet")
    lines = {tuple(ln.get_ydata().tolist()) for ln in fig.axes[0].lines if len(ln.get_xdata())}
    assert lines == {(40.0, 20.0), (18.0, 12.0)}  # ρ = 0.6 ran under batch 1 only: not drawn
    assert plots.updates_vs_ratio(stats.update_rows(one, params.guidelines), "lenet") is None


def test_rounds_paired_joins_each_samples_one_round_to_its_rounds(params):
    one = pd.DataFrame(rows("dlg", "magnitude", {0.0: 40.0, 0.3: [10.0, 11.0, 12.0, 13.0, 14.0]}))
    federation = {"rounds": 4, "clients": 4, "server_lr": 1.0}
    fresh = pd.DataFrame(rows("dlg", "magnitude", {0.3: [30.0, 31.0, 32.0, 33.0, 34.0]})).assign(**federation)
    frozen = pd.DataFrame(rows("dlg", "magnitude", {0.3: 20.0})).assign(mask_policy="frozen", **federation)
    data = stats.rounds_rows(pd.concat([one, fresh, frozen], ignore_index=True), params.guidelines)
    fig = plots.rounds_paired(data, "lenet")
    (ax,) = fig.axes
    assert ax.get_title() == "magnitude, ρ=0.3 (5 samples, dlg)"
    lines = [tuple(ln.get_ydata().tolist()) for ln in ax.lines]
    assert (10.0, 30.0, 20.0) in lines and (14.0, 34.0, 20.0) in lines and (12.0, 32.0, 20.0) in lines  # the median
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["fedsgd B=1", "fedsgd B=1\nR=4 fresh", "fedsgd B=1\nR=4 frozen"]
    assert plots.rounds_paired(stats.rounds_rows(one, params.guidelines), "lenet") is None


def test_rounds_paired_puts_each_metric_on_its_own_row(params):
    federation = {"rounds": 4, "clients": 4, "server_lr": 1.0}
    parts = []
    for metric, ratios in (("magnitude", {0.3: 10.0, 0.6: 8.0}), ("random", {0.3: 20.0})):
        parts += [
            pd.DataFrame(rows("linear", metric, ratios)),
            pd.DataFrame(rows("linear", metric, ratios)).assign(**federation),
        ]
    fig = plots.rounds_paired(stats.rounds_rows(pd.concat(parts, ignore_index=True), params.guidelines), "lenet")
    shown = [ax.get_title().split(" (")[0] for ax in fig.axes if ax.get_visible()]
    assert shown == ["magnitude, ρ=0.3", "magnitude, ρ=0.6", "random, ρ=0.3"] and len(fig.axes) == 4
