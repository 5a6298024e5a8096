"""Text gradient inversion on BERT / GPT-2 classifiers: token leakage (analytic), TAG and a LAMP-style attack.

Every attack is `fn(observed, victim, cfg, threat_model, seed) -> AttackResult` and reads only the observed update
(visible values, mask, layout, public facts), the distributed model and tokenizer, its cfg and its seed.

**What the embedding gradients give away.** Row v of the token-embedding gradient is non-zero iff token v is in the
batch. Row p of the position-embedding gradient is non-zero iff some sentence reaches position p (padding is masked
out of attention; GPT-2 pools the last real position and is causal), so the used rows are exactly 0..T−1. With one
sentence (B = 1) more leaks: the embedding layer adds word row v and position row p at each position, so position
row p's gradient is the gradient e_p of that position, and word row v's is the sum of e_p over the positions holding
v. Least squares then recovers the whole sentence, order and repeats included (`order_by_positions`).

- `token_leakage` (analytic): the token set from the rows with a visible non-zero entry (a partly hidden row counts
  as leaked if any visible entry is non-zero; fully hidden rows are unknown and not reported). Counts and order are
  recovered only at B = 1 with the position rows and the leaked word rows visible (checked by the residual); else
  the answer is the set, one copy per token, given to every sample (the set cannot be attributed to samples).
- `tag` (Deng et al. 2021): Adam on ‖Δ‖² + α‖Δ‖₁ between the dummy's and the observed update, Δ over the coordinates
  the threat model compares, the dummy being free continuous token embeddings (B, T, E) fed as `inputs_embeds`.
- `lamp` (Balunović et al. 2022, LAMP-style): Adam on the cosine distance + embedding_reg · mean_p (‖x_p‖/ν − 1)²,
  ν the mean norm of the vocabulary embeddings; every `reorder_every` steps a discrete phase proposes
  `reorder_candidates` reorderings (swap two tokens, move a token, move a span) of one sample's embeddings, scores
  each by the gradient distance and keeps the best if it beats the current state (as the paper, the continuous
  embeddings are permuted and scored; the decoded tokens of each phase are scored too and the best decoded
  sentence is kept); at the end, `polish` reorderings of the best decoded sentence (the same three moves, on tokens)
  are tried one by one and kept when they lower the gradient distance (continuous embeddings can carry a position
  offset, so permuting them does not always move a token; permuting decoded tokens does). **No language-model
  prior**: the paper ranks candidates with GPT-2's perplexity as well, but no pretrained GPT-2 weights exist
  offline, so they are ranked by the gradient distance alone (`info["lm_prior"]`).
  The cosine is LAMP's own (`Objective.layer_cosine`, the reference code's `grad_dist`): the mean over parameter
  tensors of 1 − cos, each on the coordinates the threat model compares. The global cosine of `Matcher.cosine`
  (switch: `LAMP_LAYERWISE = False`) is dominated on BERT by the pooler and classifier gradients (~77% of the
  squared norm), which say little about the tokens: measured ROUGE-1 0.44 against 0.83 per tensor (3 sentences).

**Token-embedding coordinates.** A dummy fed as embeddings never touches the token-embedding table, so its gradient
there is identically zero. Those coordinates only add a constant (Σt², α·Σ|t|) to the L2/L1 distance and a constant
factor to the cosine: `Objective` drops them from the computation and adds the constant back, so the reported loss
equals the Matcher's and the optimisation is unaffected. Softmax mixtures over the leaked tokens (which would
reproduce those rows) were tried and lost to free embeddings (they lock tokens into wrong orders); not used.

**Decoding.** BERT normalises word + position + type embeddings with a LayerNorm and is otherwise blind to order, so
a free dummy may carry token v from true position q at position p (x_p = w_v + pos_q − pos_p: the network sees the
same vectors listed in another order). The projection therefore decodes what the model sees: each dummy vector
x_p + pos_p (+ type) is matched to w_v + pos_q (+ type) over the allowed tokens v and positions q (cosine of
mean-centred vectors under LayerNorm, L2 for GPT-2), positions assigned one-to-one (Hungarian).

**Vocabulary restriction** (`restrict_vocab`): decoding is limited to the tokens that can be in the batch: the leaked
ones plus those whose rows are fully hidden (a row with a seen all-zero entry is not in the batch), and every leaked
token is decoded at least once when the slots allow it (the leaked bag is known to be in the batch): slots are
assigned to the leaked tokens plus free slots by a Hungarian assignment that maximises the summed match score, the
free slots taking their best token. When the set is empty or the whole vocabulary (every row encrypted), it falls
back to the full vocabulary without that constraint (`info["vocab"]`).

**Sequence length.** From the position rows (`sequence_length`): exact when they pin it down; otherwise estimated
from the rows that are seen and the number of distinct leaked tokens (a lower bound), else the public max_length.
All B dummies get the batch's padded length T with full attention (per-sentence lengths at B > 1 are not known; a
shorter sentence's padding is then reconstructed as extra tokens). The tokenizer's frame ([CLS] … [SEP]) is public
and kept fixed.

**Labels** (`label_candidates`). BERT's head bias gradient g_c = p̄_c − n_c/B leaves at B = 1 exactly the true
label (iDLG); label multisets are filtered by 0 < g_c + n_c/B < 1. GPT-2's `score` head has no bias: the classifier
gradient of a binary head is matched equally well by the wrong label with a negated feature, so every candidate
multiset (B+1 for two classes) is probed for 10% of the steps from the same init and the lowest loss continues.

**Threat models** via `Matcher`: mask_aware compares the visible coordinates; zero_fill compares all of them with
hidden ones as 0 and also reads the embedding rows that way (hidden = 0: no unknown rows). When the Matcher is blind
(mask_aware, everything hidden) the attacks return their prior: the projection of the seeded init.

**lr** is in units of the vocabulary embeddings' RMS (the same cfg value fits BERT's and GPT-2's scales); the rate
is held for the first half of the budget, then decays linearly to 0.1x. Restarts keep the reconstruction whose
discrete gradient distance is lowest.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from selenc.attacks.base import AttackResult, Matcher, Timer
from selenc.config import THREAT_MODELS, derive_seed
from selenc.models import Batch, Victim
from selenc.observed import ObservedUpdate

MAX_LABEL_CANDIDATES = 16  # label multisets probed at most
ORDER_TOLERANCE = 1e-3  # relative residual under which the position decomposition counts as exact
PROBE_FRACTION = 0.1  # share of the step budget each label candidate gets before the best one continues
MIN_PROBE_STEPS = 10
LAMP_LAYERWISE = True  # lamp's distance: LAMP's per-tensor cosine (False: the Matcher's global cosine)
HOLD = 0.5  # fraction of the budget at the full learning rate before the linear decay to 0.1x


# --- the model's embedding tables, head and tokenizer frame -------------------------------------------------------
def _param(victim: Victim, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    return next((n, p) for n, p in victim.model.named_parameters() if p is tensor)


def word_embedding(victim: Victim) -> tuple[str, torch.Tensor]:
    """(name, parameter) of the token-embedding table."""
    return _param(victim, victim.model.get_input_embeddings().weight)


def position_embedding(victim: Victim) -> tuple[str, torch.Tensor] | None:
    """(name, parameter) of the learned absolute position embeddings (BERT, GPT-2), or None."""
    layer = input_layer(victim)
    return None if layer is None else _param(victim, layer[0])


def input_layer(victim: Victim) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
    """How the model turns word embeddings into its first hidden states: (position table, constant offset, whether a
    LayerNorm follows). BERT: LN(w + pos + type_0); GPT-2: w + wpe (its LayerNorms sit inside the blocks)."""
    model = victim.model
    if hasattr(model, "bert"):
        emb = model.bert.embeddings
        return emb.position_embeddings.weight, emb.token_type_embeddings.weight.detach()[0], True
    if hasattr(model, "transformer") and hasattr(model.transformer, "wpe"):
        wpe = model.transformer.wpe.weight
        return wpe, torch.zeros_like(wpe[0]).detach(), False
    return None


def head_bias(victim: Victim) -> tuple[str, torch.Tensor] | None:
    """(name, parameter) of the classification head's bias (BERT's `classifier.bias`); None without one (GPT-2)."""
    head = getattr(victim.model, "classifier", None) or getattr(victim.model, "score", None)
    bias = getattr(head, "bias", None)
    return None if bias is None else _param(victim, bias)


def frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after every sentence (BERT: [CLS] / [SEP]; GPT-2: none)."""
    inner = tokenizer("a", add_special_tokens=False)["input_ids"]
    outer = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(outer)) if outer[i : i + len(inner)] == inner)
    return outer[:start], outer[start + len(inner) :]


