"""`dager`: whole sentences from the first two attention blocks' weight gradients by a span check (after DAGER,
Petrov et al. 2024), no optimisation.

**Why it works.** A linear layer's weight gradient is Σ_i δ_i x_iᵀ over its input rows x_i, one per (sentence,
position): every input-space vector of the gradient (`Victim.attention_projections`: an encoder's query/key/value rows,
a decoder's fused c_attn columns) lies in span{x_i}. While B·T < d (the hidden size) that span is a proper subspace, and
a candidate input lies in it (relative residual under SPAN_TOL) only if it is one of the x_i, generically.

1. **Tokens per position** (block 0): block 0's input at position p depends on the token at p alone
   (`Victim.first_block_inputs`), so every vocabulary token is checked at every position: the tokens that pass form
   C_p. Positions run from 0 until none passes, which also gives the longest length.
2. **Sentences** (B > 1, block 1): position by position, the live sentences take the candidates by least-cost
   assignment (every candidate to some sentence), the cost being the distance of each extended prefix's block-1
   input row at p from block 1's span (`Victim.block_inputs`). A sentence ends at the tokenizer's end token ([SEP]),
   and the live count at p is the largest candidate count from p on. An encoder's rows depend on the whole sentence, so
   the prefix check is a heuristic (DAGER's exhaustive encoder search is not implemented). Block 1 is read only when it
   is not the model's last block: in the last one only the pooled position's query carries gradient (the default
   2-block decoder), and then C_p is dealt to the live sentences in block-0 residual order. At B = 1 each position takes
   its lowest-residual candidate.

A LayerNorm without bias (a random-init decoder: γ = 1, β = 0) makes the block-0 check scale-invariant: (v, p) passes
whenever (v, q), (u, p) and (u, q) are inputs, so C_p can be a superset (a repeated token at B = 1 is enough); the
true token then still has the lowest residual in the cases measured, but nothing guarantees it.

**What it needs of the update** (`Span`). Input-space vectors of block 0 visible on a common set of coordinates, more
of them than the rank B·T of the span they show (of 3d vectors for either model). A vector with hidden entries still
lies in the span on its visible coordinates, so the span is read on the most-seen coordinates, shrunk until the
vectors fully visible there saturate it; too few vectors give a smaller span and tokens outside it would be lost, so
an unsaturated span is not used. The zero-fill attacker takes hidden entries as 0, which bends every partly hidden
vector. A span of rank near its coordinate count (B·T close to d) decides nothing. When block 0 gives no candidate
the attack falls back to `token_leakage` (what the embedding gradients and the mask give away) and says so in
`info["fallback"]`. The labels come from `reading.label_candidates`, the closest candidate on the recovered sentences
winning.

**Over rounds** (`ObservedUpdate.rounds` > 1) each round's blocks are read under that round's global model; the
answer is the round whose span check recovered the most tokens (`info["round"]`), and when no round's block 0 is
usable, `token_leakage` over every round.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from selenc.attacks.base import AttackResult, Timer, per_round
from selenc.attacks.text.objective import closest_labels
from selenc.attacks.text.reading import SeenRows, frame, label_candidates, strip
from selenc.attacks.text.token_leakage import token_leakage
from selenc.models import Victim
from selenc.observed import ObservedUpdate

RANK_TOL = 1e-6  # singular values below this share of the largest are float32 round-off, not span directions
SPAN_TOL = 1e-4  # relative residual under which a block-0 candidate counts as an input row
COVER = 1e3  # assignment bonus for a candidate's first use: larger than any sum of residuals
VOCAB_CHUNK = 8192  # candidate tokens checked per call
RANK_MARGIN = 4  # fully visible vectors beyond the rank before a span counts as saturated
FILL_MAX = 0.75  # a span of rank above this share of its coordinates decides nothing
MIN_DIMS, SHRINK = 16, 0.8  # the coordinate set shrinks by SHRINK per try, down to MIN_DIMS


class Span:
    """The span of one block's input rows as its visible gradient vectors show it: an orthonormal basis on a set of
    input coordinates, and what it was read from.

    A vector with a hidden entry still lies in the span on the coordinates where it is visible. So the span is read on
    the coordinates seen most often (`dims`), shrunk until the vectors fully visible there saturate it: more of them
    than its rank (RANK_MARGIN), else some input rows could be missing from it. The largest such set wins (more
    coordinates separate candidates better); a span filling FILL_MAX of its coordinates decides nothing."""

    def __init__(self, reader: SeenRows, victim: Victim, block: int):
        named = dict(victim.model.named_parameters())
        values, seen = [], []
        for name, rows_are_inputs in victim.attention_projections(block):
            v, s = reader(name, named[name].shape)
            values.append(v if rows_are_inputs else v.T)
            seen.append(s if rows_are_inputs else s.T)
        m, w = torch.cat(values).double().cpu(), torch.cat(seen).cpu()  # (vectors, d)
        self.d = m.shape[1]
        self.basis: torch.Tensor | None = None
        self.dims = torch.arange(self.d)
        self.rank = self.visible = 0
        order = w.sum(0).argsort(descending=True, stable=True)
        size = self.d
        while size >= MIN_DIMS:
            dims = order[:size]
            full = m[w[:, dims].all(1)][:, dims]
            if full.shape[0] > 0:
                _, sv, vh = torch.linalg.svd(full, full_matrices=False)
                self.rank = int((sv > RANK_TOL * sv[0]).sum()) if sv[0] > 0 else 0
                self.visible = full.shape[0]
                if 0 < self.rank <= FILL_MAX * size and self.visible >= self.rank + RANK_MARGIN:
                    self.basis, self.dims = vh[: self.rank].T.contiguous(), dims
                    break
            size = int(size * SHRINK)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """Relative distance of each row of x (N, d) from the span, on the span's coordinates."""
        x = x.double().cpu()[:, self.dims]
        off = x - (x @ self.basis) @ self.basis.T
        return off.norm(dim=1) / x.norm(dim=1).clamp_min(1e-30)

    def describe(self) -> str:
        if self.basis is None:
            why = "nothing visible" if not self.visible else "no coordinate set whose visible vectors saturate a span"
            return f"unusable ({why})"
        return f"rank {self.rank} on {len(self.dims)} of {self.d} coordinates from {self.visible} visible vectors"


