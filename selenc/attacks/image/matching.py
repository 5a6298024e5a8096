"""What the image attacks share: the seeded prior, the matching objectives, and the (trial, restart) runs of a batch.

Every (trial, restart) of a batch is one row of each vectorised call: `torch.func.vmap` over per-row inputs, labels,
targets and coordinate weights of `torch.func.grad_and_value` of the matching objective, whose inner `torch.func.grad`
is the client's update (`Matching`). A trial's mask enters as a 0/1 weight per coordinate (mask-aware: the visible
coordinates; zero-fill: every coordinate, against the zero-filled update), so trials with different masks share a step.

`prepare_runs` builds a batch's runs (seeded inits, analytic labels where the attack fixes them, targets, weights, the
support objective) and the prior of every trial with nothing to match; `collect_results` picks each trial's winning
restart by the lowest final objective (what the attacker measures) and shares the batch's time among its trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from selenc.attacks.base import AttackResult, known_nonzero, mask_boundary, seeded
from selenc.attacks.image.labels import recover_labels
from selenc.attacks.lbfgs import Objective
from selenc.gradients import batch_update
from selenc.models import Batch, Victim
from selenc.observed import ObservedUpdate, PublicInfo
from selenc.settings import THREAT_MODELS


def random_images(info: PublicInfo, seed: int, *tags: str | int) -> torch.Tensor:
    """The seeded prior of an image attack: uniform noise in [0, 1] of shape (B, C, H, W), on the CPU."""
    return torch.rand((info.batch_size, *info.input_shape), generator=seeded(seed, "init", *tags))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (IG's TV, anisotropic)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


@dataclass(frozen=True)
class Runs:
    """The (trial, restart) pairs of a batch that optimise, stacked: the rows of every vectorised call."""

    trial: list[int]  # the batch index of each run's trial
    x0: torch.Tensor  # (R, b, C, H, W) seeded initial images
    z0: torch.Tensor | None  # (R, b, K) seeded initial label logits (DLG), else None
    labels: torch.Tensor | None  # (R, b) analytic labels (iDLG, IG), else None
    target: torch.Tensor  # (R, n) the zero-filled observed update
    weight: torch.Tensor  # (R, n) 1 where the attacker compares the coordinate, −1 hidden and known non-zero, else 0
    support: torch.Tensor  # (R,) bool: the run matches the support (every compared value 0), not the values

    def best(self, finals: torch.Tensor) -> dict[int, tuple[int, list[float]]]:
        """Per trial: its winning run (lowest final objective; non-finite is +inf, the first wins ties) and every
        restart's final objective."""
        values = [float(v) if math.isfinite(float(v)) else math.inf for v in finals]
        members: dict[int, list[int]] = {}
        for r, trial in enumerate(self.trial):
            members.setdefault(trial, []).append(r)
        out = {}
        for trial, rows in members.items():
            scores = [values[r] for r in rows]
            out[trial] = (rows[scores.index(min(scores))], scores)
        return out


class Matching:
    """The client's update as a function of (inputs, labels) and the matching objectives, for one trial's tensors;
    vmapped over runs by the attacks."""

    def __init__(self, victim: Victim, observed: ObservedUpdate):
        self._update = batch_update(victim, observed.public.update)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The flat update a client with inputs x and labels y (ids or probabilities) would send."""
        return self._update(Batch(x, y))

    def l2(self, x, y, target, weight, scale, support=None) -> torch.Tensor:
        g = self.update(x, y)
        value = ((g - target).square() * weight).sum() * scale
        return value if support is None else torch.where(support, self.support_share(g, weight), value)

    def cosine(self, x, y, target, weight, target_norm, tv: float, support=None) -> torch.Tensor:
        full = self.update(x, y)
        g = full * weight
        # a sum, not a dot: vmap turns a dot into a batched product with naive float32 accumulation
        value = 1.0 - (g * target).sum() / (g.norm().clamp_min(1e-12) * target_norm.clamp_min(1e-30))
        if support is not None:
            value = torch.where(support, self.support_share(full, weight), value)
        return value + tv * total_variation(x)

    @staticmethod
    def support_share(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The share of g's energy on the coordinates seen to be zero (weight 1) among those and the coordinates known
        to be non-zero (weight −1): 0 when g's support is the observed one."""
        energy = g.square()
        return (energy * weight.clamp_min(0)).sum() / (energy * weight.abs()).sum().clamp_min(1e-30)