def _excluded(tokenizer) -> list[int]:
    """Special tokens that never occur inside a sentence ([UNK] can, so it stays)."""
    return sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id})


def _strip(tokenizer, ids: list[int]) -> list[int]:
    special = set(tokenizer.all_special_ids)
    return [i for i in ids if i not in special]


def _check_threat_model(threat_model: str) -> None:
    if threat_model not in THREAT_MODELS:
        raise ValueError(f"unknown threat model {threat_model!r}; allowed: {', '.join(THREAT_MODELS)}")


class SeenRows:
    """Parameters' updates as the attacker reads them: `ObservedUpdate.rows` (values with hidden entries 0, bool mask of
    visible entries) with the zero-filled vector built once; zero_fill takes every coordinate as seen."""

    def __init__(self, observed: ObservedUpdate, threat_model: str):
        _check_threat_model(threat_model)
        self.observed, self.threat_model = observed, threat_model
        self._full: torch.Tensor | None = None

    def __call__(self, name: str, shape) -> tuple[torch.Tensor, torch.Tensor]:
        if self._full is None:
            self._full = self.observed.zero_filled()
        span = self.observed.layout.span(name)
        values = self._full[span].view(tuple(shape))
        if self.threat_model == "zero_fill":
            return values, torch.ones(values.shape, dtype=torch.bool, device=values.device)
        return values, (~self.observed.mask[span]).view(tuple(shape)).to(values.device)


def _reader(observed: ObservedUpdate, threat_model: str, rows: SeenRows | None) -> SeenRows:
    return rows if rows is not None else SeenRows(observed, threat_model)


