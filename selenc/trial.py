"""One grid point -> one measured outcome: the data flow of a single trial, run for a batch of trials at once.

real sample(s) -> client update g -> significance scores -> mask S (ratio ρ) -> the server's view (visible values +
mask) -> attack -> reconstruction metrics, φ(S) and, when `sweep.bound_grid` > 0, (B1). Over several rounds
(`rounds`) the client's updates come from one federated run, each round masked under the trial's policy, and the
server's view holds every round. A trial is `prepare`d on the
client's side, attacked by the server, and `finish`ed on the client's side again (metrics need the true sample).
`run_trials` runs a worker's batch: consecutive trials of one attack are attacked together (`attacks.BATCHED`: one
vectorised optimisation for every optimisation attack), trials on the same client upload are prepared once, and every
trial's failure becomes an `error` outcome instead of stopping the batch. HE is not run per trial: its cost depends
on k only and is measured once per ratio (`cost`).
"""

from __future__ import annotations

import itertools
import time
import traceback
import weakref
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from selenc.attacks import BATCHED, VECTORISED, AttackResult
from selenc.gradients import FlatLayout, client_update
from selenc.grid import Trial
from selenc.metrics import image_scores, text_scores
from selenc.models import Batch, Victim, client_targets, init_tags, target_batch
from selenc.observed import ObservedUpdate, observe
from selenc.results import Outcome, encode_images
from selenc.rounds import federated_run, peer_batches, round_masks, round_rule, round_seed
from selenc.selection import decoy_key, make_mask
from selenc.settings import Params, derive_seed
from selenc.significance import ClientView, client_scores
from selenc.theory import bound, phi, significance, text_point

# A sample's distance significance depends on the model, the sample and the settings, never on the metric, ratio or
# attack of the trial: each process keeps the last MEMO_SAMPLES per model (a sweep meets every sample in many tasks).
MEMO_SAMPLES = 5
_significance_memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def sample_significance(view: ClientView, dataset: str) -> torch.Tensor:
    """`theory.significance(view)`, computed once per (model, sample, settings) in this process."""
    memo = _significance_memo.setdefault(view.victim.model, OrderedDict())
    key = (dataset, view.seed, view.update_cfg.model_dump_json(), view.cfg.model_dump_json())
    if key not in memo:
        memo[key] = significance(view)
        if len(memo) > MEMO_SAMPLES:
            memo.popitem(last=False)
    memo.move_to_end(key)
    return memo[key]


@dataclass
class Prepared:
    """A trial on the client's side, up to what it sends: its sample, mask, φ(S) and the server's view."""

    trial: Trial
    seed: int
    batch: Batch
    mask: torch.Tensor
    phi: float
    support: int  # non-zero coordinates of the update
    observed: ObservedUpdate
    seconds: float  # time spent on the client's side so far
    masks: torch.Tensor  # (R, n) every round's mask (one round: `mask`)


def prepare(trial: Trial, params: Params, victim: Victim) -> Prepared:
    """Sample -> update -> scores -> mask -> φ(S) -> the observed update (the update itself is dropped). Over several
    rounds (`rounds`): one federated run, a mask per round under the trial's policy, every message observed; φ(S) and
    the support are the first round's."""
    start = time.perf_counter()
    cfg, update_cfg = params.models[trial.arch], trial.update
    seed = derive_seed(params.study.seed, "trial", trial.arch, trial.trial, *init_tags(trial.init))
    own = client_targets(cfg.dataset, trial.trial, update_cfg.batch_size)
    batch = target_batch(victim, cfg.dataset, own)
    metric = trial.effective_metric
    if update_cfg.rounds == 1:
        update = client_update(victim, batch, update_cfg)
        masks = [_mask(trial, params, victim, batch, update, seed, [])]
        observed = observe(victim, update, masks[0], len(batch), update_cfg, metric, trial.mask_source, trial.ties)
    else:
        peers = peer_batches(victim, update_cfg)
        run = federated_run(victim, batch, peers, update_cfg)
        voters = peers if update_cfg.mask_policy == "consensus" else []

        def fresh(r: int) -> torch.Tensor:  # each round draws anew (random scores, Monte-Carlo draws, decoys)
            return _mask(trial, params, run.victims[r], batch, run.updates[r], round_seed(seed, r), voters)

        masks = round_masks(update_cfg.mask_policy, fresh, update_cfg.rounds)
        views = []
        for r, (v, u, m) in enumerate(zip(run.victims, run.updates, masks, strict=True)):
            chosen_by, source = round_rule(update_cfg.mask_policy, r, metric, trial.mask_source)
            views.append(observe(v, u, m, len(batch), update_cfg, chosen_by, source, trial.ties))
        observed, update = ObservedUpdate.of_rounds(views, run.weights), run.updates[0]
    # φ(S): the protected share of the distance-based significance (computed on the client's side, theory.md)
    s = sample_significance(ClientView(victim, batch, update, update_cfg, params.significance, seed), cfg.dataset)
    support = int(update.ne(0).sum())
    hidden = torch.stack(masks)
    seconds = time.perf_counter() - start
    return Prepared(trial, seed, batch, masks[0], phi(s, masks[0]), support, observed, seconds, hidden)


