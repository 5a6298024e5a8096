"""Linear-layer inversion: the classifier's input features read analytically from its gradient rows, then the image.

For the last linear layer y = W h + b of a client with one sample, ∂L/∂W = δ hᵀ and ∂L/∂b = δ (δ = ∂L/∂y), so
h = ∂W[c, :] / ∂b[c] for any class c with ∂b[c] ≠ 0: the features the layer saw, exactly, from one layer's
plaintext rows (Phong et al. 2017; the first step of R-GAP, SPEAR and CPA). A FedAvg update θ₀ − θ_k scales every row
by the same factor, which the ratio cancels (exact for one local step, first order beyond).

**Step 1, reading (mask-aware).** The rows [∂W | ∂b] form the rank-1 matrix δ [h; 1]ᵀ. The attacker fits a rank-1
matrix to the VISIBLE entries only (alternating least squares, float64), over the rows linked to each other through
shared visible columns (one connected block; a feature is known when some row of that block shows it):

- `exact`: the block holds a visible non-zero bias entry, which fixes the scale: h = v[:d] / v[d], exact at batch 1;
- `direction`: every bias entry of the block is hidden: h is known up to scale. Sigmoid and ReLU features are
  non-negative (checked on the model's response to seeded noise), which fixes the sign; the image step then matches
  the direction (cosine);
- `none`: nothing of the layer is visible (or only zeros): no features.

With batch B > 1 the rows mix the samples: row c is (1/B) Σ_i δ_ic h_i, of rank up to B, and no single row or ratio
is any sample's features (SPEAR and CPA separate them under extra assumptions; not done here). The attacker then
reads, for each sample, the row of its analytic label (`labels.recover_labels`) as above, scaled by that row's bias
when visible: a δ-weighted mix dominated by that sample when its label is unique in the batch, never exact
(`info["features"] = "mixed"`). Zero-fill reads hidden entries as 0 and takes them at face value, as the other
attacks' zero_fill does.

**Step 2, the image.** An optimisation over the stacked (trial, restart, match weight) runs, one vectorised objective
per call (`torch.func`, as in `matching`), minimising per run

    feature term + match · gradient distance + TV term,

where the feature term is ‖f(x) − h‖² / ‖h‖² over the known features when the scale is known, else 1 − cos over
them (f(x): the input of the last linear layer, from the victim's own forward), averaged over the samples with known
features, and the gradient distance runs over the visible coordinates with the labels fixed to the analytic ones.
The features pin the last layer exactly but not the image (the built-in sigmoid net's 768 features for 3,072 pixels; the
ReLU conv net's random-init features are ill-conditioned), so the gradient matching supplies the conv layers'
constraints. Neither weight dominates (a large one leads on an unprotected update, a small one lets the exact features
lead where the gradient is masked), so each weight of `match` is a configuration and the run closest to the observed
update wins. `optimiser` picks how (`auto`: L-BFGS for a model without ReLU, whose objective is smooth, signed Adam
otherwise):

- `lbfgs`: DLG's normalised squared distance (`matching.Matching.l2`) + tv_lbfgs · TV, the vectorised L-BFGS of
  `lbfgs` (lr 1), no box during the run (the result is clamped to [0, 1], as DLG's);
- `adam`: IG's cosine (`matching.Matching.cosine`) + tv · TV, IG's optimiser (`adam.signed_adam`: signed Adam, step
  decay, box [0, 1]).

With no features read a run falls back to the gradient distance alone with match 1 (`info["objective"]` as in
`matching`, including its support objective when only zeros are visible), and a trial with nothing visible at all
returns its seeded prior (`info["blind"]`).

**Over rounds** (`ObservedUpdate.rounds` > 1) each round's last layer is read under that round's global model, and the
round that shows the most features (an exact reading first) supplies them, its model computing f(x); the gradient
distance runs over every round (`matching`'s joint objective). `info["feature_round"]` says which round.

`info` adds: `features` (exact / direction / mixed / none), `features_known` (known features summed over the batch's
samples), `exact` (batch 1 with a scaled reading: the features are the client's, to round-off) and `labels_from`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from selenc.attacks.base import AttackResult, Timer, seeded
from selenc.attacks.image.adam import signed_adam
from selenc.attacks.image.labels import last_layer
from selenc.attacks.image.matching import Matching, collect_results, prepare_runs, row_objective, total_variation
from selenc.attacks.lbfgs import lbfgs
from selenc.gradients import FlatLayout
from selenc.models import Batch, Victim, module_input
from selenc.observed import ObservedUpdate

ALS_ITERATIONS = 50  # alternating least squares sweeps of the rank-1 fit (exact data converges in one or two)


@dataclass(frozen=True)
class Reading:
    """What the attacker read of the last layer's input features, per sample of one trial."""

    values: torch.Tensor  # (B, d) float64 features; 0 where unknown
    known: torch.Tensor  # (B, d) bool: which features were read
    scaled: torch.Tensor  # (B,) bool: the scale is known (else only the direction)
    kind: str  # exact / direction / mixed / none

    @property
    def count(self) -> int:
        return int(self.known.sum())


