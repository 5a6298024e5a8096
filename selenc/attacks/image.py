"""Image gradient inversion attacks: DLG, iDLG and Inverting Gradients, each run on a batch of independent trials.

`BATCHED[name](observed, victim, cfg, threat_models, seeds) -> [AttackResult]` attacks a batch of trials (one model;
each trial its own observed update, mask, threat model, seed and restarts) as one vectorised optimisation, and
`ATTACKS[name](observed, victim, cfg, threat_model, seed) -> AttackResult` is the same code on a batch of one. An
attack reads the server's view only: the visible values and the mask (`ObservedUpdate`), the public facts, the visible
last-layer rows (`observed.rows`) and the model the server distributed. The client's batch never reaches it.

Every (trial, restart) of a batch is one row of each vectorised call: `torch.func.vmap` over per-row inputs, labels,
targets and coordinate weights of `torch.func.grad_and_value` of the matching objective, whose inner `torch.func.grad`
is the client's update (`Matching`). A trial's mask enters as a 0/1 weight per coordinate (mask-aware: the visible
coordinates; zero-fill: every coordinate, against the zero-filled update), so trials with different masks share a step.
Batch-1 attacks are kernel-launch bound; batching is what fills a GPU, and it pays on two CPU cores too.

- `dlg` (Zhu et al., 2019): L-BFGS (`lbfgs`: per-trial curvature pairs, own backtracking line search per row) on
  ‖w ⊙ (g(x, y) − t)‖² / ‖w ⊙ t‖², dummy image and soft label softmax(z) optimised jointly; the recovered label is
  the argmax. Dividing by the constant ‖w ⊙ t‖² leaves the minimiser unchanged and makes the optimiser's steps
  scale-free on a target of tiny visible values.
- `idlg` (Zhao et al., 2020): labels read analytically from the visible last-layer gradient (`recover_labels`), then
  DLG's L-BFGS with the labels fixed.
- `ig` (Geiping et al., 2020): 1 − cos(w ⊙ g(x, y), t) + tv · total variation, Adam on the sign of the input gradient,
  step decay x0.1 at 3/8, 5/8 and 7/8 of the steps, box constraint [0, 1] (clamp after each step), analytic labels.
  Adam is elementwise, so one Adam over the stacked inputs is every trial's own Adam.

Every attack starts from seeded uniform noise in [0, 1] (`random_images`); restarts draw fresh seeded inits and the
lowest final objective wins (`info["restart_losses"]`). `losses` holds the winning restart's objective after every
iteration.

**Visible zeros and the mask** (mask-aware). When every visible value is 0 but the mask shows hidden coordinates to be
non-zero (`base.mask_boundary`: a support-revealing metric whose budget exceeded the update's support, e.g. magnitude
at ρ ≥ 0.5 on the ReLU CNN), the update still carries its support: which units were active. Those trials match it
instead (`info["objective"] = "support"`): the share of the dummy update's energy on coordinates seen to be zero,
Σ_visible g² / (Σ_visible g² + Σ_known g²), scale-free and 0 exactly when the dummy's support matches; DLG and iDLG
minimise it alone, IG adds its TV term. An attack with nothing to match returns its prior, the seeded init of
restart 0 and its prior labels, with `info["blind"] = True` and no losses, rather than optimise a constant: the
mask-aware attacker with every coordinate encrypted, or with only zeros visible and no support to read (IG's cosine
with a zero target is undefined), and zero_fill IG on an all-zero view. `seconds` is the batch's
wall time shared equally among its trials; `info["batch"]` says how many there were. Same seeds, same result (on the
same device and thread count), whatever else shares the batch, up to float round-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from selenc.attacks.base import AttackResult, Timer, known_nonzero, mask_boundary, one_trial
from selenc.attacks.lbfgs import Objective, lbfgs
from selenc.config import THREAT_MODELS, derive_seed
from selenc.gradients import batch_update
from selenc.models import Batch, Victim
from selenc.observed import ObservedUpdate, PublicInfo


# --- shared pieces --------------------------------------------------------------------------------------------
def _generator(seed: int, *tags: str | int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *tags))


def random_images(info: PublicInfo, seed: int, *tags: str | int) -> torch.Tensor:
    """The seeded prior of an image attack: uniform noise in [0, 1] of shape (B, C, H, W), on the CPU."""
    return torch.rand((info.batch_size, *info.input_shape), generator=_generator(seed, "init", *tags))


def _last_layer(observed: ObservedUpdate, num_classes: int) -> tuple[str, str | None]:
    """Names of the classifier's weight (num_classes, d) and bias (num_classes,): the last such pair in the layout."""
    names, shapes = observed.layout.names, observed.layout.shapes
    for k in range(len(names) - 1, -1, -1):
        if len(shapes[k]) == 2 and shapes[k][0] == num_classes:
            bias = names[k + 1] if k + 1 < len(names) and shapes[k + 1] == (num_classes,) else None
            return names[k], bias
    raise ValueError(f"no last linear layer with {num_classes} output rows in the layout")