def check_batch(observed: list[ObservedUpdate], threat_models: list[str], seeds: list[int]) -> None:
    if not (len(observed) == len(threat_models) == len(seeds)) or not observed:
        raise ValueError("a batch needs one observed update, threat model and seed per trial, and at least one trial")
    for tm in threat_models:
        if tm not in THREAT_MODELS:
            raise ValueError(f"unknown threat model {tm!r}; allowed: {', '.join(THREAT_MODELS)}")
    first = observed[0]
    for o in observed[1:]:
        if o.public.model_facts != first.public.model_facts or o.layout != first.layout:
            raise ValueError("every trial of a batch must share the model, the batch size and the update rule")


def prepare_runs(
    observed: list[ObservedUpdate],
    victim: Victim,
    cfg,
    threat_models: list[str],
    seeds: list[int],
    name: str,
    *,
    optimise_labels: bool = False,
    cosine: bool = False,
) -> tuple[Runs | None, dict[int, AttackResult]]:
    """The runs of a batch, and the prior of every trial with nothing to match (no run of its own). `name` seeds the
    inits; `optimise_labels`: seeded label logits per run (DLG) instead of the analytic labels; `cosine`: the objective
    compares directions, undefined when only zeros are compared and no support was read (then the prior)."""
    check_batch(observed, threat_models, seeds)
    info, device = observed[0].public, victim.device
    runs, priors = [], {}
    for i, (obs, tm, seed) in enumerate(zip(observed, threat_models, seeds, strict=True)):
        labels = None if optimise_labels else recover_labels(obs, victim, seed)
        target = obs.zero_filled().to(device)
        weight = torch.ones_like(target) if tm == "zero_fill" else (~obs.mask).to(device=device, dtype=target.dtype)
        known = known_nonzero(obs, mask_boundary(obs)).to(device) if tm == "mask_aware" else None
        # only zeros visible, but the mask shows where the update is non-zero: match that support
        support = bool(weight.any()) and not bool((target * weight).any()) and known is not None and bool(known.any())
        if support:
            weight = weight - known.to(weight.dtype)
        # nothing compared, or only zeros compared by a cosine with no support read (undefined): the prior
        blind = not bool(weight.any()) or (cosine and not support and not bool((target * weight).any()))
        for r in range(1 if blind else cfg.restarts):
            x0 = random_images(info, seed, name, r)
            z0 = None
            if labels is None:
                z0 = torch.randn((info.batch_size, info.num_classes), generator=seeded(seed, "label-init", name, r))
            if blind:
                result = AttackResult(labels=labels if labels is not None else z0.argmax(-1), images=x0.clamp(0, 1))
                priors[i] = result
                result.info = {"blind": True, "restart_losses": [], "batch": len(observed)}
                continue
            runs.append((i, x0, z0, labels, target * weight.clamp_min(0), weight, torch.tensor(support)))
    if not runs:
        return None, priors
    cols = list(zip(*runs, strict=True))
    dtype = runs[0][4].dtype  # the update's: inits follow it (a float64 model in the theory checks)
    stacked = [
        None if col[0] is None else torch.stack(col).to(device, dtype if col[0].is_floating_point() else None)
        for col in cols[1:]
    ]
    return Runs(list(cols[0]), *stacked), priors


def collect_results(
    runs: Runs | None,
    priors: dict[int, AttackResult],
    finals: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    trace: list[torch.Tensor],
    seconds: float,
) -> list[AttackResult]:
    """One result per trial of the batch (its winning restart, or its prior); the batch's time shared equally."""
    out = dict(priors)
    size = len(priors) + (len(set(runs.trial)) if runs is not None else 0)
    for trial, (win, scores) in (runs.best(finals) if runs is not None else {}).items():
        out[trial] = AttackResult(
            labels=labels[win].cpu(),
            images=torch.nan_to_num(images[win].detach().cpu(), nan=0.5).clamp(0, 1),
            losses=[float(t[win]) for t in trace],
            info={
                "blind": False,
                "restart_losses": scores,
                "batch": size,
                "objective": "support" if bool(runs.support[win]) else "values",
            },
        )
    for result in out.values():
        result.seconds = seconds / size
    return [out[i] for i in range(size)]


def row_objective(step: Callable[..., tuple[torch.Tensor, torch.Tensor]], args: tuple) -> Objective:
    """`lbfgs`'s objective from a vmapped `step(points, *args) -> (gradients, values)` whose per-run `args` (None:
    shared) are indexed by the rows the call evaluates."""
    rows = len(args[0])

    def objective(points: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        whole = len(idx) == rows  # every row: no copies of the targets
        grad, value = step(points, *(args if whole else (a if a is None else a[idx] for a in args)))
        return value.detach(), grad.detach()

    return objective
