"""The sweep engine: tasks, cache, resume, determinism, failing loudly, executors (tiny real grids on LeNet)."""

import dataclasses
import json
import multiprocessing
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from selenc import cache, data
from selenc import trial as trial_mod
from selenc.engine import SweepFailed, partition, run_sweep, trial_key
from selenc.grid import distinct, expand
from selenc.models import build_victim
from selenc.results import COLUMNS
from selenc.trial import run_trials
from tests.conftest import REPO, with_changes

TINY = {
    "sweep.workers": 2,
    "sweep.lenet": {
        "metrics": ["random", "magnitude"],
        "ratios": [0.0, 0.5],
        "attacks": ["dlg"],
        "threat_models": ["mask_aware"],
        "mask_sources": ["own"],
        "ties": ["index"],
        "victims": ["untrained"],
        "trials": 2,
    },
    "attacks.image.dlg.steps": 2,
    "significance.samples": 1,
    "sweep.bound_grid": 2,
    "sweep.bound_iters": 1,
}
# measurements: clock, compressed sizes
VARYING = ["attack_s", "trial_s", "he_encrypt_s", "he_bytes", "he_bytes_sd", "he_encrypt_s_run", "he_bytes_run"]


@pytest.fixture
def tiny(raw):
    return with_changes(raw, **TINY)


def entries(root: Path) -> dict[str, int]:
    return {f.name: f.stat().st_mtime_ns for f in (root / "trials" / "lenet").glob("*.json")}


def test_batches_are_fixed_by_the_grid_and_adding_a_metric_keeps_the_others(tiny):
    grid = TINY["sweep.lenet"]
    bigger = with_changes(tiny.model_dump(), **{"sweep.lenet": grid | {"metrics": [*grid["metrics"], "distance"]}})

    def parts(params):
        return partition(params, distinct(expand(params, "lenet")))

    for params in (tiny, bigger):
        assert all(len({(t.attack, t.effective_metric) for t in part}) == 1 for part in parts(params))
    old = {trial_key(t, tiny, p) for p in parts(tiny) for t in p}
    assert len(old) == 6 and old < {trial_key(t, bigger, p) for p in parts(bigger) for t in p}  # others unchanged
    assert all(len(p) == 1 for p in parts(with_changes(tiny.model_dump(), **{"sweep.batch_trials": 1})))
    batched = parts(tiny)
    assert trial_key(batched[1][0], tiny, batched[1]) != trial_key(batched[1][0], tiny, batched[1][:1])


