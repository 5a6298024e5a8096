"""The distance-based significance framework of theory.md, as numbers that can be checked.

- `significance`: s_i(Q) for Q ∈ {far, near, path}; the one implementation is `significance.distance_significance`
  (the `distance` metric), re-exported here so the metric and the theory cannot drift apart.
- `phi`: φ(S) = Σ_{i∈S} s_i / Σ_i s_i, the protected share of the distance.
- `identity_error`: D(x') = D_V(x') + D_S(x'), with D_V computed by the attacker's own mask-aware matcher (T1).
- `spectral_norm` / `lipschitz`: ‖J_S(x_t)‖₂ by power iteration on J_Sᵀ J_S with one JVP and one VJP per
  iteration (J = ∂g/∂x is never materialised), and L_S = its maximum over a t-grid on the segment x → x̂.
- `bound`: (B1) ‖x̂ − x‖ ≥ ‖g_S(x̂) − g_S(x)‖ / L_S for one attack output, with its tightness bound / error (T2).
- `Spectrum`, `near_null_dim`, `effective_rank`: the exact singular values of J_V, the dimension of its near-null
  space (the input directions the visible gradient cannot see, T5) and the entropy effective rank beside it.
- `row_norms`: ‖J_i‖² for every coordinate, exact (forward-mode Jacobian, small models) or by m JVPs (T3).

The theory stage (its small attacks, the T1-T5 tables and theory.json) is `theory_check`.

Inputs live in `gradients.continuous_input`'s space: pixels for images, an offset in token-embedding space around
the batch's tokens for text. Power iteration returns a lower estimate of ‖J_S‖₂ and the grid samples the sup, so
L_S can only come out too small; that makes the bound larger, so a violation means the grid or the iteration count
is too coarse (theory.md: reported, never hidden).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from selenc.attacks.base import Matcher
from selenc.attacks.text.reading import frame
from selenc.gradients import at_input, continuous_input, functional_update
from selenc.models import Batch, Victim
from selenc.observed import ObservedUpdate
from selenc.settings import Update
from selenc.significance import ClientView, distance_significance

CHUNK = 64  # directions per vmapped JVP/VJP call: bounds the memory of the batched Jacobian products
UpdateFn = Callable[[torch.Tensor], torch.Tensor]


def significance(view: ClientView, q: str | None = None) -> torch.Tensor:
    """s_i(Q) = E_{x'~Q}[(g_i(x') − g_i(x))²] by Monte Carlo with `view.cfg.samples` draws (Q: far | near | path)."""
    return distance_significance(view, q)


def phi(s: torch.Tensor, mask: torch.Tensor) -> float:
    """φ(S): the share of the total distance-based significance that the encrypted coordinates S carry."""
    if s.shape != mask.shape:
        raise ValueError(f"phi: scores have shape {tuple(s.shape)} but the mask {tuple(mask.shape)}")
    total = float(s.double().sum())
    return float(s.double()[mask.to(s.device)].sum()) / total if total > 0 else float("nan")


def float64(victim: Victim, batch: Batch) -> tuple[Victim, Batch]:
    """A float64 copy of the victim and its batch (the precision T1 is checked in); the originals are untouched."""
    model = copy.deepcopy(victim.model).double()
    twin = dataclasses.replace(victim, model=model, pretrain_losses=[])
    inputs = batch.inputs.double() if batch.inputs.is_floating_point() else batch.inputs
    offset = None if batch.input_offset is None else batch.input_offset.double()
    return twin, Batch(inputs, batch.labels, batch.attention_mask, offset)


# --- T1: the Euclidean identity --------------------------------------------------------------------------------
def identity_error(
    victim: Victim, batch: Batch, cfg: Update, observed: ObservedUpdate, update: torch.Tensor, candidate: torch.Tensor
) -> dict:
    """D, D_V and D_S at candidate x' and the relative error |D − (D_V + D_S)| / D.

    D_V is what the mask-aware attacker measures (its `Matcher`, built from the observed update alone); D and D_S
    use the client's full update. The identity is exact algebra, so the check tests that the attacker's visible
    distance really is the restriction of the full one: no coordinate lost, duplicated or misplaced.
    """
    moved = at_input(victim, batch, candidate)
    f = functional_update(victim, batch, cfg)
    g_c = f(candidate).detach()
    hidden = observed.mask.to(g_c.device)
    d = float((g_c - update).square().sum())
    d_s = float((g_c - update)[hidden].square().sum())
    d_v = float(Matcher(observed, victim, "mask_aware").l2(moved).detach()) if observed.visible.numel() else 0.0
    return {"D": d, "D_V": d_v, "D_S": d_s, "rel_err": abs(d - (d_v + d_s)) / d if d > 0 else 0.0}


# --- L_S and (B1) ------------------------------------------------------------------------------------------------
def spectral_norm(
    f: UpdateFn,
    x: torch.Tensor,
    rows: torch.Tensor,
    iters: int,
    gen: torch.Generator,
    start: torch.Tensor | None = None,
) -> tuple[float, torch.Tensor]:
    """‖J_S(x)‖₂ for J = ∂f/∂x restricted to the rows `rows` (bool, length n), by power iteration on J_Sᵀ J_S.

    Each iteration is one JVP (J u) and one VJP (Jᵀ v); the estimate sqrt(‖J_Sᵀ J_S u‖) with ‖u‖ = 1 never exceeds
    the true norm and converges to it. Returns the estimate and the last direction (to warm-start a nearby point).
    """
    x = x.detach()
    u = start if start is not None else torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
    u = u / u.norm()
    if not bool(rows.any()):
        return 0.0, u
    g, vjp_fn = torch.func.vjp(f, x)
    rows = rows.to(g.device)
    sigma = 0.0
    for _ in range(iters):
        ju = torch.func.jvp(f, (x,), (u,))[1].detach()
        v = vjp_fn(torch.where(rows, ju, torch.zeros_like(ju)))[0].detach()
        norm = float(v.norm())
        if norm == 0.0:
            return 0.0, u
        sigma = math.sqrt(norm)  # ‖u‖ = 1, so ‖J_Sᵀ J_S u‖ ≤ σ_max², with equality at the top singular vector
        u = v / norm
    return sigma, u


def lipschitz(
    f: UpdateFn, x: torch.Tensor, x_hat: torch.Tensor, rows: torch.Tensor, grid: int, iters: int, seed: int
) -> float:
    """L_S = max over t ∈ linspace(0, 1, grid) of ‖J_S(x + t(x̂ − x))‖₂; each point's power iteration starts from
    the previous point's direction, so a few iterations per point suffice along a smooth path."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    best, u = 0.0, None
    for t in torch.linspace(0.0, 1.0, grid, dtype=torch.float64).tolist():
        sigma, u = spectral_norm(f, x + t * (x_hat - x), rows, iters, gen, u)
        best = max(best, sigma)
    return best


