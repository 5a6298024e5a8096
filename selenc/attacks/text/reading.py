"""What a text update gives away without optimisation, read off the server's view of the embedding gradients.

**What the embedding gradients give away.** Row v of the token-embedding gradient is non-zero iff token v is in the
batch. Row p of the position-embedding gradient is non-zero iff some sentence reaches position p (padding is masked
out of attention; a decoder pools the last real position and is causal), so the used rows are exactly 0..T−1. With one
sentence (B = 1) more leaks: the embedding layer adds word row v and position row p at each position, so position
row p's gradient is the gradient e_p of that position, and word row v's is the sum of e_p over the positions holding
v. Least squares then recovers the whole sentence, order and repeats included (`order_by_positions`).

**Sequence length.** From the position rows (`sequence_length`): exact when they pin it down; otherwise estimated
from the rows that are seen and the number of distinct leaked tokens (a lower bound), else the public max_length.

**Labels** (`label_candidates`). An encoder head's bias gradient g_c = p̄_c − n_c/B leaves at B = 1 exactly the true
label (iDLG); label multisets are filtered by 0 < g_c + n_c/B < 1. A decoder's `score` head has no bias: the classifier
gradient of a binary head is matched equally well by the wrong label with a negated feature, so every candidate
multiset (B+1 for two classes) is left to the optimisation attacks to probe.

**Reading the mask** (`base.mask_boundary`): under a support-revealing metric every hidden coordinate past the
first visible zero is non-zero. A fully hidden token row past that boundary is a token of the batch; hidden rows
before it may be the zeros that index-ordered ties filled the budget with, and stay unknown. With a shared mask the
support read is the union of the K clients' supports. A mask of unknown origin (metric None) or of a data-independent
metric says nothing.

**Threat models** (`SeenRows`): mask_aware reads the visible entries and the mask; zero_fill reads every entry with
hidden ones as 0 (so it has no unknown rows) and ignores the mask.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selenc.attacks.base import known_nonzero, mask_boundary
from selenc.models import Victim
from selenc.observed import ObservedUpdate
from selenc.settings import THREAT_MODELS

MAX_LABEL_CANDIDATES = 16  # label multisets probed at most
ORDER_TOLERANCE = 1e-3  # relative residual under which the position decomposition counts as exact


# --- the tokenizer's frame ------------------------------------------------------------------------------------
def frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after every sentence (WordPiece: [CLS] / [SEP]; byte-level BPE:
    none)."""
    inner = tokenizer("a", add_special_tokens=False)["input_ids"]
    outer = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(outer)) if outer[i : i + len(inner)] == inner)
    return outer[:start], outer[start + len(inner) :]


def excluded(tokenizer) -> list[int]:
    """Special tokens that never occur inside a sentence ([UNK] can, so it stays)."""
    return sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id})


def strip(tokenizer, ids: list[int]) -> list[int]:
    special = set(tokenizer.all_special_ids)
    return [i for i in ids if i not in special]


def _check_threat_model(threat_model: str) -> None:
    if threat_model not in THREAT_MODELS:
        raise ValueError(f"unknown threat model {threat_model!r}; allowed: {', '.join(THREAT_MODELS)}")