def test_sweep_table_cache_and_determinism(tiny, tmp_path):
    table = run_sweep(tiny, "lenet", cache_dir=tmp_path / "a", progress=False)
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 8 and (table.status == "ok").all(), table.error.tolist()
    assert (table.device == "cpu").all() and table.psnr.notna().all() and table.phi.between(0, 1).all()
    half = table[table.ratio == 0.5]
    assert (half.k == -(-half.n // 2)).all() and (table[table.ratio == 0].phi == 0).all()
    assert (table[table.ratio == 0].he_ciphertexts == 0).all()
    assert (half.b1_mismatch > 0).all() and (half.b1_lipschitz > 0).all()  # (B1) recorded for every trial
    assert (half.b1_bound <= half.b1_error).all() and not half.b1_violated.astype(bool).any()
    assert (table[table.ratio == 0].b1_bound == 0).all()
    assert (half.he_ciphertexts == -(-half.k // 4096)).all() and (half.he_bytes > 4 * half.n).all()
    stamps = entries(tmp_path / "a")
    assert len(stamps) == 6
    again = run_sweep(tiny, "lenet", cache_dir=tmp_path / "a", progress=False)
    assert entries(tmp_path / "a") == stamps  # nothing recomputed
    pd.testing.assert_frame_equal(again, table)
    one = with_changes(tiny.model_dump(), **{"sweep.workers": 1})
    fresh = run_sweep(one, "lenet", cache_dir=tmp_path / "b", progress=False)  # one worker instead of two
    pd.testing.assert_frame_equal(fresh.drop(columns=VARYING), table.drop(columns=VARYING))


def test_trained_victims_run_beside_untrained_ones_on_the_same_samples(tiny, tmp_path):
    """A `trained` victim is the seeded init after `models.<arch>.pretrain`: its trials attack another model (other
    updates, other φ), never share a task with untrained ones, and only their cache keys follow the pretraining."""
    small = {"epochs": 1, "samples": 64, "batch_size": 16, "lr": 0.003}
    grid = TINY["sweep.lenet"] | {"ratios": [0.5], "victims": ["untrained", "trained"]}
    changes = {"sweep.lenet": grid, "models.lenet.pretrain": small, "sweep.bound_grid": 0}
    params = with_changes(tiny.model_dump(), **changes)
    trials = expand(params, "lenet")
    assert [t.victim for t in trials].count("trained") == len(trials) // 2
    assert all(len({t.victim for t in part}) == 1 for part in partition(params, distinct(trials)))
    table = run_sweep(params, "lenet", cache_dir=tmp_path, progress=False)
    assert (table.status == "ok").all(), table.error.tolist()
    pair = table.set_index(["victim", "metric", "trial"])
    assert (pair.loc["trained"].phi != pair.loc["untrained"].phi).all()  # another model: another update and mask
    assert table.filter(like="b1_").isna().all().all()  # sweep.bound_grid 0: no (B1) columns
    slower = with_changes(params.model_dump(), **{"models.lenet.pretrain.lr": 0.001})
    for t in trials:
        assert (trial_key(t, params) == trial_key(t, slower)) == (t.victim == "untrained")


def test_analytic_attacks_on_one_upload_share_its_preparation(raw, monkeypatch):
    """Token leakage and DAGER on the same client upload (either threat model) are one task, prepared once, with the
    outcomes of preparing every trial on its own."""
    grid = {
        "metrics": ["magnitude"],
        "ratios": [0.2],
        "attacks": ["token_leakage", "dager"],
        "threat_models": ["mask_aware", "zero_fill"],
        "mask_sources": ["own"],
        "ties": ["index"],
        "victims": ["untrained"],
        "trials": 2,
    }
    params = with_changes(raw, **{"sweep.gpt2": grid, "significance.samples": 1})
    trials = distinct(expand(params, "gpt2"))
    tasks = partition(params, trials)
    assert len(tasks) == 2 and all(len(task) == 4 and len({t.upload() for t in task}) == 1 for task in tasks)
    victim = build_victim("gpt2", params)
    prepared, original = [], trial_mod.prepare
    monkeypatch.setattr(trial_mod, "prepare", lambda t, *a: prepared.append(t) or original(t, *a))
    together = run_trials(tasks[0], params, victim)
    assert len(prepared) == 1  # four trials, one upload
    alone = [o for t in tasks[0] for o in run_trials([t], params, victim)]
    assert len(prepared) == 5
    assert [o.model_dump(exclude={"attack_s", "trial_s"}) for o in together] == [
        o.model_dump(exclude={"attack_s", "trial_s"}) for o in alone
    ]


def _run(params, cache_root):
    run_sweep(params, "lenet", cache_dir=cache_root, progress=False)


def test_killed_sweep_resumes_without_recomputing(raw, tmp_path):
    params = with_changes(raw, **(TINY | {"sweep.workers": 1, "attacks.image.dlg.steps": 30}))
    root = tmp_path / "c"
    proc = multiprocessing.get_context("spawn").Process(target=_run, args=(params, root))
    proc.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(entries(root)) < 2:
        time.sleep(0.05)
    proc.kill()
    proc.join()
    done = entries(root)
    assert 2 <= len(done) < 6, "the sweep should have been killed mid-way"
    resumed = run_sweep(params, "lenet", cache_dir=root, progress=False)
    assert {k: v for k, v in entries(root).items() if k in done} == done
    whole = run_sweep(params, "lenet", cache_dir=tmp_path / "d", progress=False)
    pd.testing.assert_frame_equal(resumed.drop(columns=VARYING), whole.drop(columns=VARYING))


def test_timeouts_fail_the_sweep_and_are_never_cached(raw, tmp_path):
    slow = with_changes(raw, **(TINY | {"sweep.time_limit_s": 0.5, "attacks.image.dlg.steps": 100_000}))
    with pytest.raises(
        SweepFailed, match=r"6 of 6 trials did not finish\n  6 x timeout: task of 2 trials exceeded the 0 s"
    ):
        run_sweep(slow, "lenet", cache_dir=tmp_path, progress=False)
    assert entries(tmp_path) == {}
    table = run_sweep(slow, "lenet", cache_dir=tmp_path, progress=False, allow_errors=True)
    assert (table.status == "timeout").all() and table.psnr.isna().all() and entries(tmp_path) == {}
    fixed = with_changes(raw, **TINY)  # a longer limit recomputes: the timeouts were not replayed
    assert (run_sweep(fixed, "lenet", cache_dir=tmp_path, progress=False).status == "ok").all()


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    copy = tmp_path / "data"
    shutil.copytree(data.data_dir(), copy)
    monkeypatch.setenv("SELENC_DATA_DIR", str(copy))  # inherited by the spawned workers
    return copy


def test_bad_data_fails_every_trial_and_is_not_replayed_once_fixed(tiny, tmp_path, data_copy):
    images = data_copy / "cifar10_test20" / "images.npy"
    original = images.read_bytes()
    flipped = bytearray(original)
    flipped[-1] ^= 0xFF
    images.write_bytes(bytes(flipped))
    with pytest.raises(SweepFailed) as failed:
        run_sweep(tiny, "lenet", cache_dir=tmp_path / "cache", progress=False)
    lines = str(failed.value).splitlines()
    assert lines[0] == "sweep lenet: 6 of 6 trials did not finish" and len(lines) == 2
    assert "6 x error: DataError" in lines[1] and "images.npy" in lines[1] and "make data" in lines[1]
    assert entries(tmp_path / "cache") == {}
    images.write_bytes(original)
    assert (run_sweep(tiny, "lenet", cache_dir=tmp_path / "cache", progress=False).status == "ok").all()


def warned_files(caught) -> set[str]:
    return {Path(str(w.message).split("cache entry ")[1].split(" (")[0]).name for w in caught}


def test_unreadable_cache_entries_are_recomputed_with_a_warning(tiny, tmp_path):
    table = run_sweep(tiny, "lenet", cache_dir=tmp_path, progress=False)
    folder = tmp_path / "trials" / "lenet"
    truncated, foreign = sorted(folder.glob("*.json"))[:2]
    truncated.write_text(truncated.read_text()[:40])
    stored = json.loads(foreign.read_text())
    stored["entry"]["psnr"] = "high"  # not the row schema (and no longer its hash)
    foreign.write_text(json.dumps(stored))
    with pytest.warns(UserWarning, match="ignoring cache entry") as caught:
        again = run_sweep(tiny, "lenet", cache_dir=tmp_path, progress=False)
    assert warned_files(caught) == {truncated.name, foreign.name}
    assert json.loads(truncated.read_text())["entry"]["status"] == "ok"
    assert json.loads(foreign.read_text())["entry"]["psnr"] != "high"
    pd.testing.assert_frame_equal(again.drop(columns=VARYING), table.drop(columns=VARYING))


def test_a_cached_number_edited_to_another_valid_value_is_recomputed(tiny, tmp_path):
    """An entry whose PSNR was edited to a plausible 99.0 still fits the schema; its content hash does not: the sweep
    warns naming the file, recomputes the trial and the table holds the measured value again."""
    table = run_sweep(tiny, "lenet", cache_dir=tmp_path, progress=False)
    folder = tmp_path / "trials" / "lenet"
    path = sorted(folder.glob("*.json"))[0]
    stored = json.loads(path.read_text())
    measured = stored["entry"]["psnr"]
    stored["entry"]["psnr"] = 99.0
    path.write_text(json.dumps(stored))
    with pytest.warns(UserWarning, match="no longer matches its hash") as caught:
        again = run_sweep(tiny, "lenet", cache_dir=tmp_path, progress=False)
    assert warned_files(caught) == {path.name}
    assert json.loads(path.read_text())["entry"]["psnr"] == measured and 99.0 not in set(again.psnr)
    pd.testing.assert_frame_equal(again.drop(columns=VARYING), table.drop(columns=VARYING))


def test_cache_key_follows_data_params_and_trial_source_only(tiny, tmp_path, data_copy):
    trial = expand(tiny, "lenet")[-1]
    key = trial_key(trial, tiny)
    assert trial_key(trial, tiny.model_copy(update={"he": tiny.he.model_copy(update={"threads": 1})})) == key
    changed = tiny.model_copy(update={"study": tiny.study.model_copy(update={"seed": 1})})
    assert trial_key(trial, changed) != key
    manifest = json.loads((data_copy / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = "0" * 64  # the data's content as the manifest pins it
    (data_copy / "manifest.json").write_text(json.dumps(manifest))
    assert trial_key(trial, tiny) != key


def test_trial_fingerprint_covers_exactly_what_a_trial_imports():
    code = "import sys, selenc.trial; print(sorted(m for m in sys.modules if m.split('.')[0] == 'selenc'))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert cache.module_closure("selenc.trial") == json.loads(loaded.stdout.replace("'", '"'))
    assert not {"selenc.plots", "selenc.sweep", "selenc.he", "selenc.cache"} & set(cache.module_closure("selenc.trial"))
    assert "selenc.he" in cache.module_closure("selenc.cost")


def test_dask_executor_table_equals_the_local_one(tiny, tmp_path):
    local = run_sweep(tiny, "lenet", cache_dir=tmp_path / "local", progress=False)
    on_dask = with_changes(tiny.model_dump(), **{"sweep.executor": "dask", "sweep.dask_workers": 2})
    table = run_sweep(on_dask, "lenet", cache_dir=tmp_path / "dask", progress=False)
    pd.testing.assert_frame_equal(table.drop(columns=VARYING), local.drop(columns=VARYING))
    stamps = entries(tmp_path / "dask")  # the same cache resumes on the other executor: nothing to recompute
    assert len(stamps) == 6
    run_sweep(tiny, "lenet", cache_dir=tmp_path / "dask", progress=False)
    assert entries(tmp_path / "dask") == stamps


def test_dask_executor_times_out_overdue_tasks(raw, tmp_path):
    slow = {
        "sweep.time_limit_s": 0.5,
        "attacks.image.dlg.steps": 100_000,
        "sweep.executor": "dask",
        "sweep.dask_workers": 2,
    }
    params = with_changes(raw, **(TINY | slow | {"sweep.batch_trials": 2}))
    table = run_sweep(params, "lenet", cache_dir=tmp_path, progress=False, allow_errors=True)
    assert (table.status == "timeout").all() and table.error.str.contains("task of 2 trials exceeded").all()
    assert entries(tmp_path) == {}


def test_the_client_update_is_in_the_cache_key_and_fedsgd_ignores_local_settings(tiny):
    trial = expand(tiny, "lenet")[-1]
    batch4 = dataclasses.replace(trial, batch_size=4)
    assert trial_key(batch4, tiny) != trial_key(trial, tiny)
    # the update section is only the default: a trial names its own update, so changing the section leaves its key
    other = tiny.model_copy(update={"update": tiny.update.model_copy(update={"local_lr": 0.5, "batch_size": 2})})
    assert trial_key(trial, other) == trial_key(trial, tiny)


def test_a_vectorised_batch_holds_one_client_update(tiny):
    trials = distinct(expand(tiny, "lenet"))
    four = [dataclasses.replace(t, batch_size=4) for t in trials]
    parts = partition(tiny, trials + four)
    assert all(len({t.batch_size for t in part}) == 1 for part in parts)
    assert sorted(map(len, partition(tiny, four))) == sorted(map(len, partition(tiny, trials)))


def test_same_params_give_the_same_table_on_every_client_update(tiny, tmp_path):
    """Batch 2 FedSGD and FedAvg rows beside batch 1 ones: each update has its rows, and a second run from an empty
    cache gives the same table (measurements aside)."""
    grid = TINY["sweep.lenet"] | {"metrics": ["magnitude"], "ratios": [0.5]}
    updates = [{}, {"batch_size": 2}, {"kind": "fedavg", "batch_size": 2, "local_steps": 2}]
    params = with_changes(tiny.model_dump(), **{"sweep.lenet": grid | {"updates": updates}})
    table = run_sweep(params, "lenet", cache_dir=tmp_path / "a", progress=False)
    assert (table.status == "ok").all(), table.error.tolist()
    got = sorted(set(table[["update_kind", "batch_size", "local_steps"]].itertuples(index=False, name=None)))
    assert got == [("fedavg", 2, 2), ("fedsgd", 1, 0), ("fedsgd", 2, 0)] and len(table) == 6
    again = run_sweep(params, "lenet", cache_dir=tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(again.drop(columns=VARYING), table.drop(columns=VARYING))
