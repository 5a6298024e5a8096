"""The text attacks' gradient distance, for a batch of trials at once: one function of one row's dummy embeddings,
vmapped over the rows of a batched optimisation.

A dummy fed as embeddings never touches the token-embedding table, so its gradient there is identically zero. Those
coordinates only add a constant (Σt², α·Σ|t|) to the L2/L1 distance: `Distance` drops them from the computation and
adds the constant back, so `value` equals `Matcher.l2_l1` on the same dummy batch and the optimisation is unaffected.
The update is taken only over the other parameters that some trial of the batch compares (`gradients.batch_update`
with `names`); a trial's mask enters as a per-coordinate 0/1 weight (mask-aware: its visible coordinates; zero-fill:
every coordinate, against the zero-filled update), so trials with different masks share one vectorised call.

- `l2_l1` (TAG): ‖w ⊙ (d − t)‖² + α·‖w ⊙ (d − t)‖₁ plus the token table's constant.
- `layer_cosine` (LAMP's distance, its reference code's `grad_dist`): the mean over parameter tensors of
  1 − cos(w ⊙ d, t), each tensor on its compared coordinates, tensors whose compared target is all zero (the token
  table among them) or round-off (below NEGLIGIBLE of the largest tensor's norm: the MiniLM encoder's attention key
  biases, whose gradient is zero in exact arithmetic, so their cosine would be noise that decides nothing but shifts
  with the float rounding of each call) left out. The global cosine of `Matcher.cosine` is dominated on the MiniLM
  encoder by the pooler and classifier gradients (~77% of the squared norm), which say little about the tokens: measured
  ROUGE-1 0.44 against 0.83 per tensor (3 sentences), so LAMP uses the per-tensor form.

**Over rounds** (`ObservedUpdate.rounds` > 1: one client's messages of a federated run) a row's targets, weights and
norms carry a round axis and its trial's global model per round (`models`); the distance is the rounds' sum (L2 + L1)
or mean (layer cosine) of each round's distance, its update computed under that round's model (`torch.func.vmap`
over the rounds inside the vmap over rows).
"""

from __future__ import annotations

import itertools

import torch

from selenc.gradients import batch_update
from selenc.models import Batch, Victim
from selenc.observed import ObservedUpdate
from selenc.settings import THREAT_MODELS

DISTANCES = ("l2_l1", "layer_cosine")
NEGLIGIBLE = 1e-6  # a tensor whose compared target norm is below this share of the largest is round-off