def _prior_response(victim: Victim, info: PublicInfo, weight: str, seed: int, probes: int) -> tuple:
    """The model's mean softmax (K,) and mean last-layer input (d,) over `probes` seeded uniform-noise images: the
    attacker's estimate of the batch's predictions and features (Geng et al. 2021)."""
    layer = victim.model.get_submodule(weight.rsplit(".", 1)[0])
    dtype = next(victim.model.parameters()).dtype
    x = torch.rand((probes, *info.input_shape), generator=_generator(seed, "label-probes")).to(victim.device, dtype)
    seen: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            probs = victim.model(x).softmax(-1).mean(0)
    finally:
        hook.remove()
    return probs.double().cpu(), seen[0].flatten(1).mean(0).double().cpu()


def recover_labels(observed: ObservedUpdate, victim: Victim, seed: int, probes: int = 64) -> torch.Tensor:
    """Analytic labels (B,) from the VISIBLE coordinates of the last linear layer's gradient.

    With non-negative features h (sigmoid, ReLU) the weight-gradient row of class c is (1/B) Σ_i (p_ic − y_ic) h_i
    and its bias gradient (1/B) Σ_i (p_ic − y_ic). So a visible negative entry proves c is in the batch (absent
    classes have rows ≥ 0); with batch 1 a visible positive entry proves c absent. That is iDLG's rule, and with
    batch 1 it finds the label by elimination even when the label's own row is encrypted.

    Batch B > 1 (heuristic): the classes proven present come first (most negative entry first); the remaining slots
    go, one at a time, to the class with the largest estimated count still unassigned. The count estimate is Geng et
    al.'s n_c ≈ B·(p̄_c − g_b[c]) from the visible bias gradient, with p̄ the model's mean softmax over seeded noise
    images (exact when p̄ equals the batch's mean prediction), or B·(p̄_c − Σ g_W[c, j] / Σ h̄_j) over the visible
    entries of the row when the bias is hidden; a class with nothing visible counts 0.5 (unknown). Ties, as when
    everything is encrypted (the prior), are broken by a seeded random order. FedAvg updates θ_0 − θ_k are divided
    by local_lr·local_steps (first order). Repeated labels are estimated, never proven.
    """
    info = observed.public
    num_classes, batch = info.num_classes, info.batch_size
    weight, bias = _last_layer(observed, num_classes)
    shape = observed.layout.shapes[observed.layout.names.index(weight)]
    values, seen = observed.rows(weight, shape)
    values, seen = values.double().cpu(), seen.cpu()
    if info.update.kind != "fedsgd":
        values = values / (info.update.local_lr * info.update.local_steps)
    inf = torch.tensor(math.inf, dtype=values.dtype)
    lowest = torch.where(seen, values, inf).amin(1)
    highest = torch.where(seen, values, -inf).amax(1)
    p_bar, h_bar = _prior_response(victim, info, weight, seed, probes)
    row_mass = (seen * h_bar).sum(1)
    counts = torch.where(row_mass > 0, batch * (p_bar - (values * seen).sum(1) / row_mass.clamp_min(1e-12)), 0.5)
    if bias is not None:
        b, b_seen = observed.rows(bias, (num_classes,))
        b, b_seen = b.double().cpu(), b_seen.cpu()
        if info.update.kind != "fedsgd":
            b = b / (info.update.local_lr * info.update.local_steps)
        lowest = torch.minimum(lowest, torch.where(b_seen, b, inf))
        highest = torch.maximum(highest, torch.where(b_seen, b, -inf))
        counts = torch.where(b_seen, batch * (p_bar - b), counts)
    present = lowest < 0
    if batch == 1:
        counts = torch.where(highest > 0, -inf, counts)
    # a seeded random order breaks ties (stable sorts keep it among equal keys)
    order = torch.randperm(num_classes, generator=_generator(seed, "label-ties"))
    by_evidence = order[torch.sort(lowest[order], stable=True).indices]
    labels = [int(c) for c in by_evidence if present[c]][:batch]
    residual = counts - present.double()
    for _ in range(batch - len(labels)):
        c = int(order[torch.sort(-residual[order], stable=True).indices[0]])
        labels.append(c)
        residual[c] -= 1.0
    return torch.tensor(labels, dtype=torch.long)


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