# --- what the update reveals without optimisation --------------------------------------------------------------
@dataclass(frozen=True)
class Leakage:
    """Token-embedding rows: leaked (a seen entry is non-zero), unknown (no entry seen), absent (seen, all zero)."""

    leaked: torch.Tensor  # ids of tokens in the batch, ascending
    unknown: torch.Tensor  # ids whose row is fully hidden: in the batch or not, only the client knows
    vocab_size: int

    @property
    def candidates(self) -> torch.Tensor:
        """Every token that can be in the batch given what is seen: leaked ∪ unknown, ascending."""
        return torch.cat([self.leaked, self.unknown]).sort().values


def leakage(
    observed: ObservedUpdate, victim: Victim, threat_model: str = "mask_aware", rows: SeenRows | None = None
) -> Leakage:
    """Read the token set off the token-embedding gradient: a row is non-zero iff its token is in the batch."""
    name, table = word_embedding(victim)
    values, seen = _reader(observed, threat_model, rows)(name, table.shape)
    leaked = ((values != 0) & seen).any(1)
    unknown = ~seen.any(1)
    return Leakage(leaked.nonzero().flatten().cpu(), unknown.nonzero().flatten().cpu(), table.shape[0])


def sequence_length(
    observed: ObservedUpdate,
    victim: Victim,
    threat_model: str,
    leak: Leakage | None = None,
    rows: SeenRows | None = None,
) -> tuple[int, str]:
    """The batch's padded length T (frame tokens included) and how it was found.

    A position row counts as used when a seen entry is non-zero, as unused when its seen entries are all zero (a
    used row is dense), and as unknown when fully hidden. Used rows are 0..T−1, so T is pinned when the last used
    row is followed by an unused one (or by max_length): `position_rows`. Otherwise T is the largest of the known
    lower bounds (last used row + 1, distinct leaked tokens / B), capped by the first unused row; with no position
    row and no token row seen, the public max_length.
    """
    max_len = victim.input_shape[0]
    prefix, suffix = frame(victim.tokenizer)
    shortest = len(prefix) + len(suffix) + 1
    lo, hi, used_any = 0, max_len, False
    pos = position_embedding(victim)
    if pos is not None:
        name, table = pos
        values, seen = _reader(observed, threat_model, rows)(name, table.shape)
        values, seen = values[:max_len], seen[:max_len]
        used = ((values != 0) & seen).any(1)
        if used.any():
            used_any = True
            lo = int(used.nonzero().max()) + 1
            unused_after = (seen.any(1) & ~used)[lo:].nonzero().flatten()
            hi = lo + int(unused_after[0]) if unused_after.numel() else max_len
            if lo == hi:
                return max(lo, shortest), "position_rows"
    distinct = 0 if leak is None else -(-len(leak.leaked) // observed.public.batch_size)
    if distinct:
        source = "position_rows+leaked_tokens" if used_any else "leaked_tokens"
        return min(max(lo, distinct, shortest), hi), source
    if used_any:
        return max(lo, shortest), "position_rows_lower_bound"
    return max_len, "max_length"


def label_candidates(
    observed: ObservedUpdate, victim: Victim, threat_model: str, rows: SeenRows | None = None
) -> tuple[list[tuple[int, ...]], str]:
    """Label multisets (sorted tuples) consistent with the head's bias gradient, and where they came from.

    FedSGD: the bias gradient is g_c = p̄_c − n_c/B (p̄_c the batch's mean softmax, n_c the count of label c), so
    0 < g_c + n_c/B < 1 for every class whose entry is seen; at B = 1 only the true label passes (iDLG). FedAvg: the
    same test on update/(lr·steps) with a tolerance. Without a seen bias (GPT-2's `score` has none) every multiset
    remains (`probe`: the attack tries them). If none passes (zero_fill reading a hidden bias as 0), all remain.
    """
    info = observed.public
    batch, classes = info.batch_size, info.num_classes
    every = list(itertools.combinations_with_replacement(range(classes), batch))[:MAX_LABEL_CANDIDATES]
    bias = head_bias(victim)
    if bias is None:
        return every, "probe"
    name, param = bias
    values, seen = _reader(observed, threat_model, rows)(name, param.shape)
    if not seen.any():
        return every, "probe"
    upd = info.update
    scale, tol = (1.0, 1e-6) if upd.kind == "fedsgd" else (upd.local_lr * upd.local_steps, 0.05)
    g, seen = (values.double() / scale).cpu(), seen.cpu()

    def feasible(labels: tuple[int, ...]) -> bool:
        p = g + torch.bincount(torch.tensor(labels), minlength=classes).double() / batch
        return bool(((p > -tol) & (p < 1 + tol))[seen].all())

    kept = [c for c in every if feasible(c)]
    if not kept:
        return every, "probe"
    return kept, "head_bias" if len(kept) == 1 else "head_bias+probe"


def order_by_positions(
    observed: ObservedUpdate, victim: Victim, threat_model: str, leak: Leakage, rows: SeenRows | None = None
) -> list[int] | None:
    """B = 1: the whole token sequence (order and repeats) from the embedding gradients, or None.

    Position row p's gradient is e_p (the gradient at position p) and word row v's is Σ e_p over the positions
    holding v: R = A·G with A the 0/1 token-by-position assignment. Least squares on the columns seen in every
    involved row, rounded to one token per position, is accepted only if it reproduces R (relative residual below
    1e-3) and uses every leaked token. Needs T pinned by the position rows, no fully hidden word row and at least T
    commonly seen columns (G has rank T ≤ E generically).
    """
    pos = position_embedding(victim)
    if pos is None or observed.public.batch_size != 1 or leak.unknown.numel() or not leak.leaked.numel():
        return None
    reader = _reader(observed, threat_model, rows)
    length, source = sequence_length(observed, victim, threat_model, leak, reader)
    if source != "position_rows":
        return None
    name, table = pos
    p_vals, p_seen = reader(name, table.shape)
    w_name, w_table = word_embedding(victim)
    w_vals, w_seen = reader(w_name, w_table.shape)
    ids = leak.leaked.to(w_vals.device)
    cols = p_seen[:length].all(0) & w_seen[ids].all(0)
    if int(cols.sum()) < length:
        return None
    g = p_vals[:length][:, cols].double()
    r = w_vals[ids][:, cols].double()
    a = torch.linalg.lstsq(g.T, r.T).solution.T  # (K, T)
    assign = a.argmax(0)
    if assign.unique().numel() != ids.numel():
        return None
    residual = (r - F.one_hot(assign, ids.numel()).T.double() @ g).norm() / r.norm().clamp_min(1e-30)
    if residual > ORDER_TOLERANCE:
        return None
    return leak.leaked[assign.cpu()].tolist()


def token_leakage(
    observed: ObservedUpdate, victim: Victim, cfg=None, threat_model: str = "mask_aware", seed: int = 0
) -> AttackResult:
    """Analytic: the batch's token set from the non-zero token-embedding rows; at B = 1 the full sentence when the
    position decomposition is exact (then also the label, by testing each candidate on the recovered sentence)."""
    with Timer() as timer:
        reader = SeenRows(observed, threat_model)
        batch = observed.public.batch_size
        tok = victim.tokenizer
        leak = leakage(observed, victim, threat_model, reader)
        bag = _strip(tok, leak.leaked.tolist())
        ordered = order_by_positions(observed, victim, threat_model, leak, reader)
        token_ids = [_strip(tok, ordered)] if ordered is not None else [list(bag) for _ in range(batch)]
        length, length_source = sequence_length(observed, victim, threat_model, leak, reader)
        cands, label_source = label_candidates(observed, victim, threat_model, reader)
        labels = cands[0]
        if len(cands) > 1 and ordered is not None and observed.public.update.kind == "fedsgd":
            objective = Objective(observed, victim, threat_model)
            if not objective.blind:
                ids = torch.tensor([ordered], device=victim.device)
                losses = []
                for c in cands:
                    dummy = Batch(ids, torch.tensor(c, device=victim.device), torch.ones_like(ids))
                    losses.append(float(objective.l2_l1(objective.update(dummy, create_graph=False), 0.0)))
                labels = cands[min(range(len(cands)), key=losses.__getitem__)]
                label_source += "+exact_tokens"
    return AttackResult(
        labels=torch.tensor(labels),
        token_ids=token_ids,
        texts=[tok.decode(ids) for ids in token_ids],
        seconds=timer.seconds,
        info={
            "threat_model": threat_model,
            "leaked_tokens": len(bag),
            "leaked_ids": bag,
            "unknown_rows": int(leak.unknown.numel()),
            "ordered": ordered is not None,
            "counts": "exact (B=1 position decomposition)" if ordered is not None else "set only (one copy each)",
            "length": length,
            "length_source": length_source,
            "label_source": label_source,
        },
    )


# --- the gradient distance on the coordinates a dummy can move -------------------------------------------------
class Objective:
    """The Matcher's distance, computed per parameter on the coordinates an embedding dummy can move.

    The token-embedding coordinates (identically zero for an embedding dummy) are dropped and their constant added
    back, so `l2_l1` and `cosine` equal `Matcher.l2_l1` / `Matcher.cosine` on the same dummy batch. The per-parameter
    pieces are never concatenated (one extra copy of ~11M coordinates per step costs about as much as BERT's layers
    on CPU), the gradient is taken only for parameters with a compared coordinate, and the target pieces are cut
    once. FedSGD only; a FedAvg update goes through `Matcher.dummy_update` (same values, slower).
    """

    def __init__(self, observed: ObservedUpdate, victim: Victim, threat_model: str):
        self.matcher = Matcher(observed, victim, threat_model)
        self.victim = victim
        self.generic = self.matcher.update_cfg.kind != "fedsgd"
        self.const_sq = self.const_abs = 0.0
        self.leaves: list[torch.Tensor] = []
        self.locs: list[torch.Tensor | None] = []
        self.targets: list[torch.Tensor] = []
        layout = observed.layout
        named = dict(victim.model.named_parameters())
        word_name, _ = word_embedding(victim)
        index, target = self.matcher.index, self.matcher.target
        self.sizes: list[int] = []  # compared coordinates per parameter (FedAvg splits the Matcher's vector by them)
        for name, a, b in zip(layout.names, layout.offsets[:-1], layout.offsets[1:], strict=True):
            if index is None:
                local, t = None, target[a:b]
            else:
                lo, hi = torch.searchsorted(index, torch.tensor([a, b], device=index.device)).tolist()
                local, t = index[lo:hi] - a, target[lo:hi]
                local = None if local.numel() == b - a else local
            self.sizes.append(t.numel())
            if self.generic:
                self.targets.append(t)
            elif name == word_name:  # the dummy's gradient is 0 here: a constant
                self.const_sq += float(t.double().square().sum())
                self.const_abs += float(t.double().abs().sum())
            elif t.numel():
                self.leaves.append(named[name])
                self.locs.append(local)
                self.targets.append(t)
        self.full_norm = float((sum(float(t.double().square().sum()) for t in self.targets) + self.const_sq) ** 0.5)
        self.target_norms = [float(t.double().norm()) for t in self.targets]

    @property
    def blind(self) -> bool:
        return self.matcher.blind

    def update(self, batch: Batch, create_graph: bool = True) -> list[torch.Tensor]:
        """The compared coordinates of the dummy batch's update, one flat piece per parameter."""
        if self.generic:
            out = self.matcher.dummy_update(batch)
            return list((out if create_graph else out.detach()).split(self.sizes))
        loss = self.victim.loss(batch)
        grads = torch.autograd.grad(loss, self.leaves, create_graph=create_graph, materialize_grads=True)
        return [
            g.reshape(-1) if loc is None else g.reshape(-1).index_select(0, loc)
            for g, loc in zip(grads, self.locs, strict=True)
        ]

    def l2_l1(self, pieces: list[torch.Tensor], alpha: float) -> torch.Tensor:
        """‖d − t‖² + α·‖d − t‖₁ over every coordinate the Matcher compares."""
        total = sum(_L2L1.apply(d, t, alpha) for d, t in zip(pieces, self.targets, strict=True))
        return total + (self.const_sq + alpha * self.const_abs)

    def cosine(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """1 − cos(d, t) over every coordinate the Matcher compares; 0 (no signal) when blind or the target is 0."""
        if self.blind or self.full_norm == 0:
            return sum(d.sum() for d in pieces) * 0.0
        dot = sum(d.dot(t) for d, t in zip(pieces, self.targets, strict=True))
        norm = sum(d.dot(d) for d in pieces).clamp_min(1e-16).sqrt()
        return 1.0 - dot / (norm * max(self.full_norm, 1e-8))

    def layer_cosine(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """LAMP's distance: the mean over parameter tensors of 1 − cos(d_i, t_i), each tensor on its compared
        coordinates (the reference code's `grad_dist`); tensors with an all-zero target or that the dummy cannot
        reach (the token table) are left out, as the reference skips parameters without a gradient."""
        terms = [
            1.0 - d.dot(t) / (d.norm().clamp_min(1e-12) * norm)
            for d, t, norm in zip(pieces, self.targets, self.target_norms, strict=True)
            if norm > 0
        ]
        if self.blind or not terms:
            return sum(d.sum() for d in pieces) * 0.0
        return sum(terms) / len(terms)


class _L2L1(torch.autograd.Function):
    """Σ (d − t)² + α·Σ |d − t|, its gradient 2(d − t) + α·sign(d − t) formed in the forward pass (two passes over the
    vector instead of autograd's eight). First-order only: the attack differentiates it once."""

    @staticmethod
    def forward(ctx, d: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
        diff = d - t
        value = diff.dot(diff) + alpha * torch.linalg.vector_norm(diff, 1)
        ctx.save_for_backward(torch.sign(diff).mul_(alpha).add_(diff, alpha=2.0))
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (g,) = ctx.saved_tensors
        return grad * g, None, None


# --- the dummy sentences ---------------------------------------------------------------------------------------------
def vocabulary(leak: Leakage, tokenizer, restrict: bool) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    """(allowed, required, why): the tokens a position may decode to (None = the full vocabulary) and the leaked tokens
    the decoded batch must contain at least once each (None = no such constraint); see the module docstring."""
    if not restrict:
        return None, None, "full (restrict_vocab off)"
    excluded = torch.tensor(_excluded(tokenizer), dtype=torch.long)
    cands = leak.candidates
    cands = cands[~torch.isin(cands, excluded)]
    if cands.numel() == 0:
        return None, None, "full (no token row seen)"
    if cands.numel() + excluded.numel() >= leak.vocab_size:
        return None, None, "full (embedding rows encrypted)"
    required = leak.leaked[~torch.isin(leak.leaked, excluded)]
    return cands, required, "leaked" if leak.unknown.numel() == 0 else "leaked+hidden_rows"


class Dummy:
    """The attacker's B dummy sentences of length T as free embeddings of the inner positions.

    The tokenizer's frame ([CLS] … [SEP] for BERT) is fixed to its true embeddings. The inner embeddings start from
    N(mean, std) of the vocabulary table per dimension.
    """

    def __init__(
        self,
        victim: Victim,
        batch: int,
        length: int,
        allowed: torch.Tensor | None,
        gen: torch.Generator,
        required: torch.Tensor | None = None,
    ):
        tok = victim.tokenizer
        self.table = victim.model.get_input_embeddings().weight.detach()
        device = self.table.device
        vocab, width = self.table.shape
        self.prefix, self.suffix = frame(tok)
        self.batch = batch
        self.n_free = length - len(self.prefix) - len(self.suffix)
        if self.n_free < 1:
            raise ValueError(f"sequence length {length} leaves no token inside the frame")
        allowed = torch.arange(vocab) if allowed is None else allowed.cpu()
        self.allowed = allowed[~torch.isin(allowed, torch.tensor(_excluded(tok), dtype=torch.long))].to(device)
        self.required: torch.Tensor | None = None  # columns of self.allowed that must each be decoded at least once
        if required is not None and 0 < required.numel() <= batch * self.n_free:
            cols = torch.searchsorted(self.allowed.cpu(), required.cpu())
            if bool((self.allowed.cpu()[cols.clamp_max(self.allowed.numel() - 1)] == required.cpu()).all()):
                self.required = cols.to(device)
        self.typical_norm = float(self.table.norm(dim=1).mean())
        self.rms = float(self.table.square().mean().sqrt())
        layer = input_layer(victim)
        self.input_layer = None if layer is None else (layer[0].detach(), layer[1], layer[2])
        mean, std = self.table.mean(0).cpu(), self.table.std(0).cpu()
        init = mean + std * torch.randn(batch, self.n_free, width, generator=gen)
        self.param = init.to(device).requires_grad_()
        self._fixed = [self.table[torch.tensor(i, dtype=torch.long, device=device)] for i in (self.prefix, self.suffix)]

    def _framed(self, inner: torch.Tensor) -> torch.Tensor:
        pre, suf = (t.unsqueeze(0).expand(inner.shape[0], -1, -1) for t in self._fixed)
        return torch.cat([pre, inner, suf], 1)

    def embeds(self) -> torch.Tensor:
        """(B, T, E) embeddings of the current state."""
        return self._framed(self.param)

    def embeds_of(self, inner_ids: torch.Tensor) -> torch.Tensor:
        """(B, T, E) embeddings of discrete tokens at the inner positions."""
        return self._framed(self.table[inner_ids])

    def inner(self, embeds: torch.Tensor) -> torch.Tensor:
        return embeds[:, len(self.prefix) : len(self.prefix) + self.n_free]

    @torch.no_grad()
    def scores(self) -> torch.Tensor:
        """(B, P, V): how well inner slot p of each sample matches each allowed token (higher is better; see the
        module docstring: Decoding). Without a position table: −‖x_p − w_v‖² up to a per-slot constant. With one,
        each dummy vector is first assigned one-to-one to the position q whose embedding it carries."""
        words = self.table[self.allowed]  # (V, E)
        if self.input_layer is None:
            return 2 * self.param @ words.T - words.square().sum(1)
        pos_table, offset, normalised = self.input_layer
        first = len(self.prefix)
        inner = pos_table[first : first + self.n_free] + offset  # (Q, E)
        seen = self.param + inner  # (B, P, E): what the model adds up at each dummy position
        if normalised:  # LayerNorm: compare mean-centred directions
            inner = inner - inner.mean(1, keepdim=True)
            words = words - words.mean(1, keepdim=True)
            seen = seen - seen.mean(-1, keepdim=True)
            seen = seen / seen.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        norms = words.square().sum(1, keepdim=True) + 2 * words @ inner.T + inner.square().sum(1)  # ‖w_v + pos_q‖²

        def score(dots: torch.Tensor, q) -> torch.Tensor:  # dots = s_p · (w_v + pos_q)
            return dots / norms[:, q].clamp_min(1e-24).sqrt() if normalised else 2 * dots - norms[:, q]

        out = torch.empty(self.batch, self.n_free, words.shape[0], device=seen.device)
        for b in range(self.batch):
            a, c = seen[b] @ words.T, seen[b] @ inner.T  # (P, V), (P, Q)
            best = torch.stack(
                [score(a[p].unsqueeze(1) + c[p].unsqueeze(0), slice(None)).amax(0) for p in range(self.n_free)]
            )
            rows, cols = linear_sum_assignment(best.cpu().numpy(), maximize=True)
            for p, q in zip(rows.tolist(), cols.tolist(), strict=True):
                out[b, q] = score(a[p] + c[p, q], q)
        return out

    @torch.no_grad()
    def project(self) -> torch.Tensor:
        """(B, T_inner) token ids decoded from the current state: each slot's best token, except that every required
        (leaked) token is decoded at least once: an assignment of slots to the required tokens plus free slots that
        maximises the summed score (Hungarian)."""
        scores = self.scores()
        ids = scores.argmax(-1)
        if self.required is not None:
            flat = scores.reshape(-1, scores.shape[-1])
            k = self.required.numel()
            free = flat.amax(1, keepdim=True).expand(-1, flat.shape[0] - k)
            rows, cols = linear_sum_assignment(
                torch.cat([flat[:, self.required], free], 1).cpu().numpy(), maximize=True
            )
            take = cols < k
            flat_ids = ids.reshape(-1)
            flat_ids[torch.as_tensor(rows[take], device=ids.device)] = self.required[torch.as_tensor(cols[take])]
        return self.allowed[ids]

    @torch.no_grad()
    def permute_(self, sample: int, perm: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Reorder one sample's inner positions (and its Adam moments) by `perm`."""
        state = optimizer.state.get(self.param, {}).values()
        for t in [self.param, *(v for v in state if torch.is_tensor(v) and v.shape == self.param.shape)]:
            t[sample] = t[sample, perm.to(t.device)]


def _proposal(n: int, gen: torch.Generator) -> torch.Tensor:
    """A random reordering of n positions (LAMP's moves): swap two tokens, move one token, or move a span."""
    while True:  # a span put back where it was is the identity: draw again
        perm = _move(n, gen)
        if perm != list(range(n)):
            return torch.tensor(perm, dtype=torch.long)


def _move(n: int, gen: torch.Generator) -> list[int]:
    perm = list(range(n))
    kind = int(torch.randint(3, (1,), generator=gen))
    i, j = sorted(torch.randperm(n, generator=gen)[:2].tolist())
    if kind == 0:
        perm[i], perm[j] = perm[j], perm[i]
    elif kind == 1:
        src, dst = (i, j) if bool(torch.randint(2, (1,), generator=gen)) else (j, i)
        perm.insert(dst, perm.pop(src))
    else:
        span, rest = perm[i : j + 1], perm[:i] + perm[j + 1 :]
        at = int(torch.randint(len(rest) + 1, (1,), generator=gen))
        perm = rest[:at] + span + rest[at:]
    return perm


# --- the optimisation attacks ----------------------------------------------------------------------------------------
def _lr_factor(frac: float) -> float:
    """Full rate for the first HOLD of the budget, then a linear decay to 0.1x."""
    return 1.0 if frac < HOLD else 1.0 - 0.9 * (frac - HOLD) / (1.0 - HOLD)


class _Run:
    """One optimisation from one init under one label hypothesis."""

    def __init__(self, dummy: Dummy, labels: tuple[int, ...], loss_fn: Callable, lr: float, steps: int, hook=None):
        self.dummy, self.labels, self.loss_fn, self.lr, self.steps, self.hook = dummy, labels, loss_fn, lr, steps, hook
        self.opt = torch.optim.Adam([dummy.param], lr=lr)
        self.t = 0
        self.losses: list[float] = []
        self.best: tuple[float, torch.Tensor] | None = None  # best discrete (distance, ids) the hook has seen

    def advance(self, n: int) -> None:
        for _ in range(n):
            if self.t >= self.steps:
                return
            for group in self.opt.param_groups:
                group["lr"] = self.lr * _lr_factor(self.t / self.steps)
            loss = self.loss_fn(self.dummy.embeds(), self.labels)
            (self.dummy.param.grad,) = torch.autograd.grad(loss, [self.dummy.param])
            self.opt.step()
            self.losses.append(float(loss.detach()))
            self.t += 1
            if self.hook is not None:
                self.hook(self)


def _reorder(run: _Run, candidates: int, distance: Callable, gen: torch.Generator) -> None:
    """LAMP's discrete phase: `candidates` reorderings of one sample's embeddings scored by the gradient distance;
    the best replaces the state if lower. The state's projection is scored and kept if the best so far."""
    dummy = run.dummy
    inner = slice(len(dummy.prefix), len(dummy.prefix) + dummy.n_free)
    base = dummy.embeds().detach()
    best = (distance(base, run.labels), None, None)
    if dummy.n_free >= 2:
        for _ in range(candidates):
            sample = int(torch.randint(dummy.batch, (1,), generator=gen))
            perm = _proposal(dummy.n_free, gen).to(base.device)
            moved = base.clone()
            moved[sample, inner] = base[sample, inner][perm]
            value = distance(moved, run.labels)
            if value < best[0]:
                best = (value, sample, perm)
    if best[1] is not None:
        dummy.permute_(best[1], best[2], run.opt)
    ids = dummy.project()
    value = distance(dummy.embeds_of(ids), run.labels)
    if run.best is None or value < run.best[0]:
        run.best = (value, ids)


def _polish(ids: torch.Tensor, value: float, steps: int, distance: Callable, gen: torch.Generator):
    """LAMP's discrete search on decoded tokens: `steps` random reorderings (swap two tokens, move a token, move a
    span) of one sample's tokens, each kept when it lowers the gradient distance (first-improvement hill climbing).
    Returns the best (distance, ids)."""
    batch, n = ids.shape
    if n < 2:
        return value, ids
    for _ in range(steps):
        sample = int(torch.randint(batch, (1,), generator=gen))
        moved = ids.clone()
        moved[sample] = ids[sample, _proposal(n, gen).to(ids.device)]
        candidate = distance(moved)
        if candidate < value:
            value, ids = candidate, moved
    return value, ids


def _optimisation_attack(
    observed: ObservedUpdate, victim: Victim, cfg, threat_model: str, seed: int, method: str
) -> AttackResult:
    with Timer() as timer:
        tok = victim.tokenizer
        device = victim.device
        batch = observed.public.batch_size
        reader = SeenRows(observed, threat_model)
        leak = leakage(observed, victim, threat_model, reader)
        length, length_source = sequence_length(observed, victim, threat_model, leak, reader)
        cands, label_source = label_candidates(observed, victim, threat_model, reader)
        allowed, required, vocab_source = vocabulary(leak, tok, cfg.restrict_vocab)
        objective = Objective(observed, victim, threat_model)
        mask = torch.ones(batch, length, dtype=torch.long, device=device)

        def make_dummy(restart: int) -> Dummy:
            gen = torch.Generator().manual_seed(derive_seed(seed, method, "init", restart))
            return Dummy(victim, batch, length, allowed, gen, required)

        def match(embeds: torch.Tensor, labels, create_graph: bool = True) -> torch.Tensor:
            dummy_batch = Batch(embeds, torch.tensor(labels, dtype=torch.long, device=device), mask)
            pieces = objective.update(dummy_batch, create_graph)
            if method == "tag":
                return objective.l2_l1(pieces, cfg.alpha)
            return objective.layer_cosine(pieces) if LAMP_LAYERWISE else objective.cosine(pieces)

        def distance(embeds: torch.Tensor, labels) -> float:
            return float(match(embeds, labels, create_graph=False))

        first = make_dummy(0)

        def loss_fn(embeds: torch.Tensor, labels) -> torch.Tensor:
            loss = match(embeds, labels)
            if method == "lamp" and cfg.embedding_reg:
                norms = first.inner(embeds).norm(dim=-1) / first.typical_norm
                loss = loss + cfg.embedding_reg * (norms - 1).square().mean()
            return loss

        info = {
            "method": method,
            "threat_model": threat_model,
            "length": length,
            "length_source": length_source,
            "vocab": vocab_source,
            "vocab_size": int(allowed.numel()) if allowed is not None else int(leak.vocab_size),
            "leaked_tokens": int(leak.leaked.numel()),
            "label_candidates": len(cands),
            "label_source": label_source,
            "steps": cfg.steps,
            "restarts": cfg.restarts,
        }
        if method == "lamp":
            info["lm_prior"] = "none: no pretrained language model offline; candidates ranked by gradient distance"
        lr = cfg.lr * first.rms
        if objective.blind:  # nothing to match: the prior is the answer
            inner_ids, labels, losses = first.project(), cands[0], []
            info["blind"] = True
        else:
            best, restart_scores = None, []
            for restart in range(cfg.restarts):
                hook = None
                if method == "lamp":
                    moves = torch.Generator().manual_seed(derive_seed(seed, method, "moves", restart))

                    def hook(run: _Run, moves=moves) -> None:
                        if run.t % cfg.reorder_every == 0 and run.t < run.steps:
                            _reorder(run, cfg.reorder_candidates, distance, moves)

                runs = [_Run(make_dummy(restart), c, loss_fn, lr, cfg.steps, hook) for c in cands]
                run = runs[0]
                if len(runs) > 1:  # probe every label hypothesis from the same init, continue the best
                    probe = min(cfg.steps, max(MIN_PROBE_STEPS, int(PROBE_FRACTION * cfg.steps)))
                    for r in runs:
                        r.advance(probe)
                    tails = [sum(r.losses[-5:]) / len(r.losses[-5:]) for r in runs]
                    info.setdefault("label_probe_losses", []).append(tails)
                    run = runs[min(range(len(runs)), key=tails.__getitem__)]
                run.advance(cfg.steps)
                ids = run.dummy.project()
                found = (distance(run.dummy.embeds_of(ids), run.labels), ids)
                if run.best is not None and run.best[0] < found[0]:
                    found = run.best
                if method == "lamp" and cfg.polish:
                    gen = torch.Generator().manual_seed(derive_seed(seed, method, "polish", restart))
                    found = _polish(
                        found[1],
                        found[0],
                        cfg.polish,
                        lambda ids, r=run: distance(r.dummy.embeds_of(ids), r.labels),
                        gen,
                    )
                restart_scores.append(found[0])
                if best is None or found[0] < best[0]:
                    best = (found[0], found[1], run.labels, run.losses)
            _, inner_ids, labels, losses = best
            info["restart_distances"] = restart_scores
        token_ids = [_strip(tok, row) for row in inner_ids.tolist()]
    return AttackResult(
        labels=torch.tensor(labels),
        token_ids=token_ids,
        texts=[tok.decode(ids) for ids in token_ids],
        losses=losses,
        seconds=timer.seconds,
        info=info,
    )


def tag(observed: ObservedUpdate, victim: Victim, cfg, threat_model: str = "mask_aware", seed: int = 0) -> AttackResult:
    """TAG: Adam on L2 + α·L1 gradient distance over free token embeddings, then decoding to tokens."""
    return _optimisation_attack(observed, victim, cfg, threat_model, seed, "tag")


def lamp(
    observed: ObservedUpdate, victim: Victim, cfg, threat_model: str = "mask_aware", seed: int = 0
) -> AttackResult:
    """LAMP-style: cosine distance + embedding-norm regulariser with reordering phases (no language-model prior)."""
    return _optimisation_attack(observed, victim, cfg, threat_model, seed, "lamp")


ATTACKS: dict[str, Callable] = {"token_leakage": token_leakage, "tag": tag, "lamp": lamp}
