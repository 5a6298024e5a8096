"""The frontier stage: per architecture, the protecting ratio ρ* of every metric, victim, tie rule and privacy level,
searched (`search`) against the strongest attacker, and the privacy–cost frontier its probes trace.

    python -m selenc.frontier --arch <name>  # reports/results/frontier/<name>.csv, <name>_probes.csv, ...

A *group* is the cells that differ only in their ratio: one metric, victim, tie rule and client update, with the
attacker the guidelines read (`guidelines.threat_model`, `guidelines.mask_source`) and every attack of
`frontier.<arch>.attacks` on each sample (a sample is protected at a level only when every attack failed there,
`stats.protected`). Each (group, level) is one search. Searches run in rounds: every open search says which ratios want
how many samples (`search.step`), the round runs all of it as one set of tasks through the sweep engine
(`engine.run_parts`: the executors and the trial cache), and every search replays on the grown evidence. Levels of one
group share their probes: a cell is run once, whichever search asked.

Samples and batches: sample j is (initialisation j mod study.model_seeds, trial j div study.model_seeds), so a probe's
first n samples are always the same. They come in chunks (the first `n_start`, then `n_step` at a time), and one chunk
of one attack and initialisation is one task, attacked as one vectorised batch. A trial's batch is therefore a
function of its cell and sample index alone, never of the round, the grid or the other searches: a rerun reuses
every probed cell, and a finer grid whose ratios include the coarser grid's reuses the coarser probes. Cells at ρ = 0
and ρ = 1 do not depend on the metric (`grid.Trial.identity`): every group shares them.

A trial that does not finish fails the stage (`engine.SweepFailed`) and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from selenc import cache, data, engine, plots, stats
from selenc.config import known_model, load_params
from selenc.grid import UPDATE, Trial, distinct, update_fields, update_label
from selenc.results import Cost, Outcome, frontier_tables
from selenc.search import PROTECTS, Found, Rule, Search, step, verdict
from selenc.settings import FIRST_ROUND_IS_ONE_ROUND, ConfigError, Params

MB = 1e6


@dataclass(frozen=True, order=True)
class Group:
    """The cells of one search group: they differ only in their ratio."""

    metric: str
    victim: str
    ties: str
    update_kind: str  # the client update, as a trial carries it (`grid.update_fields`)
    batch_size: int
    local_steps: int
    local_lr: float
    rounds: int
    mask_policy: str
    clients: int
    server_lr: float

    @property
    def update(self) -> tuple:
        """The group's `grid.UPDATE` fields, in order."""
        return tuple(getattr(self, name) for name in UPDATE)


GROUP = [f.name for f in dataclasses.fields(Group)]  # the columns that name a group in the tables


@dataclass
class Frontier:
    """What a frontier run found: one row per search, one row per probed cell, and the distinct trials it ran."""

    found: pd.DataFrame
    probes: pd.DataFrame
    trials: int


def groups_of(params: Params, arch: str) -> list[Group]:
    """Every group `frontier.<arch>` searches: victim x tie rule x client update x metric."""
    spec = params.frontier.grid(arch)
    updates = [update_fields(u.over(params.update)) for u in spec.updates]
    return [Group(m, v, t, *u) for v in spec.victims for t in spec.ties for u in updates for m in spec.metrics]


def rule_of(params: Params) -> Rule:
    f = params.frontier
    return Rule(f.n_start, f.n_step, f.n_max)


def chunks(rule: Rule, have: int, want: int) -> list[range]:
    """The sample chunks that take a probe from `have` to `want` samples: the first n_start, then n_step at a time."""
    bounds, n = [0], 0
    while n < want:
        n = rule.next_n(n)
        bounds.append(n)
    return [range(a, b) for a, b in itertools.pairwise(bounds) if a >= have]