class Distance:
    """Per-trial targets and weights over the parameters a dummy can move; `value(embeds, labels, mask, trial)` is one
    row's distance, written with torch.func so that it vmaps over rows and differentiates in the embeddings."""

    def __init__(
        self, observed: list[ObservedUpdate], victim: Victim, threat_models: list[str], kind: str, alpha: float = 0.0
    ):
        if kind not in DISTANCES:
            raise ValueError(f"unknown distance {kind!r}; allowed: {', '.join(DISTANCES)}")
        for tm in threat_models:
            if tm not in THREAT_MODELS:
                raise ValueError(f"unknown threat model {tm!r}; allowed: {', '.join(THREAT_MODELS)}")
        self.kind, self.alpha = kind, alpha
        layout, device = observed[0].layout, victim.device
        word = victim.word_embedding()[0]
        self.rounds = observed[0].rounds
        if any(o.rounds != self.rounds for o in observed):
            raise ValueError("the trials of one batch must observe the same number of rounds")
        targets, weights = [], []
        for obs, tm in zip(observed, threat_models, strict=True):
            views = [obs.round(r) for r in range(self.rounds)]
            t = torch.stack([o.zero_filled() for o in views]).to(device)  # (R, n)
            w = torch.ones_like(t) if tm == "zero_fill" else torch.stack([~o.mask for o in views]).to(device, t.dtype)
            targets.append(t * w)
            weights.append(w)
        target, weight = torch.stack(targets), torch.stack(weights)  # (N, R, n)
        self.blind = [not bool(w.any()) for w in weights]  # mask-aware with every coordinate encrypted
        # each trial's global model per round (rows of one trial share it); None: one message, the victim's own
        self.models = torch.stack([o.weights for o in observed]).to(device) if self.rounds > 1 else None
        if self.rounds == 1:
            target, weight = target[:, 0], weight[:, 0]  # (N, n)
        word_span = layout.span(word)
        compared = weight.reshape(-1, weight.shape[-1]).any(0)
        generic = observed[0].public.update.kind != "fedsgd"  # FedAvg: every parameter moves during local steps
        self.names = [n for n in layout.names if n != word and (generic or bool(compared[layout.span(n)].any()))]
        spans = [layout.span(n) for n in self.names]
        # (N, n_L), over rounds (N, R, n_L); nothing compared (every trial blind) leaves n_L = 0
        self.target = torch.cat([target[..., s] for s in spans] or [target[..., :0]], -1)
        self.weight = torch.cat([weight[..., s] for s in spans] or [weight[..., :0]], -1)
        sizes = [s.stop - s.start for s in spans]
        self.sizes, self.offsets = tuple(sizes), [0, *itertools.accumulate(sizes)]
        self.segment = torch.repeat_interleave(
            torch.arange(len(sizes), device=device), torch.tensor(sizes, dtype=torch.long, device=device)
        )
        pieces = self.target.split(sizes, -1)
        none = target[..., :0]
        self.target_norms = torch.stack([p.square().sum(-1) for p in pieces], -1).sqrt() if sizes else none
        # per trial (and round) and tensor: every coordinate compared (the weight can be skipped)
        self.dense = torch.stack([p.bool().all(-1) for p in self.weight.split(sizes, -1)], -1) if sizes else none
        if sizes:
            negligible = self.target_norms <= NEGLIGIBLE * self.target_norms.amax(-1, keepdim=True)
            self.target_norms = torch.where(negligible, 0.0, self.target_norms)  # 0: left out of the layer cosine
        word_t = target[..., word_span].double()
        constant = word_t.square().sum(-1) + alpha * word_t.abs().sum(-1)
        self.constant = (constant if self.rounds == 1 else constant.sum(-1)).to(target.dtype)  # (N,)
        self._update = batch_update(victim, observed[0].public.update, self.names)
        self.victim, self.generic = victim, generic
        named = dict(victim.model.named_parameters())
        self._leaves = [named[n] for n in self.names]

    def rows(self, trials: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-row inputs of `value` for rows of the given trials: (target, weight, target norms, constant, dense),
        and over rounds the trial's global models."""
        per_trial = (self.target, self.weight, self.target_norms, self.constant, self.dense)
        per_trial += () if self.models is None else (self.models,)
        return tuple(t.index_select(0, trials) for t in per_trial)

    def row(self, trial: int = 0) -> list[torch.Tensor]:
        """`rows` for one row of trial `trial` (no row dimension)."""
        return [t[0] for t in self.rows(torch.tensor([trial], device=self.target.device))]

    def value(self, embeds, labels, mask, target, weight, target_norms, constant, dense, models=None, eager=False):
        """One row's distance: dummy embeddings (B, T, E), labels (B,), attention mask (B, T) and the row's part of
        `rows` (target and 0/1 weight over the compared parameters, per-tensor target norms, constant; over rounds
        each with a round axis, and the global model per round).

        The update is a torch.func function (vmaps over rows) or, with `eager`, plain autograd on the model's
        parameters (one row; differentiable when grad mode is on): the same values, fewer dispatch layers, which is
        what one row on a CPU wants."""
        batch = Batch(embeds, labels, mask)
        if models is not None:
            per_round = torch.func.vmap(lambda *a: self._distance(self._update(batch, a[0]), *a[1:]))
            values = per_round(models, target, weight, target_norms)
            return values.sum() + constant if self.kind == "l2_l1" else values.mean()
        if eager and not self.generic:
            return self._eager_value(batch, target, weight, target_norms, constant, dense.tolist())
        value = self._distance(self._update(batch), target, weight, target_norms)
        return value + constant if self.kind == "l2_l1" else value

    def _distance(self, d, target, weight, target_norms) -> torch.Tensor:
        """The distance of update `d` (over the compared parameters) to one target, the token table's constant left
        out."""
        if self.kind == "l2_l1":
            return _L2L1.apply(d, target, weight, self.alpha)[0]
        return _LayerCosine.apply(d, target, weight, target_norms, self.segment, self.sizes)[0]

    def _eager_value(self, batch: Batch, target, weight, target_norms, constant, dense: list[bool]) -> torch.Tensor:
        """`value` tensor by tensor: no concatenated update, and no weight pass on fully compared tensors."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():  # the update is a gradient even when the distance itself is not differentiated
            loss = self.victim.loss(batch)
            grads = torch.autograd.grad(loss, self._leaves, create_graph=create_graph, materialize_grads=True)
        terms = []
        for k, (g, a, b) in enumerate(zip(grads, self.offsets[:-1], self.offsets[1:], strict=True)):
            w = None if dense[k] else weight[a:b]
            if self.kind == "l2_l1":
                terms.append(_L2L1.apply(g.reshape(-1), target[a:b], w, self.alpha)[0])
            elif target_norms[k] > 0:
                d = g.reshape(-1) if w is None else g.reshape(-1) * w
                terms.append(1.0 - d.dot(target[a:b]) / (d.norm().clamp_min(1e-12) * target_norms[k]))
        if self.kind == "l2_l1":
            return sum(terms) + constant
        return sum(terms) / len(terms) if terms else loss * 0.0


class _L2L1(torch.autograd.Function):
    """Σ w(d − t)² + α·Σ w|d − t|, its gradient w(2(d − t) + α·sign(d − t)) formed in the forward pass: a few passes
    over the (long) vector instead of autograd's many. First-order only: the attack differentiates it once."""

    generate_vmap_rule = True

    @staticmethod
    def forward(d, t, w, alpha):
        diff = d - t if w is None else (d - t).mul_(w)
        # sums, not dots: under vmap a dot becomes a batched product that accumulates 11M floats naively (1% off)
        value = diff.square().sum() + alpha * diff.abs().sum()
        return value, torch.sign(diff).mul_(alpha).add_(diff, alpha=2.0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, grad, _):
        (g,) = ctx.saved_tensors
        return grad * g, None, None, None


class _LayerCosine(torch.autograd.Function):
    """mean over tensors k with a non-zero target of 1 − cos(w ⊙ d_k, t_k), with its gradient formed in the forward
    pass: −(1/K)·[t_k/(‖d_k‖‖t_k‖) − cos_k·d_k/‖d_k‖²] on the compared coordinates."""

    generate_vmap_rule = True

    @staticmethod
    def forward(d, t, w, norms, segment, sizes):
        d = d * w
        # per-tensor sums (cascade-summed; an index_add or a batched dot accumulates naively)
        dots = torch.stack([p.sum() for p in (d * t).split(sizes)])
        d_norms = torch.stack([p.sum() for p in (d * d).split(sizes)]).sqrt().clamp_min(1e-12)
        used = norms > 0
        count = used.sum().clamp_min(1)
        cos = dots / (d_norms * torch.where(used, norms, 1.0))
        value = torch.where(used, 1.0 - cos, 0.0).sum() / count
        a = torch.where(used, 1.0 / (d_norms * torch.where(used, norms, 1.0)), 0.0) / count
        b = torch.where(used, cos / d_norms.square(), 0.0) / count
        grad = (b.index_select(0, segment) * d).sub_(a.index_select(0, segment) * t)
        return value, grad

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, grad, _):
        (g,) = ctx.saved_tensors
        return grad * g, None, None, None, None, None


def closest_labels(
    observed: ObservedUpdate,
    victim: Victim,
    threat_model: str,
    sentences: list[list[int]],
    candidates: list[tuple[int, ...]],
) -> tuple[int, ...]:
    """The label multiset whose update on the recovered `sentences` (token ids, frame included) is closest (L2 + L1)
    to the observed one; the first candidate when there is one, or nothing is compared."""
    distance = Distance([observed], victim, [threat_model], "l2_l1")
    if len(candidates) == 1 or distance.blind[0]:
        return candidates[0]
    length = max(map(len, sentences))
    ids = torch.zeros(len(sentences), length, dtype=torch.long, device=victim.device)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sentences):
        ids[i, : len(s)] = torch.tensor(s, device=victim.device)
        mask[i, : len(s)] = 1
    embeds = victim.model.get_input_embeddings().weight.detach()[ids]
    row = distance.row()
    with torch.no_grad():
        losses = [float(distance.value(embeds, torch.tensor(c, device=victim.device), mask, *row)) for c in candidates]
    return candidates[min(range(len(candidates)), key=losses.__getitem__)]
