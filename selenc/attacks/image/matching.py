"""What the image attacks share: the seeded prior, the matching objectives, the runs of a batch and how one wins.

Every (trial, restart, configuration) of a batch is one row of each vectorised call: `torch.func.vmap` over per-row
inputs, labels, targets and coordinate weights of `torch.func.grad_and_value` of the matching objective, whose inner
`torch.func.grad` is the client's update (`Matching`; a batch of one row takes plain autograd instead). A trial's
mask enters as a 0/1 weight per coordinate (mask-aware: the visible coordinates; zero-fill: every coordinate, against
the zero-filled update), so trials with different masks share a step.

`prepare_runs` builds a batch's runs (seeded inits, analytic labels where the attack fixes them, targets, weights, the
support objective), one per (trial, restart, configuration), and the prior of every trial with nothing to match;
`collect_results` picks each trial's winning candidate by `observed_distance`, the one thing the attacker can measure
of a candidate: how far the update it would produce lies from the observed update, on the compared coordinates
(never the ground truth, which it is not handed). Objectives of different configurations are not comparable; that
distance is. It shares the batch's time among its trials.
"""

from __future__ import annotations

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
    """The (trial, restart, configuration) triples of a batch that optimise, stacked: the rows of every vectorised
    call."""

    trial: list[int]  # the batch index of each run's trial
    config: list[int]  # the index of each run's configuration (an attack's list-valued knob, e.g. linear's match)
    x0: torch.Tensor  # (R, b, C, H, W) seeded initial images
    z0: torch.Tensor | None  # (R, b, K) seeded initial label logits (soft labels: DLG), else None
    labels: torch.Tensor | None  # (R, b) analytic labels (iDLG, IG, linear; DLG configured so), else None
    target: torch.Tensor  # (R, n) the zero-filled observed update
    weight: torch.Tensor  # (R, n) 1 where the attacker compares the coordinate, −1 hidden and known non-zero, else 0
    support: torch.Tensor  # (R,) bool: the run matches the support (every compared value 0), not the values
    models: torch.Tensor | None = None  # (R, rounds, n_model) each round's public global model; None: one message

    @property
    def models_dim(self) -> int | None:
        """`vmap`'s in_dim of `models` (None: one message, nothing to map)."""
        return None if self.models is None else 0