def _mask(
    trial: Trial, params: Params, victim: Victim, batch: Batch, update: torch.Tensor, seed: int, peers: list[Batch]
) -> torch.Tensor:
    """One message's mask: the trial's metric at its ratio over its mask source's scores (with `peers`: the top-k of
    the sum of the federation's clients' scores, `rounds`' consensus), scored on `victim` (that round's model)."""
    metric, update_cfg = trial.effective_metric, trial.update
    if metric in ("none", "all"):
        return torch.full((update.numel(),), metric == "all", dtype=torch.bool)
    if peers:
        source, others = "shared", peers
    else:
        clients = 1 if trial.mask_source == "own" else params.significance.shared_clients
        dataset = params.models[trial.arch].dataset
        own = client_targets(dataset, trial.trial, update_cfg.batch_size)
        others = [target_batch(victim, dataset, [i + j for i in own]) for j in range(1, clients)]
        source = trial.mask_source
    per_client = client_scores(metric, victim, [batch, *others], update_cfg, params.significance, seed)
    key = None
    if trial.ties == "decoys":  # whole token-embedding rows as decoys
        table = victim.word_embedding()
        rows = [] if table is None else [(FlatLayout.of(victim.model).span(table[0]).start, *table[1].shape)]
        key = decoy_key(update.numel(), rows, derive_seed(seed, "decoys"))
    return make_mask(per_client, trial.ratio, source, key)


def finish(prepared: Prepared, result: AttackResult, params: Params, victim: Victim) -> Outcome:
    """The attack's output scored against the true sample: reconstruction metrics, and (B1) unless
    `sweep.bound_grid` is 0."""
    start = time.perf_counter()
    batch, mask = prepared.batch, prepared.mask
    out = {
        "status": "ok",
        "device": victim.device.type,
        "seed": prepared.seed,
        "phi": prepared.phi,
        "k": int(mask.sum()),
        "n": int(mask.numel()),
        "hidden_all": int(prepared.masks.all(0).sum()),
        "hidden_total": int(prepared.masks.sum()),
        "hidden_rounds": " ".join(str(int(k)) for k in prepared.masks.sum(1)),
        "support": prepared.support,
        "attack_s": result.seconds,
    }
    if victim.modality == "image":
        out |= measured(image_scores(result.images, batch.inputs, result.labels, batch.labels))
        out["reconstruction"] = encode_images(result.images)
    else:
        ids = [
            [t for t, m in zip(seq.tolist(), am.tolist(), strict=True) if m]
            for seq, am in zip(batch.inputs, batch.attention_mask, strict=True)
        ]
        special = set(victim.tokenizer.all_special_ids)
        true_ids = [[t for t in seq if t not in special] for seq in ids]
        truth = [victim.tokenizer.decode(seq) for seq in true_ids]
        out |= measured(text_scores(result.texts, truth, result.token_ids, true_ids))
        out["label_acc"] = float((result.labels.cpu().sort().values == batch.labels.cpu().sort().values).float().mean())
        out["reconstruction"] = " || ".join(result.texts)
    # (B1) at the attack's output, on the client's side (true labels; text: only when the recovered length matches)
    x_hat = None
    if params.sweep.bound_grid:
        x_hat = result.images if victim.modality == "image" else text_point(victim, batch, result.token_ids)
    if x_hat is not None:
        grid, iters = params.sweep.bound_grid, params.sweep.bound_iters
        b1 = bound(victim, batch, prepared.trial.update, x_hat, mask, grid, iters, prepared.seed)
        out |= b1.as_row()
    out["trial_s"] = prepared.seconds + result.seconds + time.perf_counter() - start
    return Outcome(**out)


def measured(scores: dict) -> dict:
    """A metrics function's scores as row columns: every score must have its column in `Outcome` (a renamed or new
    score fails here, never vanishes); `order`, the matching of reconstructions to samples, is not a column."""
    columns = {k: v for k, v in scores.items() if k != "order"}
    unknown = sorted(set(columns) - set(Outcome.model_fields))
    if unknown:
        raise ValueError(f"scores {unknown} have no column in the results row; add them to results.Outcome")
    return columns


def failure(exc: BaseException) -> Outcome:
    """An `error` outcome naming the exception and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return Outcome(status="error", error=f"{type(exc).__name__}: {exc}{where}")


def _attack_group(group: list[Trial], params: Params, victim: Victim, uploads: dict[str, Prepared]) -> list[Outcome]:
    """Trials of one attack: prepared one by one (an upload already in `uploads` is reused), attacked together,
    finished one by one."""
    outcomes: list[Outcome | None] = [None] * len(group)
    ready: list[tuple[int, Prepared]] = []
    for i, trial in enumerate(group):
        try:
            if (shared := uploads.get(trial.upload())) is None:
                shared = uploads[trial.upload()] = prepare(trial, params, victim)
            ready.append((i, replace(shared, trial=trial)))
        except Exception as exc:  # one failing trial must not take the rest of the batch with it
            outcomes[i] = failure(exc)
    if ready:
        name = group[0].attack
        try:
            results = BATCHED[name](
                [p.observed for _, p in ready],
                victim,
                params.attacks.of(name),
                [p.trial.threat_model for _, p in ready],
                [p.seed for _, p in ready],
            )
        except Exception as exc:
            results = [exc] * len(ready)
        for (i, prepared), result in zip(ready, results, strict=True):
            try:
                if isinstance(result, Exception):
                    raise result
                outcomes[i] = finish(prepared, result, params, victim)
            except Exception as exc:
                outcomes[i] = failure(exc)
    return outcomes


def run_trials(trials: list[Trial], params: Params, victim: Victim) -> list[Outcome]:
    """A worker's batch, in order. Consecutive trials of a vectorised attack are attacked together; the others one by
    one. Trials with the same upload (`Trial.upload`: another attack or threat model on the same client message) are
    prepared once: `prepare` is deterministic, so the outcomes are those of preparing each trial on its own."""
    outcomes: list[Outcome] = []
    uploads: dict[str, Prepared] = {}
    for name, run in itertools.groupby(trials, key=lambda t: t.attack):
        run = list(run)
        groups = [run] if name in VECTORISED else [[t] for t in run]
        for group in groups:
            outcomes += _attack_group(group, params, victim, uploads)
    return outcomes