def _check(observed: list[ObservedUpdate], threat_models: list[str], seeds: list[int]) -> None:
    if not (len(observed) == len(threat_models) == len(seeds)) or not observed:
        raise ValueError("a batch needs one observed update, threat model and seed per trial, and at least one trial")
    for tm in threat_models:
        if tm not in THREAT_MODELS:
            raise ValueError(f"unknown threat model {tm!r}; allowed: {', '.join(THREAT_MODELS)}")
    first = observed[0]
    for o in observed[1:]:
        if o.public.model_facts != first.public.model_facts or o.layout != first.layout:
            raise ValueError("every trial of a batch must share the model, the batch size and the update rule")


def _runs(
    observed: list[ObservedUpdate], victim: Victim, cfg, threat_models: list[str], seeds: list[int], name: str
) -> tuple[Runs | None, dict[int, AttackResult]]:
    """The runs of a batch, and the prior of every trial with nothing to match (no run of its own)."""
    _check(observed, threat_models, seeds)
    info, device = observed[0].public, victim.device
    runs, priors = [], {}
    for i, (obs, tm, seed) in enumerate(zip(observed, threat_models, seeds, strict=True)):
        labels = None if name == "dlg" else recover_labels(obs, victim, seed)
        target = obs.zero_filled().to(device)
        weight = torch.ones_like(target) if tm == "zero_fill" else (~obs.mask).to(device=device, dtype=target.dtype)
        known = known_nonzero(obs, mask_boundary(obs)).to(device) if tm == "mask_aware" else None
        # only zeros visible, but the mask shows where the update is non-zero: match that support
        support = bool(weight.any()) and not bool((target * weight).any()) and known is not None and bool(known.any())
        if support:
            weight = weight - known.to(weight.dtype)
        # nothing compared, or (IG) only zeros compared and no support read, whose cosine is undefined: the prior
        blind = not bool(weight.any()) or (name == "ig" and not support and not bool((target * weight).any()))
        for r in range(1 if blind else cfg.restarts):
            x0 = random_images(info, seed, name, r)
            z0 = None
            if labels is None:
                z0 = torch.randn((info.batch_size, info.num_classes), generator=_generator(seed, "label-init", name, r))
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


