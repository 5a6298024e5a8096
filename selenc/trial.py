"""One grid point -> one measured outcome: the data flow of a single trial.

real sample(s) -> client update g -> significance scores -> mask S (ratio ρ) -> the server's view (visible values +
mask) -> attack -> reconstruction metrics, φ(S) and (B1). HE is not run per trial: its cost depends on k only and is
measured once per ratio (`cost`). `run_trials` is what an executor's worker calls: every trial's failure becomes an
`error` outcome instead of stopping the batch.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import torch

from selenc.attacks import ATTACKS
from selenc.config import Params, derive_seed
from selenc.gradients import client_update
from selenc.grid import Trial
from selenc.metrics import image_scores, text_scores
from selenc.models import Victim, target_batch
from selenc.observed import observe
from selenc.results import Outcome, encode_images
from selenc.selection import make_mask
from selenc.significance import ClientView, client_scores
from selenc.theory import bound, phi, significance, text_point


def run_trial(trial: Trial, params: Params, victim: Victim) -> Outcome:
    """Sample -> update -> scores -> mask -> observed update -> attack -> metrics, φ(S) and (B1)."""
    start = time.perf_counter()
    cfg = getattr(params.models, trial.arch)
    b = params.update.batch_size
    seed = derive_seed(params.study.seed, "trial", trial.arch, trial.trial)
    own = list(range(trial.trial * b, trial.trial * b + b))
    batch = target_batch(victim, cfg.dataset, own)
    update = client_update(victim, batch, params.update)
    metric = trial.effective_metric
    if metric in ("none", "all"):
        mask = torch.full((update.numel(),), metric == "all", dtype=torch.bool)
    else:
        clients = 1 if trial.mask_source == "own" else params.significance.shared_clients
        others = [target_batch(victim, cfg.dataset, [i + j * b for i in own]) for j in range(1, clients)]
        per_client = client_scores(metric, victim, [batch, *others], params.update, params.significance, seed)
        mask = make_mask(per_client, trial.ratio, trial.mask_source)
    # φ(S): the protected share of the distance-based significance (computed on the client's side, theory.md)
    s = significance(ClientView(victim, batch, update, params.update, params.significance, seed))
    observed = observe(victim, update, mask, len(batch), params.update)
    del update  # from here on the attack has only the server's view
    result = ATTACKS[trial.attack](
        observed, victim, getattr(params.attacks, trial.attack, None), trial.threat_model, seed
    )
    out = {
        "status": "ok",
        "device": victim.device.type,
        "seed": seed,
        "phi": phi(s, mask),
        "k": int(mask.sum()),
        "n": int(mask.numel()),
        "attack_s": result.seconds,
    }
    if victim.modality == "image":
        scores = image_scores(result.images, batch.inputs, result.labels, batch.labels)
        out |= {k: v for k, v in scores.items() if k in Outcome.model_fields}
        out["reconstruction"] = encode_images(result.images)
    else:
        ids = [
            [t for t, m in zip(seq.tolist(), am.tolist(), strict=True) if m]
            for seq, am in zip(batch.inputs, batch.attention_mask, strict=True)
        ]
        special = set(victim.tokenizer.all_special_ids)
        true_ids = [[t for t in seq if t not in special] for seq in ids]
        truth = [victim.tokenizer.decode(seq) for seq in true_ids]
        scores = text_scores(result.texts, truth, result.token_ids, true_ids)
        out |= {k: v for k, v in scores.items() if k in Outcome.model_fields}
        out["label_acc"] = float((result.labels.cpu().sort().values == batch.labels.cpu().sort().values).float().mean())
        out["reconstruction"] = " || ".join(result.texts)
    # (B1) at the attack's output, on the client's side (true labels; text: only when the recovered length matches)
    x_hat = result.images if victim.modality == "image" else text_point(victim, batch, result.token_ids)
    if x_hat is not None:
        b1 = bound(victim, batch, params.update, x_hat, mask, params.sweep.bound_grid, params.sweep.bound_iters, seed)
        out |= b1.as_row()
    out["trial_s"] = time.perf_counter() - start
    return Outcome(**out)


def failure(exc: BaseException) -> Outcome:
    """An `error` outcome naming the exception and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return Outcome(status="error", error=f"{type(exc).__name__}: {exc}{where}")


def run_trials(trials: list[Trial], params: Params, victim: Victim) -> list[Outcome]:
    """A worker's batch: each trial's outcome, a failing trial recorded as an `error` outcome."""
    outcomes = []
    for trial in trials:
        try:
            outcomes.append(run_trial(trial, params, victim))
        except Exception as exc:  # one failing trial must not take the rest of the batch with it
            outcomes.append(failure(exc))
    return outcomes