def candidates(span: Span, victim: Victim) -> list[list[tuple[int, float]]]:
    """C_p for p = 0, 1, ...: (token, residual) pairs under SPAN_TOL, in residual order, until a position has none."""
    vocab = victim.model.get_input_embeddings().weight.shape[0]
    out = []
    with torch.no_grad():
        for p in range(victim.input_shape[0]):
            res = torch.cat(
                [
                    span.residual(victim.first_block_inputs(ids, p))
                    for ids in torch.arange(vocab, device=victim.device).split(VOCAB_CHUNK)
                ]
            )
            passing = (res < SPAN_TOL).nonzero().flatten()
            if not passing.numel():
                break
            order = res[passing].argsort()
            out.append([(int(passing[i]), float(res[passing[i]])) for i in order])
    return out


def _assign(cost: torch.Tensor) -> list[int]:
    """Token index per live sentence (rows of `cost`, live × candidates) at least cost, every candidate used at least
    once while there are enough sentences (a candidate passed the span check, so some sentence holds it)."""
    live, n = cost.shape
    first = cost - COVER  # each candidate's first use is worth more than any cost difference
    columns = torch.cat([first, *[cost] * max(live - 1, 0)], 1).numpy()
    rows, cols = linear_sum_assignment(columns)
    picks = [0] * live
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        picks[r] = c % n
    return picks


