"""Significance metrics: one score per coordinate of the flat update; the highest scores get encrypted.

Each metric is one function `(ClientView) -> scores (n,)` registered in `METRICS`, the one declaration of the metric
names params may use (`config` validates grids against it); adding a metric is one function plus one entry.
Everything a metric uses is the client's own: its model, batch, update and seeds.

- `random`: seeded uniform scores (the baseline).
- `magnitude` |g|, `weight` |θ|, `saliency` |θ·g|.
- `sensitivity` ‖∂g_i/∂x‖²: E_u[(J u)_i²] over m Gaussian input directions u, each J·u a double-VJP (no Jacobian).
- `hessian`: |diag ∇²_θ ℓ| by Hutchinson's estimator, E_z[z ⊙ H z] over m Rademacher probes z.
- `distance`: s_i(Q) = E_{x'~Q}[(g_i(x') − g_i(x))²] (theory.md) with Q = far | near | path and m draws.
- `layer_first` / `layer_last`: whole parameter tensors from the input / output side until the budget is filled.
- `embedding_rows` (text): the token-embedding rows with a non-zero gradient (they leak the batch's tokens) first,
  then the rest by magnitude.

Text inputs are continuous through an offset in token-embedding space around the batch's tokens (see
`gradients.continuous_input`): the far field draws the embeddings of random tokens, the near field perturbs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from selenc.gradients import FlatLayout, at_input, client_update, continuous_input, update_jvp
from selenc.models import Batch, Victim
from selenc.settings import Significance, Update, derive_seed


@dataclass
class ClientView:
    """What a client has when it scores its update: model, batch, the update itself and settings."""

    victim: Victim
    batch: Batch
    update: torch.Tensor  # the flat shared update g(x)
    update_cfg: Update
    cfg: Significance
    seed: int

    @property
    def layout(self) -> FlatLayout:
        return FlatLayout.of(self.victim.model)

    def generator(self, purpose: str) -> torch.Generator:
        return torch.Generator(device=self.update.device).manual_seed(derive_seed(self.seed, "significance", purpose))


def _params(view: ClientView) -> list[torch.Tensor]:
    return [p for p in view.victim.model.parameters() if p.requires_grad]


def random_scores(view: ClientView) -> torch.Tensor:
    return torch.rand(view.update.numel(), generator=view.generator("random"), device=view.update.device)


def magnitude(view: ClientView) -> torch.Tensor:
    return view.update.abs()


def weight(view: ClientView) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in _params(view)]).abs()


def saliency(view: ClientView) -> torch.Tensor:
    return (weight(view) * view.update).abs()


def _gaussian_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)


def sensitivity(view: ClientView) -> torch.Tensor:
    """‖J_i‖² estimated as the mean of (J u)_i² over m standard Gaussian directions u (E[uuᵀ] = I)."""
    x = continuous_input(view.victim, view.batch)
    gen = view.generator("sensitivity")
    dirs = [_gaussian_like(x, gen) for _ in range(view.cfg.samples)]
    jus = update_jvp(view.victim, view.batch, view.update_cfg, x, dirs)
    return torch.stack([ju.square() for ju in jus]).mean(0)


def hessian(view: ClientView) -> torch.Tensor:
    """|diag H| of the loss in θ, H z by double backward, averaged over m Rademacher probes z."""
    params = _params(view)
    grads = torch.autograd.grad(view.victim.loss(view.batch), params, create_graph=True, materialize_grads=True)
    gen = view.generator("hessian")
    total = torch.zeros_like(view.update)
    for i in range(view.cfg.samples):
        zs = [torch.randint(0, 2, p.shape, generator=gen, device=p.device).to(p.dtype) * 2 - 1 for p in params]
        hz = torch.autograd.grad(grads, params, zs, retain_graph=i < view.cfg.samples - 1, materialize_grads=True)
        total += torch.cat([(z * h).reshape(-1) for z, h in zip(zs, hz, strict=True)]).detach()
    return (total / view.cfg.samples).abs()


# --- distance-based significance (theory.md) ------------------------------------------------------------------
def far_field(view: ClientView, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A draw independent of x, like an attack's random start: uniform pixels, or random tokens' embeddings."""
    if view.victim.modality == "image":
        return torch.rand(x.shape, generator=gen, device=x.device)
    table = view.victim.model.get_input_embeddings().weight.detach()
    ids = view.batch.inputs
    random_ids = torch.randint(0, table.shape[0], ids.shape, generator=gen, device=ids.device)
    return table[random_ids] - table[ids]  # offset that turns the batch's tokens into random ones