def probe_trials(params: Params, arch: str, group: Group, ratio: float, samples: range) -> list[Trial]:
    """Every attack of the frontier on `samples` of one cell, sample by sample. Over several rounds under a policy
    whose round 0 is the one-round message (`settings.FIRST_ROUND_IS_ONE_ROUND`) the server holds that message too:
    the one-round trials of the same sample join the cell's adversary, as in the sweep's findings
    (`stats.with_first_round`)."""
    cfg, seeds = params.guidelines, params.study.model_seeds
    cell = (cfg.threat_model, group.metric, ratio, cfg.mask_source, group.ties, group.victim)
    attacks = params.frontier.grid(arch).attacks
    updates = [group.update]
    if group.rounds > 1 and group.mask_policy in FIRST_ROUND_IS_ONE_ROUND:
        one_round = update_fields(params.update.model_copy(update={"rounds": 1}))[
            4:
        ]  # the rounds fields of one message
        updates.append((*group.update[:4], *one_round))
    return [Trial(arch, a, *cell, *u, j % seeds, j // seeds) for j in samples for u in updates for a in attacks]


def tasks(params: Params, arch: str, asks: dict[tuple[Group, float], tuple[int, int]]) -> list[list[Trial]]:
    """A round's tasks: each asked chunk of each cell (`asks`: (group, ratio) -> (have, want)), split per attack and
    initialisation by `engine.partition`; chunks that are the same computation (ρ = 0 or 1 in several groups) once."""
    rule, seen, out = rule_of(params), set(), []
    for (group, ratio), (have, want) in sorted(asks.items()):
        for samples in chunks(rule, have, want):
            chunk = distinct(probe_trials(params, arch, group, ratio, samples))
            ident = frozenset(engine.identity_key(t) for t in chunk)
            if ident not in seen:
                seen.add(ident)
                out += engine.partition(params, chunk)
    return out


def cell_samples(
    params: Params, arch: str, group: Group, ratio: float, n: int, outcomes: dict[str, Outcome]
) -> pd.DataFrame:
    """The first n samples of one cell against the strongest attacker: per sample (in order) the best success of
    the attacks and, per level, whether every attack failed (`stats.success`, `stats.protected`)."""
    trials = probe_trials(params, arch, group, ratio, range(n))
    rows = pd.DataFrame([{**dataclasses.asdict(t), **outcomes[engine.identity_key(t)].model_dump()} for t in trials])
    rows["modality"] = params.models[arch].modality
    rows["success"] = stats.success(rows)
    flags = {}
    for name, level in params.guidelines.levels.items():
        rows[name] = stats.protected(rows, level)
        flags[name] = "all"
    return rows.groupby(stats.SAMPLE, sort=False).agg({"success": "max", **flags}).reset_index()


def run_frontier(params: Params, arch: str, cache_dir: Path | None = None, progress: bool = True) -> Frontier:
    """Run (or resume from the trial cache) every search of `arch` to its end; see the module doc."""
    root = Path(cache_dir) if cache_dir is not None else cache.cache_dir()
    store = cache.Store(root / "trials" / arch)
    spec, rule, levels = params.frontier.grid(arch), rule_of(params), params.guidelines.levels
    groups = groups_of(params, arch)
    searches = {
        (g, name): Search(spec.grid(), level.min_protected, spec.check_ratios())
        for g in groups
        for name, level in levels.items()
    }
    cells: dict[tuple[Group, float], pd.DataFrame] = {}
    outcomes: dict[str, Outcome] = {}
    with engine.EXECUTORS[params.sweep.executor](params) as executor:  # its workers serve every round
        found = rounds(params, arch, searches, rule, cells, outcomes, store, executor, progress)
    costs = engine.costs(params, arch, {r for _, r in cells}, root)
    probes = probe_table(params, arch, cells, costs)
    return Frontier(found_table(params, arch, found, probes), probes, len(outcomes))


def rounds(
    params: Params,
    arch: str,
    searches: dict[tuple[Group, str], Search],
    rule: Rule,
    cells: dict[tuple[Group, float], pd.DataFrame],
    outcomes: dict[str, Outcome],
    store: cache.Store,
    executor: object,
    progress: bool,
) -> dict[tuple[Group, str], Found]:
    """Replay every search, run what the open ones ask, until none asks (growing `cells` and `outcomes`); what each
    search found."""
    for round_ in range(1, 10_000):
        asks: dict[tuple[Group, float], tuple[int, int]] = {}
        found: dict[tuple[Group, str], Found] = {}
        for (group, name), search in searches.items():
            evidence = {r: list(c[name]) for (g, r), c in cells.items() if g == group}
            wanted, result = step(search, evidence, rule)
            for ratio, n in wanted.items():
                have = len(cells.get((group, ratio), ()))
                asks[(group, ratio)] = (have, max(n, asks.get((group, ratio), (0, 0))[1]))
            if result is not None:
                found[(group, name)] = result
        if not asks:
            break
        parts = tasks(params, arch, asks)
        if progress:
            tqdm.write(
                f"frontier {arch} round {round_}: {len(found)} of {len(searches)} searches done, "
                f"{len(asks)} probes asked, {sum(map(len, parts))} trials"
            )
        ran = engine.run_parts(params, arch, parts, store, progress, f"frontier {arch} round {round_}", executor)
        engine.check_finished(f"frontier {arch}", ran)
        outcomes |= ran
        for (group, ratio), (_, want) in asks.items():
            cells[(group, ratio)] = cell_samples(params, arch, group, ratio, want, outcomes)
    return found


COST_COLUMNS = ("he_ciphertexts", "he_mb", "he_ms")


def _cost_columns(cost: Cost) -> dict:
    return {"he_ciphertexts": cost.he_ciphertexts, "he_mb": cost.he_bytes / MB, "he_ms": cost.he_encrypt_s * 1e3}


def probe_table(params: Params, arch: str, cells: dict, costs: dict[float, Cost]) -> pd.DataFrame:
    """One row per probed cell: its samples, the strongest attacker's median success (bootstrap interval) and, per
    level, the protected share with its Wilson interval and the probe's verdict, plus the HE cost of its ratio."""
    rows, rule, seed = [], rule_of(params), params.study.seed
    attacks = "+".join(sorted(params.frontier.grid(arch).attacks))
    for (group, ratio), c in sorted(cells.items()):
        med, low, high = stats.median_ci(c.success.to_numpy(), seed)
        row = {"arch": arch, "modality": params.models[arch].modality, **dataclasses.asdict(group), "ratio": ratio}
        row |= {"attack_set": attacks, "n": len(c)}
        row |= {"success_median": med, "success_low": low, "success_high": high}
        for name, level in params.guidelines.levels.items():
            k = int(c[name].sum())
            low, high = stats.wilson(k, len(c))
            row |= {f"protected_{name}": k / len(c), f"{name}_low": low, f"{name}_high": high}
            row[f"verdict_{name}"] = verdict(list(c[name]), level.min_protected, rule)
        rows.append(row | _cost_columns(costs[ratio]))
    return pd.DataFrame(rows)


FOUND_COLUMNS = (
    "arch", "modality", "metric", "privacy_level", "victim", "ties", *UPDATE,
    "attack_set", "status", "ratio_star", "bracket_low",
    "bracket_high", "n",
    "protected_share", "protected_low", "protected_high", "success_median", "success_low", "success_high",
    "monotone", "violating_ratio", "probes", "trials", "he_ciphertexts", "he_mb", "he_ms",
)  # fmt: skip
NO_RATIO, BASELINE = "no ratio protects", "baseline not broken"


def found_table(params: Params, arch: str, found: dict, probes: pd.DataFrame) -> pd.DataFrame:
    """One row per search (FOUND_COLUMNS): ρ*, its bracket, and at ρ* its probe's samples, protected share with its
    Wilson interval, the strongest attacker's median success with its bootstrap interval and HE cost (`probe_table`)."""
    attacks = params.frontier.grid(arch).attacks
    at = probes.set_index([*GROUP, "ratio"])
    rows = []
    for (group, name), f in sorted(found.items()):
        row = {"arch": arch, "modality": params.models[arch].modality, **dataclasses.asdict(group)}
        row["privacy_level"] = name
        row["attack_set"] = "+".join(sorted(attacks))
        status = NO_RATIO if f.ratio_star is None else BASELINE if f.bracket_low is None else PROTECTS
        row |= {"status": status, "ratio_star": f.ratio_star, "bracket_low": f.bracket_low}
        row["bracket_high"] = f.ratio_star
        row |= {"monotone": f.monotone, "violating_ratio": f.violating_ratio, "probes": len(f.probes)}
        read = at.loc[[(*dataclasses.astuple(group), r) for r in f.probes], "n"]
        ran = zip(f.probes, read.astype(int), strict=True)
        row["trials"] = sum(len(probe_trials(params, arch, group, r, range(n))) for r, n in ran)
        if f.ratio_star is not None:
            probe = at.loc[(*dataclasses.astuple(group), f.ratio_star)]
            row |= {"n": probe.n, "protected_share": probe[f"protected_{name}"]}
            row |= {"protected_low": probe[f"{name}_low"], "protected_high": probe[f"{name}_high"]}
            row |= {c: probe[c] for c in ("success_median", "success_low", "success_high", *COST_COLUMNS)}
        rows.append(row)
    return pd.DataFrame(rows, columns=list(FOUND_COLUMNS))


def stage_metrics(frontier: Frontier) -> dict:
    """ρ* per victim, tie rule, client update (`grid.update_label`), level and metric (`dvc metrics diff` compares
    them), and the trials spent."""
    out: dict = {"trials": frontier.trials, "probes": len(frontier.probes), "ratio_star": {}}
    for r in frontier.found.itertuples():
        update = update_label(*(getattr(r, name) for name in UPDATE))
        where = out["ratio_star"].setdefault(r.victim, {}).setdefault(r.ties, {}).setdefault(update, {})
        where = where.setdefault(r.privacy_level, {})
        where[r.metric] = None if pd.isna(r.ratio_star) else float(r.ratio_star)
    return out


def output_paths(arch: str, reports: Path) -> list[Path]:
    """The stage's outputs: the searches' table, the probes' table, the metrics JSON and the frontier figure."""
    return [
        *frontier_tables(reports, arch),
        reports / "metrics" / f"frontier_{arch}.json",
        reports / "figures" / f"frontier_{arch}.png",
    ]


def write_outputs(frontier: Frontier, arch: str, params: Params, reports: Path) -> None:
    """Write `output_paths`, each atomically."""
    table, probes, metrics, figure = output_paths(arch, reports)
    cache.write_atomic(table, frontier.found.to_csv(index=False))
    cache.write_atomic(probes, frontier.probes.to_csv(index=False))
    cache.write_atomic(metrics, json.dumps(stage_metrics(frontier), indent=2))
    fig = plots.privacy_cost(frontier.probes, frontier.found, arch, list(params.guidelines.levels))
    figure.parent.mkdir(parents=True, exist_ok=True)
    partial = figure.with_suffix(".partial.png")
    fig.savefig(partial, dpi=120, bbox_inches="tight")
    partial.replace(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selenc.frontier", description="Search one architecture's ρ*.")
    parser.add_argument("--arch", required=True, help="a model of params.yaml's models")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--reports", type=Path, default=cache.REPO_ROOT / "reports", help="where outputs go")
    args = parser.parse_args(argv)
    for stale in output_paths(args.arch, args.reports):  # a failed run must not leave an older table behind
        stale.unlink(missing_ok=True)
    try:
        params = load_params(args.params)
        known_model(params, args.arch)
        frontier = run_frontier(params, args.arch)
    except (ConfigError, data.DataError, engine.SweepFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    write_outputs(frontier, args.arch, params, args.reports)
    done = frontier.found
    print(
        f"{len(done)} searches, {len(frontier.probes)} probes, {frontier.trials} trials -> "
        f"{output_paths(args.arch, args.reports)[0]} ({(done.status == PROTECTS).sum()} protect, "
        f"{(~done.monotone.astype(bool)).sum()} not monotone)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