def layer_input(victim: Victim, layer: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """(x (B, C, H, W), weights=None) -> the input (B, d) of `layer` in the victim's forward (`models.module_input`:
    the forward stops there), under the flat `weights` (another round's model) when given; works under `torch.func`
    transforms."""
    layout = FlatLayout.of(victim.model)

    def features(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        params = None if weights is None else layout.unflatten(weights)
        return module_input(layer, lambda: victim.logits(Batch(x, None), params)).flatten(1)

    return features


def best_reading(
    observed: ObservedUpdate, victim: Victim, threat_model: str, labels: torch.Tensor, seed: int
) -> tuple[Reading, int]:
    """The features read (`read_features`) from the round that shows the most of them, an exact reading first, and
    that round (one message: round 0)."""
    best, pick = None, 0
    for r in range(observed.rounds):
        reading = read_features(observed.round(r), observed.victim_at(victim, r), threat_model, labels, seed)
        if best is None or (reading.kind == "exact", reading.count) > (best.kind == "exact", best.count):
            best, pick = reading, r
    return best, pick


def _non_negative(victim: Victim, layer: torch.nn.Module, shape: tuple[int, ...], seed: int) -> bool:
    """Whether the layer's input is non-negative on seeded noise images (sigmoid, ReLU bodies): a public model fact."""
    x = torch.rand((8, *shape), generator=seeded(seed, "linear-sign")).to(victim.device)
    with torch.no_grad():
        return bool((layer_input(victim, layer)(x.to(next(victim.model.parameters()).dtype)) >= 0).all())


def _block(values: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The rows (bool (K,)) of the connected block the rank-1 fit uses, and whether it holds a visible non-zero bias
    entry (the last column). Rows link when they share a visible column; a row counts when it shows a non-zero."""
    active = (seen & (values != 0)).any(1)
    share = (seen.double() @ seen.double().T > 0) & active[:, None] & active[None, :]
    reach = share.clone()
    for _ in range(len(active)):  # transitive closure (K is the number of classes)
        reach = reach | ((reach.double() @ share.double()) > 0)
    scaling = active & seen[:, -1] & (values[:, -1] != 0)
    blocks = []
    for c in active.nonzero().flatten().tolist():
        rows = reach[c]
        blocks.append((bool((rows & scaling).any()), int(seen[rows].any(0).sum()), rows))
    if not blocks:
        return torch.zeros_like(active), False
    scaled, _, rows = max(blocks, key=lambda b: (b[0], b[1]))
    return rows, scaled


def rank_one(values: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """v (m,) of the rank-1 fit u vᵀ to the seen entries of `values` (K, m), by alternating least squares from the
    row with the most seen entries; columns with no seen entry come out 0."""
    m, s = values * seen, seen.double()
    first = int(seen.sum(1).argmax())
    v = m[first].clone()
    for _ in range(ALS_ITERATIONS):
        u = (m @ v) / (s @ v.square()).clamp_min(1e-300)
        v = (m.T @ u) / (s.T @ u.square()).clamp_min(1e-300)
    return v


def read_features(
    observed: ObservedUpdate, victim: Victim, threat_model: str, labels: torch.Tensor, seed: int
) -> Reading:
    """The last linear layer's input features read from its visible gradient rows (module docstring)."""
    info = observed.public
    weight, bias = last_layer(observed, info.num_classes)
    shape = observed.layout.shapes[observed.layout.names.index(weight)]
    gw, sw = observed.rows(weight, shape)
    if bias is not None:
        gb, sb = observed.rows(bias, (info.num_classes,))
    else:
        gb, sb = torch.zeros(info.num_classes), torch.zeros(info.num_classes, dtype=torch.bool)
    values = torch.cat([gw, gb[:, None]], 1).double().cpu()
    seen = torch.cat([sw, sb[:, None]], 1).cpu()
    if threat_model == "zero_fill":  # hidden entries taken as the zeros they read (no bias: its column stays unseen)
        seen = torch.cat([torch.ones_like(sw).cpu(), torch.full_like(sb, bias is not None).cpu()[:, None]], 1)
    layer = victim.model.get_submodule(weight.rsplit(".", 1)[0])
    sign_known = _non_negative(victim, layer, info.input_shape, seed)
    batch, d = info.batch_size, shape[1]
    feats = torch.zeros(batch, d, dtype=torch.float64)
    known = torch.zeros(batch, d, dtype=torch.bool)
    scaled = torch.zeros(batch, dtype=torch.bool)

    def orient(h: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """A direction-only reading, unit norm over its known columns, signed so that it sums non-negative."""
        h = h * cols
        if sign_known and float(h.sum()) < 0:
            h = -h
        return h / h.norm().clamp_min(1e-300)

    if batch == 1:
        rows, has_scale = _block(values, seen)
        if bool(rows.any()):
            v = rank_one(values[rows], seen[rows])
            cols = seen[rows].any(0)[:d]
            known[0] = cols
            scaled[0] = has_scale
            feats[0] = v[:d] / v[d] * cols if has_scale else orient(v[:d], cols)
        kind = "none" if not bool(known.any()) else ("exact" if has_scale else "direction")
    else:
        for i, c in enumerate(labels.tolist()):
            row, cols = values[c], seen[c]
            if not bool((row * cols).any()):
                continue
            known[i] = cols[:d]
            if bool(cols[d]) and float(row[d]) != 0:
                feats[i], scaled[i] = row[:d] / row[d] * cols[:d], True
            else:
                feats[i] = orient(row[:d], cols[:d])
        kind = "mixed" if bool(known.any()) else "none"
    return Reading(feats, known, scaled, kind)


def choose_optimiser(cfg, victim: Victim) -> str:
    """`cfg.optimiser`, with `auto` resolved: L-BFGS for a smooth model (no ReLU), IG's signed Adam otherwise."""
    if cfg.optimiser != "auto":
        return cfg.optimiser
    return "adam" if any(isinstance(m, torch.nn.ReLU) for m in victim.model.modules()) else "lbfgs"


def linear_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """Linear-layer inversion on a batch of trials: features read from the last layer, then the image by L-BFGS or
    signed Adam on the feature distance + match · gradient distance + TV."""
    with Timer() as timer:
        runs, priors = prepare_runs(observed, victim, cfg, threat_models, seeds, "linear", configs=len(cfg.match))
        readings: dict[int, tuple[Reading, int]] = {}
        x = None
        trace: list[torch.Tensor] = []
        if runs is not None:
            device, dtype = runs.x0.device, runs.x0.dtype
            for r, trial in enumerate(runs.trial):
                if trial not in readings:
                    readings[trial] = best_reading(
                        observed[trial], victim, threat_models[trial], runs.labels[r].cpu(), seeds[trial]
                    )
            per_run = [readings[t][0] for t in runs.trial]
            models = None  # the model each run's features are computed under (one message: the victim's)
            if runs.models is not None:
                models = torch.stack([runs.models[r, readings[t][1]] for r, t in enumerate(runs.trial)])
            feats = torch.stack([rd.values for rd in per_run]).to(device, dtype)
            known = torch.stack([rd.known for rd in per_run]).to(device, dtype)
            scaled = torch.stack([rd.scaled for rd in per_run]).to(device)
            has = (known.sum(-1) > 0).to(dtype)  # (R, B): samples with known features
            uses = has.sum(-1) > 0
            weights = torch.tensor([cfg.match[c] for c in runs.config], device=device, dtype=dtype)
            match = torch.where(uses, weights, 1.0)  # no features: the gradient distance alone
            norms = runs.target.norm(dim=1)
            support = runs.support if bool(runs.support.any()) else None
            matching = Matching(victim, observed[0], len(runs.trial))
            weight_name, _ = last_layer(observed[0], observed[0].public.num_classes)
            features = layer_input(victim, victim.model.get_submodule(weight_name.rsplit(".", 1)[0]))

            def feature_term(x, feat, kn, sc, hs, fm) -> torch.Tensor:
                f = features(x, fm) * kn
                l2 = (f - feat).square().sum(-1) / feat.square().sum(-1).clamp_min(1e-30)
                cos = 1.0 - (f * feat).sum(-1) / (f.norm(dim=-1) * feat.norm(dim=-1)).clamp_min(1e-30)
                return (torch.where(sc, l2, cos) * hs).sum() / hs.sum().clamp_min(1.0)

            support_dim = None if support is None else 0
            feature_args = (feats, known, scaled, has, match)
            rounds_args, rounds_dims = (support, models, runs.models), (support_dim, *(runs.models_dim,) * 2)
            if choose_optimiser(cfg, victim) == "adam":

                def objective(x, y, target, weight, norm, feat, kn, sc, hs, mw, by_support, fm, gm):
                    tv = cfg.tv / mw  # matching.cosine adds tv·TV inside the weighted term
                    return feature_term(x, feat, kn, sc, hs, fm) + mw * matching.cosine(
                        x, y, target, weight, norm, tv, by_support, gm
                    )

                step = matching.step(objective, (0,) * 10 + rounds_dims)
                args = (runs.labels, runs.target, runs.weight, norms, *feature_args, *rounds_args)
                x, _, trace = signed_adam(step, runs.x0, args, cfg.steps, cfg.lr)
            else:
                scale = torch.where(norms > 0, 1.0 / norms.square(), torch.ones_like(norms))
                shape = runs.x0.shape[1:]

                def smooth(p, y, target, weight, s, feat, kn, sc, hs, mw, by_support, fm, gm):
                    x = p.view(shape)
                    gradient = matching.l2(x, y, target, weight, s, by_support, gm)
                    return feature_term(x, feat, kn, sc, hs, fm) + mw * gradient + cfg.tv_lbfgs * total_variation(x)

                step = matching.step(smooth, (0,) * 10 + rounds_dims)
                args = (runs.labels, runs.target, runs.weight, scale, *feature_args, *rounds_args)
                objective = row_objective(step, args)
                flat, _, steps = lbfgs(objective, runs.x0.reshape(len(runs.trial), -1), cfg.steps, lr=1.0)
                x, trace = flat.view(runs.x0.shape), list(steps)
    measure = "cosine" if choose_optimiser(cfg, victim) == "adam" else "l2"
    labels = None if runs is None else runs.labels
    results = collect_results(runs, priors, x, labels, trace, timer.seconds, (observed, victim, threat_models, measure))
    for i, result in enumerate(results):
        reading, feature_round = readings.get(i, (None, 0))
        result.info.update(
            feature_round=feature_round,
            features=reading.kind if reading else "none",
            features_known=reading.count if reading else 0,
            exact=bool(reading and reading.kind == "exact" and threat_models[i] == "mask_aware"),
            labels_from="analytic",
        )
    return results