def _results(
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


# --- DLG / iDLG ----------------------------------------------------------------------------------------------
def _dlg_family(
    observed: list[ObservedUpdate], victim: Victim, cfg, threat_models: list[str], seeds: list[int], name: str
) -> list[AttackResult]:
    with Timer() as timer:
        runs, priors = _runs(observed, victim, cfg, threat_models, seeds, name)
        finals = images = labels = None
        trace: list[torch.Tensor] = []
        if runs is not None:
            matching = Matching(victim, observed[0])
            rows, shape = len(runs.trial), runs.x0.shape[1:]
            dx = math.prod(shape)
            norm = (runs.weight * runs.target).square().sum(1)
            scale = torch.where(norm > 0, 1.0 / norm, torch.ones_like(norm))
            fixed = runs.labels if runs.labels is not None else torch.zeros(rows, dtype=torch.long, device=norm.device)
            support = runs.support if bool(runs.support.any()) else None  # no support run: the plain objective

            def one(p: torch.Tensor, target, weight, s, y_fixed, by_support) -> torch.Tensor:
                x = p[:dx].view(shape)
                y = p[dx:].view(runs.z0.shape[1:]).softmax(-1) if runs.z0 is not None else y_fixed
                return matching.l2(x, y, target, weight, s, by_support)

            step = torch.func.vmap(
                torch.func.grad_and_value(one), in_dims=(0, 0, 0, 0, 0, None if support is None else 0)
            )

            objective = row_objective(step, (runs.target, runs.weight, scale, fixed, support))
            start = runs.x0.reshape(rows, -1)
            if runs.z0 is not None:
                start = torch.cat([start, runs.z0.reshape(rows, -1)], 1)
            p, finals, trace = lbfgs(objective, start, cfg.steps, lr=cfg.lr)
            images = p[:, :dx].view(rows, *shape)
            labels = p[:, dx:].view(runs.z0.shape).argmax(-1) if runs.z0 is not None else runs.labels
    return _results(runs, priors, finals, images, labels, trace, timer.seconds)


def dlg_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """DLG on a batch of trials: L-BFGS over dummy images and soft labels jointly."""
    return _dlg_family(observed, victim, cfg, threat_models, seeds, "dlg")


def idlg_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """iDLG on a batch of trials: analytic labels from each trial's visible last layer, then L-BFGS on the images."""
    return _dlg_family(observed, victim, cfg, threat_models, seeds, "idlg")


# --- Inverting Gradients --------------------------------------------------------------------------------------
def ig_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """Inverting Gradients on a batch of trials: cosine + tv·TV, signed Adam with step decay, box [0, 1]."""
    with Timer() as timer:
        runs, priors = _runs(observed, victim, cfg, threat_models, seeds, "ig")
        finals = x = None
        trace: list[torch.Tensor] = []
        if runs is not None:
            matching = Matching(victim, observed[0])
            norms = runs.target.norm(dim=1)
            support = runs.support if bool(runs.support.any()) else None  # no support run: the plain objective
            step = torch.func.vmap(
                torch.func.grad_and_value(lambda x, y, t, w, n, s: matching.cosine(x, y, t, w, n, cfg.tv, s)),
                in_dims=(0, 0, 0, 0, 0, None if support is None else 0),
            )
            x, finals, trace = signed_adam(
                step, runs.x0, (runs.labels, runs.target, runs.weight, norms, support), cfg.steps, cfg.lr
            )
    return _results(runs, priors, finals, x, None if runs is None else runs.labels, trace, timer.seconds)


def signed_adam(
    step: Callable[..., tuple[torch.Tensor, torch.Tensor]], x0: torch.Tensor, args: tuple, steps: int, lr: float
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """IG's optimiser on stacked runs: Adam on the sign of `step(x, *args)`'s input gradient, lr x0.1 at 3/8, 5/8
    and 7/8 of the steps, box [0, 1] after each step. Returns the final inputs, their objective and the trace."""
    x = x0.clone().requires_grad_()
    opt = torch.optim.Adam([x], lr=lr)
    milestones = [round(steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    trace = []
    for _ in range(steps):
        grad, value = step(x.detach(), *args)
        x.grad = grad.sign()
        opt.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        trace.append(value.detach())
    _, finals = step(x.detach(), *args)
    return x.detach(), finals.detach(), trace


BATCHED: dict[str, Callable[..., list[AttackResult]]] = {"dlg": dlg_batch, "idlg": idlg_batch, "ig": ig_batch}


ATTACKS: dict[str, Callable[..., AttackResult]] = {name: one_trial(fn) for name, fn in BATCHED.items()}
