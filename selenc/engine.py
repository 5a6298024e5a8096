"""The sweep engine: one architecture's grid, run (or resumed) through an executor into the results table.

`run_sweep(params, arch)` is what the sweep and theory stages call (`sweep`, `theory_check`); `run_parts` (tasks in,
outcomes out, through the cache and an executor) is what it and the frontier's rounds (`frontier`) share.
Every unique computation of the grid (`grid.Trial.identity`) is looked up in the trial cache under a key that hashes
everything its result depends on: the grid point, the params sections the trial reads, the data's content, the
library versions and the source of every module the trial imports (`cache.source_fingerprint`). Missing ones are
run as tasks by the executor `sweep.executor` (`local` worker processes or a `dask` cluster); each finished trial is
cached as soon as its task returns, so a killed sweep resumes on either executor and its table equals an uninterrupted
run's. Errors and timeouts are never cached.

Tasks (`partition`): the optimisation attacks (`attacks.VECTORISED`) run a task as one vectorised batch, and a
trial's floating-point result depends (at round-off level) on what shares its batch. So the batches are a fixed
function of the grid and the params, never of what is cached or how many workers run: one batch per (attack, metric,
victim, initialisation) of the grid, all its threat models, mask sources, ratios and samples, cut to
`sweep.batch_trials` (0: at most MAX_BATCH of the device); and the cache key of a batched trial names its batch. A task
with any trial missing runs whole. Adding a metric leaves the other metrics' batches and cache entries as they were.

A sweep with any trial not finished fails (`SweepFailed`, a summary of the distinct errors with counts) and writes no
table, unless `allow_errors` asks for the table anyway (exploration). HE cost is joined per ratio (`cost`).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from selenc import cache, cost, data, results
from selenc.attacks import VECTORISED
from selenc.executors import EXECUTORS
from selenc.grid import Trial, distinct, expand, update_fields
from selenc.models import build_victim, builder_file, resolve_device
from selenc.results import Cost, Outcome, RunCost
from selenc.settings import LBFGSAttack, Params, configurations

# Largest vectorised batch when `sweep.batch_trials` is 0: on the 2-core CPU 8-32 trials per call are about equally
# fast (benchmarks/engine.py); a GPU's throughput keeps rising into the thousands while memory allows.
MAX_BATCH = {"cpu": 32, "cuda": 1024}


UNUSED_BY = {"untrained": {"pretrain"}, "trained": None}  # model params a victim does not read (not in its cache key)


class SweepFailed(RuntimeError):
    """Some trials of a sweep did not finish; the message summarises why."""


# --- cache keys: what a result depends on ------------------------------------------------------------------------
def partition(params: Params, trials: list[Trial]) -> list[list[Trial]]:
    """The tasks of a sweep: `trials` (`grid.distinct` computations, in grid order) of a vectorised attack grouped per
    (attack, metric, victim, client update, initialisation), each group cut into batches of `sweep.batch_trials` (0:
    MAX_BATCH of the device); the other attacks' trials one task per client upload (`Trial.upload`), so that the
    analytic attacks on one upload share its preparation (`trial.run_trials`)."""
    size = params.sweep.batch_trials or MAX_BATCH[resolve_device(params.study.device).type]
    groups: dict[tuple, list[Trial]] = {}
    for t in trials:
        vectorised = (t.attack, t.identity()["metric"], t.victim, update_fields(t.update), t.init)
        key = vectorised if t.attack in VECTORISED else (t.upload(),)
        groups.setdefault(key, []).append(t)
    out = []
    for group in groups.values():
        step = size if group[0].attack in VECTORISED else len(group)
        out += [group[i : i + step] for i in range(0, len(group), step)]
    return out


def work(params: Params, part: list[Trial]) -> tuple[bool, int]:
    """A task's size for scheduling, longest first: L-BFGS tasks before the others (an iteration's line search may
    evaluate the objective many times: DLG on a ReLU network is the slowest task of its sweep), then its trials × the
    attack's optimisation steps × restarts × configurations (1 for an analytic attack). Only the order in which tasks
    start depends on it, never a result."""
    cfg = params.attacks.of(part[0].attack)
    lbfgs = isinstance(cfg, LBFGSAttack) or getattr(cfg, "optimiser", None) == "lbfgs"
    return lbfgs, len(part) * (cfg.steps * cfg.restarts * configurations(cfg) if cfg is not None else 1)


def trial_description(trial: Trial, params: Params, batch: list[Trial] | None = None) -> dict:
    """Everything a trial's outcome depends on (the cache key hashes it), `batch` being the trials attacked with it."""
    attack_cfg = params.attacks.of(trial.attack)
    mates = None
    if trial.attack in VECTORISED and batch is not None:
        mates = sorted(json.dumps(t.identity(), sort_keys=True) for t in batch)
    return {
        "trial": trial.identity(),
        "batch": mates,
        "seed": params.study.seed,
        "device": params.study.device,
        "model": params.models[trial.arch].model_dump(exclude=UNUSED_BY[trial.victim]),
        "builder": cache.file_fingerprint(builder_file(params.models[trial.arch])),
        "significance": params.significance.model_dump(),
        "attack": attack_cfg.model_dump() if attack_cfg is not None else None,
        "bound": {"grid": params.sweep.bound_grid, "iters": params.sweep.bound_iters},
        "data": data.data_fingerprint(),
        "torch": torch.__version__,
        "source": cache.source_fingerprint("selenc.trial"),
    }


