"""Image gradient inversion attacks: DLG, iDLG and Inverting Gradients.

Every attack is `fn(observed, victim, cfg, threat_model, seed) -> AttackResult`. It reads the server's view only:
the observed update through `Matcher` (mask-aware or zero-fill), the public facts (`observed.public`), the visible
last-layer rows (`observed.rows`) and the model the server distributed. The client's batch never reaches it.

- `dlg` (Zhu et al., 2019): L-BFGS (strong-Wolfe line search) on the squared gradient distance, dummy image and
  dummy soft label optimised jointly (the label is softmax(logits); its update uses cross-entropy with probability
  targets); the recovered label is the argmax. The distance is divided by the constant ‖g_obs‖² (same minimiser)
  so that L-BFGS's absolute tolerances do not stop it early on a target of tiny visible values.
- `idlg` (Zhao et al., 2020): labels read analytically from the visible last-layer gradient (`recover_labels`), then
  DLG's L-BFGS with the labels fixed.
- `ig` (Geiping et al., 2020): 1 − cosine similarity + tv · total variation, Adam on the sign of the input gradient,
  step decay x0.1 at 3/8, 5/8 and 7/8 of the steps, box constraint [0, 1] (clamp after each step), analytic labels.

Every attack starts from seeded uniform noise in [0, 1] (`random_images`); restarts draw fresh seeded inits and the
lowest final objective wins (`info["restart_losses"]`). `losses` holds the objective at every evaluation of the
winning restart: per L-BFGS function evaluation (about 1.05 per iteration) for DLG / iDLG, per step for IG.
An attack with nothing to match returns its prior, the seeded init of restart 0 and its prior labels, with
`info["blind"] = True` and no losses, rather than optimise a constant: the mask-aware attacker with every coordinate
encrypted (`Matcher.blind`), and IG when every compared value is 0 (its cosine is undefined; only TV would act).
Same seed, same result (on the same device and thread count).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from selenc.attacks.base import AttackResult, Matcher, Timer
from selenc.config import derive_seed
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
    x = torch.rand((probes, *info.input_shape), generator=_generator(seed, "label-probes")).to(victim.device)
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


def _set_grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Gradients of `loss` into the attack's own tensors only (the model's .grad is never touched)."""
    for t, g in zip(tensors, torch.autograd.grad(loss, tensors), strict=True):
        t.grad = g


def _prior_result(x0: torch.Tensor, labels: torch.Tensor) -> AttackResult:
    """What a blind attacker returns: its seeded init and prior labels, no optimisation."""
    return AttackResult(labels=labels, images=x0.clamp(0, 1), info={"blind": True, "restart_losses": []})


def _best_of(runs: list[tuple[torch.Tensor, torch.Tensor, list[float], float]]) -> AttackResult:
    """The restart with the lowest final objective (non-finite counts as +inf; the first wins ties)."""
    finals = [f if math.isfinite(f) else math.inf for *_, f in runs]
    x, labels, losses, _ = runs[finals.index(min(finals))]
    images = torch.nan_to_num(x, nan=0.5).clamp(0, 1)
    return AttackResult(labels=labels, images=images, losses=losses, info={"blind": False, "restart_losses": finals})


def _timed(run: Callable[[], AttackResult]) -> AttackResult:
    with Timer() as timer:
        result = run()
    result.seconds = timer.seconds
    return result


# --- DLG / iDLG -----------------------------------------------------------------------------------------------
def _lbfgs(
    matcher: Matcher, x0: torch.Tensor, cfg, label_logits: torch.Tensor | None, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, list[float], float]:
    """One L-BFGS run of `cfg.steps` iterations on ‖g(x, y) − g_obs‖² / ‖g_obs‖², over soft labels softmax(z) too
    when `label_logits` z is given. Returns (x, labels, objective per evaluation, final objective).

    The constant 1 / ‖g_obs‖² leaves DLG's minimiser unchanged but makes L-BFGS's absolute stopping tolerances
    scale-free: without it a target made of tiny values (the visible coordinates left by a magnitude mask) stops the
    optimiser at its first iteration, which would read as protection.
    """
    device = matcher.victim.device
    norm = float(matcher.target.square().sum())
    scale = 1.0 / norm if norm > 0 else 1.0
    x = x0.to(device).clone().requires_grad_()
    leaves = [x]
    if label_logits is not None:
        z = label_logits.to(device).clone().requires_grad_()
        leaves.append(z)
    # One call runs every iteration: stepping a max_iter=1 optimiser would re-evaluate the closure at each call and
    # leave its line search no evaluations (max_eval − current_evals = 0), which stalls it.
    opt = torch.optim.LBFGS(
        leaves,
        lr=cfg.lr,
        max_iter=cfg.steps,
        max_eval=cfg.steps * 5 // 4,
        history_size=100,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
    )

    def target() -> torch.Tensor:
        return z.softmax(-1) if label_logits is not None else labels.to(device)

    losses: list[float] = []

    def closure() -> torch.Tensor:
        loss = matcher.l2(Batch(x, target())) * scale
        _set_grads(loss, leaves)
        losses.append(float(loss.detach()))
        return loss

    opt.step(closure)
    final = float(matcher.l2(Batch(x, target())).detach()) * scale
    y = z.detach().argmax(-1).cpu() if label_logits is not None else labels
    return x.detach().cpu(), y, losses, final