def near_field(view: ClientView, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x + ε·rms·u, u ~ N(0, I): a small perturbation (ε relative to the input's scale)."""
    scale = view.cfg.near_eps * _input_rms(view)
    return x + scale * _gaussian_like(x, gen)


def _input_rms(view: ClientView) -> float:
    if view.victim.modality == "image":
        return float(view.batch.inputs.square().mean().sqrt())
    return float(view.victim.model.get_input_embeddings().weight.detach().square().mean().sqrt())


def path_states(view: ClientView, x: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
    """m states of a short gradient-matching run (Adam on ‖g(x') − g(x)‖² from a far-field start), one every 2 steps.

    The client runs it against its own update: a stand-in for the states a real attack passes through.
    """
    x_t = far_field(view, x, gen).requires_grad_()
    opt = torch.optim.Adam([x_t], lr=view.cfg.path_lr * _input_rms(view))
    target = view.update
    states = []
    for step in range(2 * view.cfg.samples):
        g = client_update(view.victim, at_input(view.victim, view.batch, x_t), view.update_cfg, create_graph=True)
        # autograd.grad, not .backward(): nothing data-dependent lands in the model's .grad, which the server's
        # attacker is later handed
        (x_t.grad,) = torch.autograd.grad((g - target).square().sum(), [x_t])
        opt.step()
        if view.victim.modality == "image":
            with torch.no_grad():
                x_t.clamp_(0.0, 1.0)
        if step % 2 == 1:
            states.append(x_t.detach().clone())
    return states


def distance_significance(view: ClientView, q: str | None = None) -> torch.Tensor:
    """s_i(Q) = mean over m draws x' ~ Q of (g_i(x') − g_i(x))²."""
    q = q or view.cfg.distance_q
    x = continuous_input(view.victim, view.batch)
    gen = view.generator(f"distance-{q}")
    if q == "path":
        candidates = path_states(view, x, gen)
    elif q in ("far", "near"):
        draw = far_field if q == "far" else near_field
        candidates = [draw(view, x, gen) for _ in range(view.cfg.samples)]
    else:
        raise ValueError(f"unknown distance field Q={q!r}; allowed: far, near, path")
    total = torch.zeros_like(view.update)
    for x_c in candidates:
        g_c = client_update(view.victim, at_input(view.victim, view.batch, x_c), view.update_cfg)
        total += (g_c - view.update).square()
    return total / len(candidates)


# --- structural metrics ----------------------------------------------------------------------------------------
def _tensor_order_scores(view: ClientView, first: bool) -> torch.Tensor:
    """Every coordinate scored by its tensor's position, so top-k takes whole tensors in that order.

    Inside the boundary tensor the lower flat index wins (selection's tie rule): it is filled from its start.
    """
    layout = view.layout
    count = len(layout.names)
    sizes = torch.tensor([b - a for a, b in zip(layout.offsets[:-1], layout.offsets[1:], strict=True)])
    k = torch.repeat_interleave(torch.arange(count), sizes).to(view.update.device)
    return (count - k if first else k + 1).to(torch.float32)


def layer_first(view: ClientView) -> torch.Tensor:
    return _tensor_order_scores(view, first=True)


def layer_last(view: ClientView) -> torch.Tensor:
    return _tensor_order_scores(view, first=False)


def embedding_rows(view: ClientView) -> torch.Tensor:
    """2-tier: every coordinate of a token-embedding row with non-zero gradient scores above all others."""
    if view.victim.modality != "text":
        raise ValueError(f"embedding_rows needs a text model with a token embedding; {view.victim.arch} has none")
    name, table = view.victim.word_embedding()
    span = view.layout.span(name)
    rows = view.update[span].view(table.shape)
    leaked = (rows != 0).any(1, keepdim=True).expand_as(rows).reshape(-1)
    scores = view.update.abs() / (view.update.abs().max() + 1e-30)  # in [0, 1]
    scores[span] += leaked.to(scores.dtype)  # leaked rows in [1, 2]
    return scores


METRICS: dict[str, Callable[[ClientView], torch.Tensor]] = {
    "random": random_scores,
    "magnitude": magnitude,
    "weight": weight,
    "saliency": saliency,
    "sensitivity": sensitivity,
    "hessian": hessian,
    "distance": distance_significance,
    "layer_first": layer_first,
    "layer_last": layer_last,
    "embedding_rows": embedding_rows,
}


# Metrics that score a coordinate 0, the lowest score, exactly when its gradient is 0, by construction: their masks
# hide the update's support first, which a server holding the mask reads off it (`attacks.base.mask_boundary`). The
# others rank independently of the data (random, weight, layer_*), give zero-gradient coordinates a positive score
# (distance: a random input's gradient is non-zero where the client's is zero; sensitivity and hessian, estimated,
# measured so on the MiniLM encoder) or non-zero ones a zero score (saliency |w·g| where a weight is 0). The attacker
# reads only these; tests/test_significance.py checks the split on real batches.
SUPPORT_REVEALING = frozenset({"magnitude", "embedding_rows"})
NEEDS_TOKEN_EMBEDDING = frozenset({"embedding_rows"})  # metrics a model without one (an image model) cannot use


def client_scores(
    metric: str, victim: Victim, batches: list[Batch], update_cfg: Update, cfg: Significance, seed: int
) -> list[torch.Tensor]:
    """Scores of each client's own batch (client j seeds its metric with `derive_seed(seed, j)`); the victim's batch
    comes first. Feeds `selection.make_mask`, whose `shared` source sums them."""
    out = []
    for j, batch in enumerate(batches):
        update = client_update(victim, batch, update_cfg)
        out.append(scores(metric, ClientView(victim, batch, update, update_cfg, cfg, derive_seed(seed, "client", j))))
    return out


def scores(metric: str, view: ClientView) -> torch.Tensor:
    """Score every coordinate of `view.update` with `metric`: a finite float32 vector of the update's length."""
    if metric not in METRICS:
        raise ValueError(f"unknown significance metric {metric!r}; allowed: {', '.join(METRICS)}")
    out = METRICS[metric](view).detach().to(torch.float32)
    if out.shape != view.update.shape or not torch.isfinite(out).all():
        raise RuntimeError(f"metric {metric!r} returned shape {tuple(out.shape)} or non-finite values")
    return out