class Matching:
    """The client's update as a function of (inputs, labels) and the matching objectives, for one trial's tensors,
    and `step`, an objective's value and input gradient on the rows of a batch's runs.

    With several rows the update is written with torch.func (`gradients.batch_update`) and `step` vmaps it; with one
    row (a lone trial, one restart) it is plain autograd (`ObservedUpdate.sent` with the graph kept) and `step`
    backpropagates once through it: the same values, without the per-call cost of the functional transforms."""

    def __init__(self, victim: Victim, observed: ObservedUpdate, rows: int):
        self.functional = rows > 1
        self.rounds = observed.rounds
        self._victim, self._observed = victim, observed
        self._update = batch_update(victim, observed.public.update) if self.functional else None

    def update(self, x: torch.Tensor, y: torch.Tensor, models: torch.Tensor | None = None) -> torch.Tensor:
        """The flat update a client with inputs x and labels y (ids or probabilities) would send; over rounds, its R
        updates under `models` (the row's (R, n) global models), stacked."""
        if not self.functional:  # one row: its trial's own view
            return self._observed.sent(self._victim, Batch(x, y), create_graph=True)
        if models is None:
            return self._update(Batch(x, y))
        batch = Batch(x, y)
        return torch.func.vmap(lambda weights: self._update(batch, weights))(models).reshape(-1)

    def step(self, objective: Callable[..., torch.Tensor], in_dims: tuple) -> Callable[..., tuple]:
        """`(points (r, ...), *args) -> (input gradients, values)` of `objective(point, *row_args)` on every row;
        `in_dims` as `torch.func.vmap`'s (0: one entry per row, None: shared)."""
        if self.functional:
            return torch.func.vmap(torch.func.grad_and_value(objective), in_dims=in_dims)

        def step(points: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
            point = points[0].detach().requires_grad_()
            row = [a if a is None or d is None else a[0] for a, d in zip(args, in_dims[1:], strict=True)]
            value = objective(point, *row)
            (grad,) = torch.autograd.grad(value, point)
            return grad[None], value.detach()[None]

        return step

    def l2(self, x, y, target, weight, scale, support=None, models=None) -> torch.Tensor:
        """scale · ‖w ⊙ (g − t)‖² (over rounds: the rounds' squared distances summed), or the support objective."""
        g = self.update(x, y, models)
        value = ((g - target).square() * weight).sum() * scale
        return value if support is None else torch.where(support, self.support_share(g, weight), value)

    def cosine(self, x, y, target, weight, target_norm, tv, support=None, models=None) -> torch.Tensor:
        """1 − cos(w ⊙ g, t) + tv · TV(x); over rounds the rounds' cosine distances averaged (`target_norm` is then
        recomputed per round)."""
        full = self.update(x, y, models)
        g = full * weight
        if self.rounds == 1:
            # a sum, not a dot: vmap turns a dot into a batched product with naive float32 accumulation
            value = 1.0 - (g * target).sum() / (g.norm().clamp_min(1e-12) * target_norm.clamp_min(1e-30))
        else:
            g, t = g.view(self.rounds, -1), target.view(self.rounds, -1)
            norms = g.norm(dim=1).clamp_min(1e-12) * t.norm(dim=1).clamp_min(1e-30)
            value = (1.0 - (g * t).sum(1) / norms).mean()
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


def compared(obs: ObservedUpdate, threat_model: str, device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """What an attacker compares, from the server's view alone: the target (the zero-filled update on the compared
    coordinates), the weight per coordinate (1 compared; −1 hidden and known non-zero, under the support objective;
    0 ignored) and whether only the support can be matched (every compared value 0 but the mask shows where the
    update is non-zero)."""
    target = obs.zero_filled().to(device)
    if threat_model == "zero_fill":
        weight = torch.ones_like(target)
    else:
        weight = (~obs.mask).to(device=device, dtype=target.dtype)
    known = None
    if threat_model == "mask_aware":  # each round's mask read on its own
        views = [obs.round(r) for r in range(obs.rounds)]
        known = torch.cat([known_nonzero(v, mask_boundary(v)) for v in views]).to(device)
    support = bool(weight.any()) and not bool((target * weight).any()) and known is not None and bool(known.any())
    if support:
        weight = weight - known.to(weight.dtype)
    return target * weight.clamp_min(0), weight, support


def observed_distance(
    observed: ObservedUpdate,
    victim: Victim,
    threat_model: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    measure: str,
) -> float:
    """How far the update a candidate (images, labels) would produce lies from the observed update, on the
    coordinates `threat_model` compares: `l2` the squared distance over the target's, `cosine` 1 − cos (the attack's
    own measure); under the support objective the share of energy off the observed support. Built from the server's
    view and the public model alone: what the attacker can measure, never the client's batch."""
    device = victim.device
    target, weight, support = compared(observed, threat_model, device)
    dtype = next(victim.model.parameters()).dtype
    with torch.enable_grad():
        full = observed.sent(victim, Batch(images.to(device, dtype), labels.to(device)))
    full = full.to(target.dtype)
    if support:
        value = Matching.support_share(full, weight)
    elif measure == "cosine":  # over rounds: the rounds' cosine distances averaged, as the attack's objective
        g, t = (full * weight).view(observed.rounds, -1), target.view(observed.rounds, -1)
        value = (1.0 - (g * t).sum(1) / (g.norm(dim=1).clamp_min(1e-12) * t.norm(dim=1).clamp_min(1e-30))).mean()
    else:
        value = ((full - target).square() * weight).sum() / target.square().sum().clamp_min(1e-30)
    value = float(value)
    return value if value == value else float("inf")  # nan: the worst candidate


def prepare_runs(
    observed: list[ObservedUpdate],
    victim: Victim,
    cfg,
    threat_models: list[str],
    seeds: list[int],
    name: str,
    *,
    labels: tuple[str, ...] = ("analytic",),
    cosine: bool = False,
    configs: int = 1,
) -> tuple[Runs | None, dict[int, AttackResult]]:
    """The runs of a batch, and the prior of every trial with nothing to match (no run of its own). `name` seeds the
    inits; `labels`: how runs may take their labels, "analytic" (read from the last layer, `Runs.labels`) and "soft"
    (seeded label logits per run to optimise, `Runs.z0`); `cosine`: the objective compares directions, undefined when
    only zeros are compared and no support was read (then the prior); `configs`: runs per restart, one per
    configuration of the attack."""
    check_batch(observed, threat_models, seeds)
    info, device = observed[0].public, victim.device
    runs, priors = [], {}
    for i, (obs, tm, seed) in enumerate(zip(observed, threat_models, seeds, strict=True)):
        analytic = recover_labels(obs, victim, seed) if "analytic" in labels else None
        target, weight, support = compared(obs, tm, device)
        # nothing compared, or only zeros compared by a cosine with no support read (undefined): the prior
        blind = not bool(weight.any()) or (cosine and not support and not bool(target.any()))
        for r in range(1 if blind else cfg.restarts):
            x0 = random_images(info, seed, name, r)
            z0 = None
            if "soft" in labels:
                z0 = torch.randn((info.batch_size, info.num_classes), generator=seeded(seed, "label-init", name, r))
            if blind:
                result = AttackResult(labels=analytic if analytic is not None else z0.argmax(-1), images=x0.clamp(0, 1))
                priors[i] = result
                result.info = {"blind": True, "restart_losses": [], "batch": len(observed)}
                continue
            for c in range(configs):  # every configuration from the same init: they differ by the knob alone
                runs.append((i, c, x0, z0, analytic, target, weight, torch.tensor(support), obs.weights))
    if not runs:
        return None, priors
    cols = list(zip(*runs, strict=True))
    dtype = runs[0][5].dtype  # the update's: inits follow it (a float64 model in the theory checks)
    stacked = [
        None if col[0] is None else torch.stack(col).to(device, dtype if col[0].is_floating_point() else None)
        for col in cols[2:]
    ]
    return Runs(list(cols[0]), list(cols[1]), *stacked), priors


def collect_results(
    runs: Runs | None,
    priors: dict[int, AttackResult],
    images: torch.Tensor,
    labels: torch.Tensor,
    trace: list[torch.Tensor],
    seconds: float,
    selection: tuple[list[ObservedUpdate], Victim, list[str], str],
) -> list[AttackResult]:
    """One result per trial of the batch (its prior, or the candidate with the lowest `observed_distance`, the first
    on ties); the batch's time shared equally. `selection` is (observed, victim, threat_models, measure)."""
    observed, victim, threat_models, measure = selection
    out = dict(priors)
    size = len(priors) + (len(set(runs.trial)) if runs is not None else 0)
    members: dict[int, list[int]] = {}
    for r, trial in enumerate(runs.trial if runs is not None else []):
        members.setdefault(trial, []).append(r)
    for trial, rows in members.items():
        candidates = [torch.nan_to_num(images[r].detach().cpu(), nan=0.5).clamp(0, 1) for r in rows]
        scores = [
            observed_distance(observed[trial], victim, threat_models[trial], x, labels[r].cpu(), measure)
            for x, r in zip(candidates, rows, strict=True)
        ]
        pick = scores.index(min(scores))
        win = rows[pick]
        out[trial] = AttackResult(
            labels=labels[win].cpu(),
            images=candidates[pick],
            losses=[float(t[win]) for t in trace],
            info={
                "blind": False,
                "restart_losses": scores,
                "configs": [runs.config[r] for r in rows],
                "config": runs.config[win],
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