def _dlg_family(observed: ObservedUpdate, victim: Victim, cfg, threat_model: str, seed: int, name: str):
    """DLG (joint soft labels) or iDLG (analytic labels, fixed), over seeded restarts."""
    info = observed.public
    matcher = Matcher(observed, victim, threat_model)
    fixed = recover_labels(observed, victim, seed) if name == "idlg" else None
    runs = []
    for r in range(cfg.restarts):
        x0 = random_images(info, seed, name, r)
        logits0 = None
        if fixed is None:
            logits0 = torch.randn(
                (info.batch_size, info.num_classes), generator=_generator(seed, "label-init", name, r)
            )
        if matcher.blind:  # nothing to match: the prior of restart 0
            return _prior_result(x0, fixed if fixed is not None else logits0.argmax(-1))
        runs.append(_lbfgs(matcher, x0, cfg, logits0, fixed))
    return _best_of(runs)


def dlg(observed: ObservedUpdate, victim: Victim, cfg, threat_model: str, seed: int) -> AttackResult:
    """DLG: L-BFGS on the squared gradient distance over dummy images and soft labels jointly."""
    return _timed(lambda: _dlg_family(observed, victim, cfg, threat_model, seed, "dlg"))


def idlg(observed: ObservedUpdate, victim: Victim, cfg, threat_model: str, seed: int) -> AttackResult:
    """iDLG: analytic labels from the visible last-layer gradient, then DLG's L-BFGS with the labels fixed."""
    return _timed(lambda: _dlg_family(observed, victim, cfg, threat_model, seed, "idlg"))


# --- Inverting Gradients --------------------------------------------------------------------------------------
def ig_objective(matcher: Matcher, x: torch.Tensor, labels: torch.Tensor, tv: float) -> torch.Tensor:
    """IG's objective: 1 − cos(g(x, y), g_obs) + tv · TV(x)."""
    return matcher.cosine(Batch(x, labels)) + tv * total_variation(x)


def _signed_adam(
    matcher: Matcher, x0: torch.Tensor, labels: torch.Tensor, cfg
) -> tuple[torch.Tensor, torch.Tensor, list[float], float]:
    """One IG run: Adam fed the sign of the input gradient, lr x0.1 at 3/8, 5/8, 7/8 of the steps, x kept in [0, 1]."""
    device = matcher.victim.device
    y = labels.to(device)
    x = x0.to(device).clone().requires_grad_()
    opt = torch.optim.Adam([x], lr=cfg.lr)
    milestones = [round(cfg.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    losses: list[float] = []
    for _ in range(cfg.steps):
        loss = ig_objective(matcher, x, y, cfg.tv)
        (grad,) = torch.autograd.grad(loss, [x])
        x.grad = grad.sign()
        opt.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        losses.append(float(loss.detach()))
    final = float(ig_objective(matcher, x, y, cfg.tv).detach())
    return x.detach().cpu(), labels, losses, final


def _ig(observed: ObservedUpdate, victim: Victim, cfg, threat_model: str, seed: int) -> AttackResult:
    info = observed.public
    matcher = Matcher(observed, victim, threat_model)
    labels = recover_labels(observed, victim, seed)
    runs = []
    for r in range(cfg.restarts):
        x0 = random_images(info, seed, "ig", r)
        if matcher.blind or not matcher.target.any():  # no signal (the cosine is undefined): the prior of restart 0
            return _prior_result(x0, labels)
        runs.append(_signed_adam(matcher, x0, labels, cfg))
    return _best_of(runs)


def inverting_gradients(observed: ObservedUpdate, victim: Victim, cfg, threat_model: str, seed: int) -> AttackResult:
    """Inverting Gradients: cosine distance + tv·TV, signed Adam with step decay, box [0, 1], analytic labels."""
    return _timed(lambda: _ig(observed, victim, cfg, threat_model, seed))


ATTACKS: dict[str, Callable] = {"dlg": dlg, "idlg": idlg, "ig": inverting_gradients}
