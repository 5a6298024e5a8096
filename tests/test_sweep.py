"""The sweep engine: grid, cache, resume, determinism, failure capture (tiny real grids on LeNet)."""

import json
import multiprocessing
import time

import pandas as pd
import pytest

from selenc.sweep import COLUMNS, expand, run_sweep, trial_key
from tests.conftest import with_changes

TINY = {
    "sweep.workers": 2,
    "sweep.lenet": {
        "metrics": ["random", "magnitude"],
        "ratios": [0.0, 0.5],
        "attacks": ["dlg"],
        "threat_models": ["mask_aware"],
        "mask_sources": ["own"],
        "trials": 2,
    },
    "attacks.dlg.steps": 2,
    "significance.samples": 1,
}
VARYING = ["attack_s", "trial_s", "he_encrypt_s", "he_bytes"]  # measurements: wall clock, compressed sizes


@pytest.fixture
def tiny(raw):
    return with_changes(raw, **TINY)


def test_grid_expansion_and_shared_ratio_endpoints(tiny):
    trials = expand(tiny, "lenet")
    assert len(trials) == 2 * 2 * 2  # metrics x ratios x trials
    keys = {trial_key(t, tiny) for t in trials}
    assert len(keys) == 6  # at ρ = 0 the mask is empty whatever the metric: those trials are run once


def test_sweep_table_cache_and_determinism(tiny, tmp_path):
    table = run_sweep(tiny, "lenet", cache_dir=tmp_path / "a", progress=False)
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 8 and (table.status == "ok").all(), table.error.tolist()
    assert table.psnr.notna().all() and table.phi.between(0, 1).all()
    half = table[table.ratio == 0.5]
    assert (half.k == -(-half.n // 2)).all() and (table[table.ratio == 0].phi == 0).all()
    assert (table[table.ratio == 0].he_ciphertexts == 0).all()
    assert (half.b1_mismatch > 0).all() and (half.b1_lipschitz > 0).all()  # (B1) recorded for every trial
    assert (half.b1_bound <= half.b1_error).all() and not half.b1_violated.astype(bool).any()
    assert (table[table.ratio == 0].b1_bound == 0).all()
    assert (half.he_ciphertexts == -(-half.k // 4096)).all() and (half.he_bytes > 4 * half.n).all()
    files = sorted((tmp_path / "a" / "lenet").glob("*.json"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = run_sweep(tiny, "lenet", cache_dir=tmp_path / "a", progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # nothing recomputed
    pd.testing.assert_frame_equal(again, table)
    fresh = run_sweep(tiny, "lenet", cache_dir=tmp_path / "b", progress=False)  # same params, from scratch
    pd.testing.assert_frame_equal(fresh.drop(columns=VARYING), table.drop(columns=VARYING))


def _run(params, cache):
    run_sweep(params, "lenet", cache_dir=cache, progress=False)


def test_killed_sweep_resumes_without_recomputing(raw, tmp_path):
    params = with_changes(raw, **(TINY | {"sweep.workers": 1, "attacks.dlg.steps": 30}))
    cache = tmp_path / "c"
    proc = multiprocessing.get_context("fork").Process(target=_run, args=(params, cache))
    proc.start()
    folder = cache / "lenet"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(folder.glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.kill()
    proc.join()
    done = {f.name: f.stat().st_mtime_ns for f in folder.glob("*.json")}
    assert 2 <= len(done) < 6, "the sweep should have been killed mid-way"
    resumed = run_sweep(params, "lenet", cache_dir=cache, progress=False)
    assert {f.name: f.stat().st_mtime_ns for f in folder.glob("*.json") if f.name in done} == done
    whole = run_sweep(params, "lenet", cache_dir=tmp_path / "d", progress=False)
    pd.testing.assert_frame_equal(resumed.drop(columns=VARYING), whole.drop(columns=VARYING))


def test_timeouts_and_errors_become_rows(raw, tmp_path):
    slow = with_changes(raw, **(TINY | {"sweep.time_limit_s": 0.5, "attacks.dlg.steps": 100_000}))
    table = run_sweep(slow, "lenet", cache_dir=tmp_path / "t", progress=False)
    assert (table.status == "timeout").all() and table.error.str.contains("time limit").all()

    from selenc.models import build_victim
    from selenc.sweep import he_cost

    params = with_changes(raw, **TINY)
    (tmp_path / "e" / "lenet").mkdir(parents=True)
    for ratio in (0.0, 0.5):  # HE costs are measured by the parent with the right model
        he_cost(params, "lenet", ratio, lambda: build_victim("lenet", params), tmp_path / "e" / "lenet")
    wrong = build_victim("lenet", with_changes(raw, **(TINY | {"models.lenet.dataset": "mnist"})))  # 1 channel
    broken = run_sweep(params, "lenet", cache_dir=tmp_path / "e", victim=wrong, progress=False)
    assert (broken.status == "error").all()
    assert broken.error.str.contains("cannot turn 3-channel images into 1 channels").all()
    assert broken.psnr.isna().all()
    cached = json.loads(next((tmp_path / "e" / "lenet").glob("[!h]*.json")).read_text())
    assert cached["status"] == "error"


def test_too_many_trials_for_the_pool_is_refused(raw, tmp_path):
    grid = TINY["sweep.lenet"] | {"trials": 11}
    params = with_changes(raw, **(TINY | {"sweep.lenet": grid, "update.batch_size": 2}))
    with pytest.raises(ValueError, match="22 samples, but the target pool has only 20"):
        run_sweep(params, "lenet", cache_dir=tmp_path, progress=False)
