"""The theory stage: T1-T5 of theory.md on the cases of `params.theory`, written as tables and theory.json.

    python -m selenc.theory_check          # writes reports/theory/*.csv and reports/metrics/theory.json

Each case is a small sweep (mask-aware attacker, own masks, the case's attack length) run by the sweep engine, so it
shares the trial cache, the executors and the fail-loudly rule: a case with a trial that did not finish fails the
stage. T1 (identity), T3 (fields) and T5 (effective rank) are computed on the case's first client batch; T2 and T4 are
read off the trials. The maths lives in `theory`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from selenc import cache, data, stats, theory
from selenc.config import load_params
from selenc.engine import SweepFailed, run_sweep
from selenc.gradients import client_update, continuous_input
from selenc.models import Batch, Victim, build_victim, client_targets, target_batch
from selenc.observed import observe
from selenc.results import success_column
from selenc.selection import top_k_mask
from selenc.settings import ConfigError, Params, SweepArch, TheoryCase, derive_seed
from selenc.significance import ClientView, far_field, scores


# --- the theory stage: T1-T5 on the cases of params.theory --------------------------------------------------------
def case_params(params: Params, case: TheoryCase) -> Params:
    """params with `case` as its architecture's sweep grid (mask-aware, own masks), the case's attack length, and the
    theory's L_S grid: the theory stage's trials are ordinary sweep trials with these settings."""
    grid = SweepArch(
        metrics=case.metrics,
        ratios=case.ratios,
        attacks=[case.attack],
        threat_models=["mask_aware"],
        mask_sources=["own"],
        ties=["index"],
        victims=["untrained"],
        trials=case.trials,
    )
    attacks = params.attacks.with_steps(case.attack, case.steps)  # an analytic attack has no steps: unchanged
    sweep = params.sweep.model_copy(
        update={case.arch: grid, "bound_grid": params.theory.grid, "bound_iters": params.theory.power_iters}
    )
    return params.model_copy(update={"attacks": attacks, "sweep": sweep})


def _first_batch(victim: Victim, params: Params, arch: str) -> Batch:
    dataset = params.models[arch].dataset
    return target_batch(victim, dataset, client_targets(dataset, 0, params.update.batch_size))


def case_masks(view: ClientView, case: TheoryCase) -> dict[tuple[str, float], torch.Tensor]:
    """The encrypted set of every (metric, ratio) of the case for the client's first batch (ratio 0: empty)."""
    out = {}
    for metric in case.metrics:
        s = scores(metric, view)
        for ratio in case.ratios:
            out[(metric, float(ratio))] = top_k_mask(s, ratio)
    return out


def identity_table(view: ClientView, masks: dict, samples: int) -> pd.DataFrame:
    """T1 in float64 on `samples` far-field candidates per mask (the attack's own random starts)."""
    victim, batch = theory.float64(view.victim, view.batch)
    update = client_update(victim, batch, view.update_cfg)
    x = continuous_input(victim, batch)
    view64 = ClientView(victim, batch, update, view.update_cfg, view.cfg, view.seed)
    gen = view.generator("identity")
    rows = []
    for (metric, ratio), mask in masks.items():
        observed = observe(victim, update, mask, len(batch), view.update_cfg)
        for j in range(samples):
            candidate = far_field(view64, x, gen).double()  # images: pixels; text: an embedding offset
            err = theory.identity_error(victim, batch, view.update_cfg, observed, update, candidate)
            rows.append({"metric": metric, "ratio": ratio, "candidate": j} | err)
    return pd.DataFrame(rows)


def field_table(view: ClientView, samples: int, exact: bool, keep: int = 2000) -> tuple[pd.DataFrame, dict]:
    """T3: far-field s vs |g|², near-field s vs ‖J_i‖² (exact Jacobian when `exact`), Spearman over all n
    coordinates, plus `keep` random coordinates for a scatter plot."""
    cfg = view.cfg.model_copy(update={"samples": samples})
    big = ClientView(view.victim, view.batch, view.update, view.update_cfg, cfg, view.seed)
    g2 = view.update.square()
    s_far, s_near = theory.significance(big, "far"), theory.significance(big, "near")
    j2 = theory.row_norms(view.victim, view.batch, view.update_cfg, exact=exact, samples=samples, seed=view.seed)
    corr = {"far": _informative_spearman(s_far, g2), "near": _informative_spearman(s_near, j2)}
    pick = torch.randperm(g2.numel(), generator=torch.Generator().manual_seed(view.seed))[:keep]
    frame = pd.DataFrame(
        {
            name: t.detach().cpu()[pick].double().numpy()
            for name, t in {"g2": g2, "s_far": s_far, "s_near": s_near, "j2": j2}.items()
        }
    )
    return frame, corr