class SeenRows:
    """Parameters' updates as the attacker reads them: `ObservedUpdate.rows` (values with hidden entries 0, bool mask of
    visible entries) with the zero-filled vector built once; zero_fill takes every coordinate as seen. `nonzero` adds
    what the mask gives away (mask_aware only)."""

    def __init__(self, observed: ObservedUpdate, threat_model: str):
        _check_threat_model(threat_model)
        self.observed, self.threat_model = observed, threat_model
        self._full: torch.Tensor | None = None
        self.boundary = mask_boundary(observed) if threat_model == "mask_aware" else None
        self._known: torch.Tensor | None = None  # `known_nonzero`, built on first use

    @property
    def mask_reading(self) -> str:
        """What the attacker reads off the mask, in words (an attack's `info`)."""
        metric = self.observed.public.metric
        if self.threat_model == "zero_fill":
            return "none (zero_fill ignores the mask)"
        if self.boundary is None:
            return f"none (metric {metric} does not reveal the support, or nothing / everything is hidden)"
        whose = "some client's" if self.observed.public.mask_source == "shared" else "the client's"
        return f"support: hidden coordinates past flat index {self.boundary} are non-zero in {whose} update ({metric})"

    def nonzero(self, name: str, shape) -> torch.Tensor:
        """Entries known to be non-zero: visible non-zero ones, and hidden ones past `mask_boundary`."""
        values, seen = self(name, shape)
        known = (values != 0) & seen
        if self.boundary is not None:
            if self._known is None:
                self._known = known_nonzero(self.observed, self.boundary)
            span = self.observed.layout.span(name)
            known |= self._known[span].view(tuple(shape)).to(known.device)
        return known

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
    """Token-embedding rows: leaked (an entry is known non-zero: seen, or read off the mask), unknown (fully hidden and
    not read), absent (seen, all zero)."""

    leaked: torch.Tensor  # ids of tokens in the batch, ascending
    unknown: torch.Tensor  # ids whose row is fully hidden and not read off the mask: only the client knows
    vocab_size: int
    from_mask: torch.Tensor  # the leaked ids with no visible non-zero entry: read off the mask alone

    @property
    def candidates(self) -> torch.Tensor:
        """Every token that can be in the batch given what is seen: leaked ∪ unknown, ascending."""
        return torch.cat([self.leaked, self.unknown]).sort().values

    @staticmethod
    def unite(readings: list[Leakage]) -> Leakage:
        """What several rounds over the same batch say together: a token leaked in any round is in the batch, a row
        is unknown only if no round showed or leaked it, and read off the mask alone if no round showed it."""
        leaked = set().union(*(r.leaked.tolist() for r in readings))
        unknown = set.intersection(*(set(r.unknown.tolist()) for r in readings)) - leaked
        shown = set().union(*(set(r.leaked.tolist()) - set(r.from_mask.tolist()) for r in readings))

        def ids(tokens: set[int]) -> torch.Tensor:
            return torch.tensor(sorted(tokens), dtype=torch.long)

        return Leakage(ids(leaked), ids(unknown), readings[0].vocab_size, ids(leaked - shown))


def leakage(
    observed: ObservedUpdate, victim: Victim, threat_model: str = "mask_aware", rows: SeenRows | None = None
) -> Leakage:
    """Read the token set off the token-embedding gradient and the mask: a row is non-zero iff its token is in the
    batch."""
    name, table = victim.word_embedding()
    reader = _reader(observed, threat_model, rows)
    values, seen = reader(name, table.shape)
    leaked = reader.nonzero(name, table.shape).any(1)
    from_mask = leaked & ~((values != 0) & seen).any(1)
    unknown = ~seen.any(1) & ~leaked

    def ids(rows: torch.Tensor) -> torch.Tensor:
        return rows.nonzero().flatten().cpu()

    return Leakage(ids(leaked), ids(unknown), table.shape[0], ids(from_mask))


def sequence_length(
    observed: ObservedUpdate,
    victim: Victim,
    threat_model: str,
    leak: Leakage | None = None,
    rows: SeenRows | None = None,
) -> tuple[int, str]:
    """The batch's padded length T (frame tokens included) and how it was found.

    A position row counts as used when an entry is known non-zero (seen, or read off the mask), as unused when its
    seen entries are all zero (a used row is dense), and as unknown otherwise. Used rows are 0..T−1, so T is pinned
    when the last used row is followed by an unused one (or by max_length): `position_rows`. Otherwise T is the
    largest of the known lower bounds (last used row + 1, distinct leaked tokens / B), capped by the first unused
    row; with no position row and no token row seen, the public max_length.
    """
    max_len = victim.input_shape[0]
    prefix, suffix = frame(victim.tokenizer)
    shortest = len(prefix) + len(suffix) + 1
    lo, hi, used_any = 0, max_len, False
    pos = victim.position_embedding()
    if pos is not None:
        name, table = pos
        reader = _reader(observed, threat_model, rows)
        seen = reader(name, table.shape)[1][:max_len]
        used = reader.nonzero(name, table.shape)[:max_len].any(1)
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
    same test on update/(lr·steps) with a tolerance. Without a seen bias (a decoder's `score` has none) every multiset
    remains (`probe`: the attack tries them). If none passes (zero_fill reading a hidden bias as 0), all remain.
    """
    info = observed.public
    batch, classes = info.batch_size, info.num_classes
    every = list(itertools.combinations_with_replacement(range(classes), batch))[:MAX_LABEL_CANDIDATES]
    bias = victim.head_bias()
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
    pos = victim.position_embedding()
    if pos is None or observed.public.batch_size != 1 or leak.unknown.numel() or not leak.leaked.numel():
        return None
    reader = _reader(observed, threat_model, rows)
    length, source = sequence_length(observed, victim, threat_model, leak, reader)
    if source != "position_rows":
        return None
    name, table = pos
    p_vals, p_seen = reader(name, table.shape)
    w_name, w_table = victim.word_embedding()
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