def cost_description(params: Params, arch: str, ratio: float | None) -> dict:
    """Everything a measured HE cost depends on (the cost cache key hashes it)."""
    return {
        "arch": arch,
        "ratio": ratio,
        "seed": params.study.seed,
        "model": params.models[arch].model_dump(),
        "builder": cache.file_fingerprint(builder_file(params.models[arch])),
        "update": params.update.model_dump(),
        "he": params.he.model_dump(),
        "data": data.data_fingerprint(),
        "torch": torch.__version__,
        "source": cache.source_fingerprint("selenc.cost"),
    }


def trial_key(trial: Trial, params: Params, batch: list[Trial] | None = None) -> str:
    return cache.key_of(trial_description(trial, params, batch))


# --- the engine --------------------------------------------------------------------------------------------------
def failure_summary(what: str, outcomes: list[Outcome], total: int) -> str:
    """'sweep mymodel: 3 of 8 trials did not finish' (`what`: sweep mymodel) and one line per distinct (status, error)
    with its count."""
    counts = Counter((o.status, o.error) for o in outcomes)
    lines = [f"{what}: {len(outcomes)} of {total} trials did not finish"]
    lines += [f"  {n} x {status}: {error}" for (status, error), n in counts.most_common()]
    return "\n".join(lines)


def identity_key(trial: Trial) -> str:
    """A trial's computation (`Trial.identity`) as a key: trials with equal keys share one outcome."""
    return json.dumps(trial.identity(), sort_keys=True)


def run_parts(
    params: Params,
    arch: str,
    parts: list[list[Trial]],
    store: cache.Store,
    progress: bool = True,
    desc: str = "",
    executor=None,
) -> dict[str, Outcome]:
    """The outcome of every trial of `parts` (tasks of distinct computations, `partition`), keyed by `identity_key`:
    from `store` where cached under the trial's key (which names its task's trials), else run through `executor`
    (default: a new one of `sweep.executor`, closed after), longest task first, each finished trial cached as soon
    as its task returns."""
    keys = {t: trial_key(t, params, part) for part in parts for t in part}
    outcomes: dict[str, Outcome] = {}
    for key in keys.values():
        if (found := store.get(key, Outcome)) is not None:
            outcomes[key] = found
    todo = [part for part in parts if any(keys[t] not in outcomes for t in part)]
    todo.sort(key=lambda part: work(params, part), reverse=True)  # longest first: no long task left to run alone
    if todo:
        with (
            (
                contextlib.nullcontext(executor) if executor is not None else EXECUTORS[params.sweep.executor](params)
            ) as runner,
            tqdm(total=len(keys), initial=len(outcomes), desc=desc or arch, unit="trial", disable=not progress) as bar,
        ):
            for done, outs in runner.run(arch, todo):
                for trial, outcome in zip(done, outs, strict=True):
                    if keys[trial] not in outcomes:  # a cached batch-mate recomputed with its task keeps its entry
                        outcomes[keys[trial]] = outcome
                        if outcome.status == "ok":
                            store.put(keys[trial], outcome)
                        bar.update()
    return {identity_key(t): outcomes[key] for t, key in keys.items()}


