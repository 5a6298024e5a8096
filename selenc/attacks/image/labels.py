"""Labels read from the last layer: what the classifier's visible gradient rows say about the client's labels.

Used by every image attack that fixes its labels before optimising (iDLG, IG, the linear-layer inversion); DLG
optimises its labels instead.
"""

from __future__ import annotations

import math

import torch

from selenc.attacks.base import seeded
from selenc.models import Victim
from selenc.observed import ObservedUpdate, PublicInfo


def last_layer(observed: ObservedUpdate, num_classes: int) -> tuple[str, str | None]:
    """Names of the classifier's weight (num_classes, d) and bias (num_classes,): the last such pair in the layout."""
    names, shapes = observed.layout.names, observed.layout.shapes
    for k in range(len(names) - 1, -1, -1):
        if len(shapes[k]) == 2 and shapes[k][0] == num_classes:
            bias = names[k + 1] if k + 1 < len(names) and shapes[k + 1] == (num_classes,) else None
            return names[k], bias
    raise ValueError(f"no last linear layer with {num_classes} output rows in the layout")


def prior_response(victim: Victim, info: PublicInfo, weight: str, seed: int, probes: int) -> tuple:
    """The model's mean softmax (K,) and mean last-layer input (d,) over `probes` seeded uniform-noise images: the
    attacker's estimate of the batch's predictions and features (Geng et al. 2021)."""
    layer = victim.model.get_submodule(weight.rsplit(".", 1)[0])
    dtype = next(victim.model.parameters()).dtype
    x = torch.rand((probes, *info.input_shape), generator=seeded(seed, "label-probes")).to(victim.device, dtype)
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

    Over rounds (the same batch every round) the labels are read from the round that shows the most of the last layer,
    under that round's global model.
    """
    if observed.rounds > 1:
        weight, bias = last_layer(observed.round(0), observed.public.num_classes)
        names = [weight] if bias is None else [weight, bias]
        spans = [observed.layout.span(name) for name in names]
        views = [observed.round(r) for r in range(observed.rounds)]
        shown = [sum(int((~v.mask[span]).sum()) for span in spans) for v in views]
        best = shown.index(max(shown))
        return recover_labels(views[best], observed.victim_at(victim, best), seed, probes)
    info = observed.public
    num_classes, batch = info.num_classes, info.batch_size
    weight, bias = last_layer(observed, num_classes)
    shape = observed.layout.shapes[observed.layout.names.index(weight)]
    values, seen = observed.rows(weight, shape)
    values, seen = values.double().cpu(), seen.cpu()
    if info.update.kind != "fedsgd":
        values = values / (info.update.local_lr * info.update.local_steps)
    inf = torch.tensor(math.inf, dtype=values.dtype)
    lowest = torch.where(seen, values, inf).amin(1)
    highest = torch.where(seen, values, -inf).amax(1)
    p_bar, h_bar = prior_response(victim, info, weight, seed, probes)
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
    order = torch.randperm(num_classes, generator=seeded(seed, "label-ties"))
    by_evidence = order[torch.sort(lowest[order], stable=True).indices]
    labels = [int(c) for c in by_evidence if present[c]][:batch]
    residual = counts - present.double()
    for _ in range(batch - len(labels)):
        c = int(order[torch.sort(-residual[order], stable=True).indices[0]])
        labels.append(c)
        residual[c] -= 1.0
    return torch.tensor(labels, dtype=torch.long)