def _informative_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman over the coordinates where a or b is non-zero: coordinates that are exactly 0 in both (a text model's
    embedding rows of absent tokens, dead ReLU units) are one giant tie that would inflate the correlation."""
    keep = (a != 0) | (b != 0)
    return stats.spearman(a[keep].cpu(), b[keep].cpu())


def rank_table(view: ClientView, masks: dict, tolerance: float) -> pd.DataFrame:
    """T5 for every (metric, ratio) mask: the dimension of J_V's near-null space (singular values at most `tolerance`
    × the unencrypted J's largest) and the entropy effective rank beside it, from J's exact spectrum."""
    spectrum = theory.Spectrum(view.victim, view.batch, view.update_cfg)
    reference = float(spectrum.singular_values(torch.ones(spectrum.j.shape[0], dtype=torch.bool))[0])
    rows, done = [], {}
    for (m, r), mask in masks.items():
        key = mask.cpu().numpy().tobytes()  # ρ = 0 is one mask whatever the metric: one spectrum
        if key not in done:
            done[key] = spectrum.singular_values(~mask)
        sv = done[key]
        rows.append(
            {
                "metric": m,
                "ratio": r,
                "near_null_dim": theory.near_null_dim(sv, spectrum.dim, reference, tolerance),
                "effective_rank": theory.effective_rank(sv),
                "tolerance": tolerance,
                "input_dim": spectrum.dim,
            }
        )
    return pd.DataFrame(rows)


def run(params: Params, out_dir: Path, cache_dir: Path | None = None, allow_errors: bool = False) -> dict:
    """Run every case and write out_dir/{trials,identity,fields,ranks}.csv; return the metrics of theory.json."""
    th = params.theory
    out_dir.mkdir(parents=True, exist_ok=True)
    tables, identity, fields, ranks, per_case = [], [], [], [], {}
    for case in th.cases:
        label = f"{case.arch}/{case.attack}"
        cp = case_params(params, case)
        table = run_sweep(cp, case.arch, cache_dir=cache_dir, allow_errors=allow_errors)
        victim = build_victim(case.arch, cp)
        tables.append(table.assign(case=label))
        batch = _first_batch(victim, cp, case.arch)
        seed = derive_seed(params.study.seed, "theory", case.arch)
        view = ClientView(victim, batch, client_update(victim, batch, cp.update), cp.update, cp.significance, seed)
        masks = case_masks(view, case)
        print(f"theory {label}: T1 identity, T3 fields" + (", T5 near-null space" if case.effective_rank else ""))
        identity.append(identity_table(view, masks, th.identity_candidates).assign(case=label))
        frame, corr = field_table(view, th.samples, exact=case.effective_rank)
        fields.append(frame.assign(case=label))
        if case.effective_rank:
            ranks.append(rank_table(view, masks, th.null_tolerance).assign(case=label))
        col, _ = success_column(params.models[case.arch].modality)
        per_case[label] = {
            "t2": stats.bound_summary(table, th.tolerance),
            "t3_far_spearman": corr["far"],
            "t3_near_spearman": corr["near"],
            "t4_spearman": stats.phi_spearman(table, col)[case.attack],
            "t4": stats.phi_given_ratio(table, col).get(case.attack, {"partial_spearman": None, "per_ratio": {}}),
        }
    trials, identity_df = pd.concat(tables, ignore_index=True), pd.concat(identity, ignore_index=True)
    trials.to_csv(out_dir / "trials.csv", index=False)
    identity_df.to_csv(out_dir / "identity.csv", index=False)
    pd.concat(fields, ignore_index=True).to_csv(out_dir / "fields.csv", index=False)
    rank_df = pd.concat(ranks, ignore_index=True) if ranks else pd.DataFrame(columns=["metric", "ratio", "case"])
    rank_df.to_csv(out_dir / "ranks.csv", index=False)
    t2 = stats.bound_summary(trials, th.tolerance)
    metrics = {
        "t1_max_rel_err": float(identity_df.rel_err.max()),
        "t2_checked": t2["checked"],
        "t2_violations": t2["violations"],
        "t2_tightness_median": t2["tightness_median"],
        "t3_far_spearman": float(np.nanmean([c["t3_far_spearman"] for c in per_case.values()])),
        "t3_near_spearman": float(np.nanmean([c["t3_near_spearman"] for c in per_case.values()])),
        "t4_spearman": float(np.nanmean([c["t4_spearman"] for c in per_case.values()])),
        "t4_partial_spearman": {label: c["t4"]["partial_spearman"] for label, c in per_case.items()},
        "t4_per_ratio": {label: c["t4"]["per_ratio"] for label, c in per_case.items()},
        "cases": per_case,
    }
    if len(rank_df):
        for column in ("near_null_dim", "effective_rank"):
            metrics[f"t5_{column}"] = {
                f"{case}|{metric}": {f"r{r:g}": round(float(v), 2) for r, v in zip(g.ratio, g[column], strict=True)}
                for (case, metric), g in rank_df.groupby(["case", "metric"])
            }
        metrics["t5_input_dim"] = int(rank_df.input_dim.iloc[0])
        metrics["t5_tolerance"] = th.null_tolerance
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selenc.theory_check", description="T1-T5 of theory.md.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--reports", type=Path, default=cache.REPO_ROOT / "reports")
    parser.add_argument("--allow-errors", action="store_true", help="go on when trials failed (exploration only)")
    args = parser.parse_args(argv)
    out = args.reports / "metrics" / "theory.json"
    out.unlink(missing_ok=True)  # a failed run must not leave an older result behind
    try:
        params = load_params(args.params)
        metrics = run(params, args.reports / "theory", allow_errors=args.allow_errors)
    except (ConfigError, data.DataError, SweepFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2))
    print(json.dumps({k: v for k, v in metrics.items() if k.startswith("t") and not isinstance(v, dict)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
