"""The frontier stage on real attacks (small GPT-2 grids with the analytic token-leakage attack): rounds through the
engine, determinism, reuse of probed cells by a finer grid, and a failed trial failing the stage."""

import json

import pandas as pd
import pytest
import yaml

from selenc import frontier
from selenc.config import parse_params
from selenc.frontier import FOUND_COLUMNS, run_frontier
from selenc.settings import ConfigError
from tests.conftest import with_changes

SMALL = {
    "sweep.workers": 1,
    "frontier.n_start": 2,
    "frontier.n_step": 1,
    "frontier.n_max": 3,
    "guidelines.levels": {
        "strict": {"psnr_max": 12.0, "ssim_max": 0.2, "rouge1_max": 0.2, "token_f1_max": 0.2, "min_protected": 0.3}
    },
    "frontier.gpt2": {
        "metrics": ["magnitude", "embedding_rows"],
        "attacks": ["token_leakage"],
        "victims": ["untrained"],
        "ties": ["index"],
        "spacing": "linear",
        "points": 4,
        "lowest": 0.005,
        "check": 2,
    },
}


@pytest.fixture
def small(raw):
    return with_changes(raw, **SMALL)


def entries(root) -> set[str]:
    return {f.name for f in (root / "trials" / "gpt2").glob("*.json")}


def test_frontier_finds_each_ratio_star_on_real_attacks_deterministically(small, tmp_path):
    result = run_frontier(small, "gpt2", cache_dir=tmp_path / "a", progress=False)
    found, probes = result.found, result.probes
    assert list(found.columns) == list(FOUND_COLUMNS) and len(found) == 2
    assert (found.status == "protects").all()  # token leakage breaks the unprotected model, ρ = 1 hides everything
    assert (probes[probes.ratio == 0.0].success_median > 0.5).all() and (
        probes[probes.ratio == 1.0].verdict_strict == "protects"
    ).all()
    for r in found.itertuples():  # the bracket is one grid step, failing below and protecting at ρ*
        assert r.ratio_star - r.bracket_low == pytest.approx(0.25) and r.n <= 3
        cells = probes[probes.metric == r.metric].set_index("ratio")
        assert (
            cells.loc[r.bracket_low, "verdict_strict"] == "fails"
            and cells.loc[r.ratio_star, "verdict_strict"] == "protects"
        )
        assert r.protected_low >= 0.3 and r.he_mb == cells.loc[r.ratio_star, "he_mb"] > 0
    assert (
        result.trials == len(entries(tmp_path / "a")) < probes.n.sum()
    )  # ρ = 0 and 1: one computation for both metrics
    again = run_frontier(small, "gpt2", cache_dir=tmp_path / "b", progress=False)
    measured = ["he_mb", "he_ms"]  # wall clock and compressed sizes: not results
    pd.testing.assert_frame_equal(found.drop(columns=measured), again.found.drop(columns=measured))

    # a finer grid (its ratios include the coarser ones) runs only the samples the coarser run did not
    fine = with_changes(small.model_dump(), **{"frontier.gpt2.points": 8, "frontier.gpt2.check": 4})
    before = entries(tmp_path / "a")
    finer = run_frontier(fine, "gpt2", cache_dir=tmp_path / "a", progress=False)
    had = probes.set_index(["metric", "ratio"]).n
    new = sum(
        max(0, r.n - had.get((r.metric, r.ratio), 0)) for r in finer.probes.itertuples() if r.ratio not in (0.0, 1.0)
    )
    assert len(entries(tmp_path / "a") - before) == new > 0
    assert (finer.found.ratio_star - finer.found.bracket_low).round(6).eq(0.125).all()
    metrics = json.loads(json.dumps(frontier.stage_metrics(finer)))
    stars = metrics["ratio_star"]["untrained"]["index"]["fedsgd B=1"]["strict"]
    assert stars == dict(zip(finer.found.metric, finer.found.ratio_star, strict=True))
    assert metrics["trials"] == finer.trials


def test_a_failed_trial_fails_the_stage_and_writes_nothing(raw, tmp_path, monkeypatch):
    slow = yaml.safe_load(yaml.safe_dump(raw))
    slow["sweep"] |= {"workers": 1, "time_limit_s": 0.5}
    slow["attacks"]["image"]["dlg"]["steps"] = 100_000
    slow["frontier"]["lenet"] |= {"metrics": ["magnitude"], "attacks": ["dlg"], "points": 2}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(slow))
    monkeypatch.setenv("SELENC_CACHE_DIR", str(tmp_path / "cache"))
    reports = tmp_path / "reports"
    stale = frontier.output_paths("lenet", reports)
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("from an older run")
    assert frontier.main(["--arch", "lenet", "--params", str(path), "--reports", str(reports)]) == 1
    assert not any(p.exists() for p in stale)
    cached = [p.read_text() for p in (tmp_path / "cache" / "trials" / "lenet").glob("*.json")]
    # only finished trials are cached (ρ = 1, where nothing is visible, may finish in time); timeouts never
    assert len(cached) <= slow["frontier"]["n_start"] and all('"status": "ok"' in c for c in cached)


def test_the_frontier_searches_each_client_update_on_its_own(raw):
    raw["frontier"]["gpt2"]["updates"] = [{}, {"batch_size": 2}]
    params = parse_params(raw)
    spec = params.frontier.gpt2
    groups = frontier.groups_of(params, "gpt2")
    assert {g.batch_size for g in groups} == {1, 2}
    assert len(groups) == 2 * len(spec.metrics) * len(spec.ties) * len(spec.victims)
    for group in groups:
        trials = frontier.probe_trials(params, "gpt2", group, 0.5, range(3))
        assert {(t.batch_size, t.trial) for t in trials} == {(group.batch_size, j) for j in range(3)}
    raw["frontier"]["gpt2"]["updates"] = [{}, {"batch_size": 3}]  # 20 samples x 3 > the 40 sentences
    with pytest.raises(ConfigError, match=r"frontier\.n_max: 20 trials x frontier\.gpt2\.updates\.1\.batch_size 3"):
        parse_params(raw)


def test_a_rounds_probe_holds_round_zero_where_it_is_the_one_round_message(raw):
    raw["frontier"]["gpt2"]["updates"] = [{}, {"rounds": 4}, {"rounds": 4, "mask_policy": "consensus"}]
    params = parse_params(raw)
    attacks = params.frontier.gpt2.attacks
    by_update = {}
    for group in frontier.groups_of(params, "gpt2"):
        trials = frontier.probe_trials(params, "gpt2", group, 0.5, range(3))
        by_update[(group.rounds, group.mask_policy)] = {(t.rounds, t.mask_policy, t.clients, t.trial) for t in trials}
        assert len(trials) == len({(t.rounds, t.trial) for t in trials}) * len(attacks)
    one = {(1, "fresh", 1, j) for j in range(3)}
    assert by_update[(1, "fresh")] == one
    assert by_update[(4, "fresh")] == one | {(4, "fresh", params.update.clients, j) for j in range(3)}
    assert by_update[(4, "consensus")] == {(4, "consensus", params.update.clients, j) for j in range(3)}