def sentences(span1: Span | None, victim: Victim, cands: list[list[tuple[int, float]]], batch: int) -> list[list[int]]:
    """Sort the per-position candidates into `batch` token sequences (frame included), position by position.

    Sentences live at p: at most the largest candidate count from p on (a lower bound on how many reach p), ended at
    the tokenizer's end token. Each live sentence takes one candidate, every candidate some sentence, at the least
    total block-1 residual of the prefixes so extended; without a usable block 1, in block-0 residual order."""
    end = frame(victim.tokenizer)[1]
    seqs: list[list[int]] = [[] for _ in range(batch)]
    live = list(range(batch))
    reach = [max(len(c) for c in cands[p:]) for p in range(len(cands))]
    for p, c_p in enumerate(cands):
        live = live[: reach[p]]
        if not live:
            break
        tokens = [t for t, _ in c_p]
        if span1 is None:
            cost = torch.arange(len(tokens), dtype=torch.double).expand(len(live), -1)
        else:
            ids = torch.tensor([seqs[s] + [t] for s in live for t in tokens], device=victim.device)
            with torch.no_grad():
                rows = victim.block_inputs(ids, torch.ones_like(ids), 1)[:, p]
            cost = span1.residual(rows).view(len(live), len(tokens)).cpu()
        for s, i in zip(live, _assign(cost), strict=True):
            seqs[s].append(tokens[i])
        live = [s for s in live if not (end and seqs[s][-1] == end[-1])]
    return seqs


def dager(
    observed: ObservedUpdate, victim: Victim, cfg=None, threat_model: str = "mask_aware", seed: int = 0
) -> AttackResult:
    """Analytic: each position's tokens from block 0's gradient span, sorted into sentences by block 1's; the
    embedding-gradient reading (`token_leakage`) when block 0 shows nothing usable."""
    with Timer() as timer:
        if observed.rounds == 1:
            result = _read_sentences(observed, victim, cfg, threat_model, seed)
        else:
            results = per_round(observed, victim, lambda o, v: _read_sentences(o, v, cfg, threat_model, seed))
            read = [r for r, result in enumerate(results) if result.info["fallback"] is None]
            if read:
                r = max(read, key=lambda r: (sum(map(len, results[r].token_ids)), -r))
                result = results[r]
                result.info["round"] = r
            else:
                result = token_leakage(observed, victim, cfg, threat_model, seed)
                result.info = {"fallback": "token_leakage", "block0": "no round usable"} | result.info
    result.seconds = timer.seconds  # the span check's time counts for the fallback too
    return result


def _read_sentences(observed: ObservedUpdate, victim: Victim, cfg, threat_model: str, seed: int) -> AttackResult:
    reader = SeenRows(observed, threat_model)
    span0 = Span(reader, victim, 0)
    cands = candidates(span0, victim) if span0.basis is not None else []
    if not cands:
        fallback = token_leakage(observed, victim, cfg, threat_model, seed)
        fallback.info = {"fallback": "token_leakage", "block0": span0.describe()} | fallback.info
        return fallback
    batch = observed.public.batch_size
    span1 = Span(reader, victim, 1) if batch > 1 and victim.blocks > 2 else None
    usable = span1 if span1 is not None and span1.basis is not None else None
    seqs = sentences(usable, victim, cands, batch) if batch > 1 else [[t for (t, _), *_ in cands]]
    label_cands, label_source = label_candidates(observed, victim, threat_model, reader)
    labels = label_cands[0]
    if len(label_cands) > 1 and all(seqs):
        labels = closest_labels(observed, victim, threat_model, seqs, label_cands)
        label_source += "+recovered_sentences"
    tok = victim.tokenizer
    token_ids = [strip(tok, s) for s in seqs]
    return AttackResult(
        labels=torch.tensor(labels),
        token_ids=token_ids,
        texts=[tok.decode(ids) for ids in token_ids],
        info={
            "threat_model": threat_model,
            "fallback": None,
            "block0": span0.describe(),
            "block1": span1.describe() if span1 is not None else "not read (B = 1, or the model's last block)",
            "positions": len(cands),
            "candidates_per_position": [len(c) for c in cands],
            "sentences_found": sum(map(bool, seqs)),
            "label_source": label_source,
        },
    )