def check_finished(what: str, outcomes: dict[str, Outcome], allow_errors: bool = False) -> None:
    """Raise `SweepFailed` (its message naming `what`, e.g. "sweep mymodel") when a trial did not finish, unless
    `allow_errors`."""
    failed = [o for o in outcomes.values() if o.status != "ok"]
    if failed and not allow_errors:
        raise SweepFailed(failure_summary(what, failed, len(outcomes)))


def costs(params: Params, arch: str, ratios: set[float], root: Path) -> dict[float, Cost]:
    """The measured HE cost (`cost.measure`) of every ratio, from the cost cache or measured and cached."""
    return _cached_costs(params, arch, root, {r: {"ratio": r} for r in ratios})


def budget_costs(params: Params, arch: str, ks: set[int], root: Path) -> dict[int, Cost]:
    """The measured HE cost (`cost.measure_k`) of every budget k (a union mask's rounds), cached as `costs`."""
    return _cached_costs(params, arch, root, {k: {"k": k} for k in ks})


def _cached_costs(params: Params, arch: str, root: Path, what: dict) -> dict:
    """{label: Cost} for each {label: {"ratio": ρ} or {"k": k}} of `what`, measured once on one CPU victim."""
    store = cache.Store(root / "he" / arch)
    victim = functools.cache(lambda: build_victim(arch, params, device=torch.device("cpu")))  # once, if needed

    def measure(spec: dict) -> Cost:
        if "ratio" in spec:
            return cost.measure(params, arch, spec["ratio"], victim())
        return cost.measure_k(params, arch, spec["k"], victim())

    out = {}
    for label, spec in sorted(what.items()):
        key = cache.key_of(cost_description(params, arch, spec.get("ratio")) | spec)
        out[label] = store.get_or_compute(key, Cost, lambda s=spec: measure(s))
    return out


def run_cost(trial: Trial, outcome: Outcome, per_ratio: dict[float, Cost], per_k: dict[int, Cost]) -> RunCost:
    """The HE cost of the trial's federated run (`cost.run_cost`) from `costs`' measurements: every policy but union
    encrypts k = ⌈ρ·n⌉ each round; union each round's own k."""
    if trial.rounds > 1 and trial.mask_policy == "union" and outcome.hidden_rounds:
        return cost.run_cost([per_k[int(k)] for k in outcome.hidden_rounds.split()])
    return cost.run_cost([per_ratio[trial.ratio]] * trial.rounds)


def run_sweep(
    params: Params, arch: str, cache_dir: Path | None = None, progress: bool = True, allow_errors: bool = False
) -> pd.DataFrame:
    """Run (or resume) `arch`'s grid and return the results table, one row per trial in grid order.

    Raises `SweepFailed` when a trial did not finish, unless `allow_errors` (then its row carries the status)."""
    root = Path(cache_dir) if cache_dir is not None else cache.cache_dir()
    trials = expand(params, arch)
    parts = partition(params, distinct(trials))  # one trial per distinct computation, in grid order
    outcomes = run_parts(params, arch, parts, cache.Store(root / "trials" / arch), progress, f"sweep {arch}")
    check_finished(f"sweep {arch}", outcomes, allow_errors)
    union = [outcomes[identity_key(t)].hidden_rounds for t in trials if t.rounds > 1 and t.mask_policy == "union"]
    ks = frozenset(int(k) for ks in union if ks for k in ks.split())
    per_ratio = costs(params, arch, {t.ratio for t in trials}, root)
    per_k = budget_costs(params, arch, set(ks), root)
    model = params.models[arch]
    rows = []
    for t in trials:
        outcome = outcomes[identity_key(t)]
        rows.append(results.row(t, model, outcome, per_ratio[t.ratio], run_cost(t, outcome, per_ratio, per_k)))
    return results.table(rows)