@dataclass(frozen=True)
class Bound:
    """(B1) for one attack output: error ‖x̂ − x‖ ≥ bound = mismatch / L_S (both 0 when nothing is hidden)."""

    mismatch: float  # ‖g_S(x̂) − g_S(x)‖, the hidden distance encryption removed
    lipschitz: float  # L_S
    bound: float
    error: float  # ‖x̂ − x‖
    tightness: float  # bound / error in [0, 1] when (B1) holds; nan when error is 0
    violated: bool

    def as_row(self, prefix: str = "b1_") -> dict:
        return {prefix + k: v for k, v in asdict(self).items()}


def bound(
    victim: Victim,
    batch: Batch,
    cfg: Update,
    x_hat: torch.Tensor,
    mask: torch.Tensor,
    grid: int,
    iters: int,
    seed: int,
    tolerance: float = 1e-3,
) -> Bound:
    """(B1) at attack output x̂ (same space and shape as `continuous_input(victim, batch)`), encrypted set `mask`.

    The labels stay the batch's true ones: (B1) is a statement about the input alone."""
    x = continuous_input(victim, batch)
    if x_hat.shape != x.shape:
        raise ValueError(f"bound: x̂ has shape {tuple(x_hat.shape)}, the input space {tuple(x.shape)}")
    f = functional_update(victim, batch, cfg)
    return bound_of(f, x, x_hat.to(device=x.device, dtype=x.dtype), mask, grid, iters, seed, tolerance)


def bound_of(
    f: UpdateFn,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    mask: torch.Tensor,
    grid: int,
    iters: int,
    seed: int,
    tolerance: float = 1e-3,
) -> Bound:
    """(B1) for any differentiable map f: input -> update. A point violates it when bound > error · (1 + tolerance);
    the tolerance absorbs round-off only."""
    x, x_hat = x.detach(), x_hat.detach()
    rows = mask.to(x.device)
    with torch.no_grad():
        mismatch = float((f(x_hat) - f(x))[rows].norm()) if bool(rows.any()) else 0.0
    error = float((x_hat - x).norm())
    lip = lipschitz(f, x, x_hat, rows, grid, iters, seed) if mismatch > 0 else 0.0
    b = mismatch / lip if lip > 0 else (0.0 if mismatch == 0 else math.inf)
    return Bound(
        mismatch=mismatch,
        lipschitz=lip,
        bound=b,
        error=error,
        tightness=b / error if error > 0 else float("nan"),
        violated=b > error * (1 + tolerance) + 1e-12,
    )


def text_point(victim: Victim, batch: Batch, token_ids: list[list[int]]) -> torch.Tensor | None:
    """A text attack's output as a point of the continuous input space: the embedding offset that turns the batch's
    tokens into the recovered ones. None when a recovered sequence's length differs from the true one (the two
    inputs then live in different spaces and (B1) does not apply)."""
    table = victim.model.get_input_embeddings().weight.detach()
    head, tail = frame(victim.tokenizer)
    rows = []
    for seq, am, ids in zip(batch.inputs, batch.attention_mask, token_ids, strict=True):
        length = int(am.sum())
        full = head + list(ids) + tail
        if len(full) != length:
            return None
        padded = full + seq.tolist()[length:]  # padding positions are untouched
        rows.append(torch.tensor(padded, device=seq.device))
    return table[torch.stack(rows)] - table[batch.inputs]


# --- T3: Jacobian row norms --------------------------------------------------------------------------------------
def row_norms(victim: Victim, batch: Batch, cfg: Update, exact: bool = True, samples: int = 64, seed: int = 0):
    """‖J_i‖² = ‖∂g_i/∂x‖² for every coordinate i: exact from the forward-mode Jacobian (chunked; small models), or
    the mean of (J u)_i² over `samples` Gaussian directions (the `sensitivity` estimator)."""
    x = continuous_input(victim, batch)
    f = functional_update(victim, batch, cfg)
    d = x.numel()
    total = None
    if exact:
        basis = torch.eye(d, dtype=x.dtype, device=x.device)
        for chunk in basis.split(CHUNK):
            cols = torch.func.vmap(lambda u: torch.func.jvp(f, (x,), (u.view_as(x),))[1])(chunk)
            part = cols.square().sum(0)
            total = part if total is None else total + part
        return total.detach()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    for _ in range(samples):
        u = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
        part = torch.func.jvp(f, (x,), (u,))[1].square()
        total = part if total is None else total + part
    return (total / samples).detach()


# --- T5: effective rank of J_V -----------------------------------------------------------------------------------
class Spectrum:
    """The singular values of J_V for any visible set V, exactly. J (n × d) is built once from d JVPs, one per input
    coordinate; σ(J_V)² are the eigenvalues of J_Vᵀ J_V = JᵀJ − J_Sᵀ J_S in float64, formed from whichever of V and S
    (the encrypted rows) is smaller. Small inputs only (32x32 RGB: d = 3,072)."""

    def __init__(self, victim: Victim, batch: Batch, cfg: Update):
        x = continuous_input(victim, batch).detach()
        f = functional_update(victim, batch, cfg)
        basis = torch.eye(x.numel(), dtype=x.dtype, device=x.device).reshape(-1, *x.shape)
        jvp = torch.func.vmap(lambda w: torch.func.jvp(f, (x,), (w,))[1])
        self.j = torch.cat([jvp(chunk).detach() for chunk in basis.split(CHUNK)]).T.double()  # (n, d)
        self.gram = self.j.T @ self.j
        self.dim = x.numel()

    def singular_values(self, visible: torch.Tensor) -> torch.Tensor:
        """σ(J_V), largest first, d of them (V: bool, length n)."""
        visible = visible.to(self.j.device)
        if int(visible.sum()) <= visible.numel() // 2:
            rows = self.j[visible]
            gram = rows.T @ rows
        else:
            rows = self.j[~visible]
            gram = self.gram - rows.T @ rows
        return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)


def near_null_dim(singular_values: torch.Tensor, dim: int, reference: float, tolerance: float) -> int:
    """How many of the d input directions J_V (nearly) cannot see: d minus the singular values above
    `tolerance` × `reference` (the unencrypted Jacobian's largest), so that every mask is measured on one scale."""
    return dim - int((singular_values > tolerance * reference).sum())


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp(H(p)), p = σ / Σσ (Roy and Vetterli): 1 for a rank-one map, r for r equal singular values; 0 if J_V = 0."""
    s = singular_values.double().clamp_min(0)
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))
