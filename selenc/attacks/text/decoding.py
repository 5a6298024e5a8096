"""From free dummy embeddings to tokens, and the discrete moves of LAMP's reordering.

**Decoding.** An encoder like MiniLM normalises word + position + type embeddings with a LayerNorm and is otherwise
blind to order, so a free dummy may carry token v from true position q at position p (x_p = w_v + pos_q − pos_p: the
network sees the same vectors listed in another order). The projection therefore decodes what the model sees: each dummy
vector x_p + pos_p (+ type) is matched to w_v + pos_q (+ type) over the allowed tokens v and positions q (cosine of
mean-centred vectors under LayerNorm, L2 without one), positions assigned one-to-one (Hungarian).

**Vocabulary restriction** (`restrict_vocab`): decoding is limited to the tokens that can be in the batch: the leaked
ones plus those whose rows are fully hidden (a row with a seen all-zero entry is not in the batch), and every leaked
token is decoded at least once when the slots allow it (the leaked bag is known to be in the batch): slots are
assigned to the leaked tokens plus free slots by a Hungarian assignment that maximises the summed match score, the
free slots taking their best token. When the set is empty or the whole vocabulary (every row encrypted), it falls
back to the full vocabulary without that constraint (`info["vocab"]`).
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from selenc.attacks.text.reading import Leakage, excluded, frame
from selenc.models import Victim


def vocabulary(leak: Leakage, tokenizer, restrict: bool) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    """(allowed, required, why): the tokens a position may decode to (None = the full vocabulary) and the leaked tokens
    the decoded batch must contain at least once each (None = no such constraint); see the module docstring."""
    if not restrict:
        return None, None, "full (restrict_vocab off)"
    special = torch.tensor(excluded(tokenizer), dtype=torch.long)
    cands = leak.candidates
    cands = cands[~torch.isin(cands, special)]
    if cands.numel() == 0:
        return None, None, "full (no token row seen)"
    if cands.numel() + special.numel() >= leak.vocab_size:
        return None, None, "full (embedding rows encrypted)"
    required = leak.leaked[~torch.isin(leak.leaked, special)]
    return cands, required, "leaked" if leak.unknown.numel() == 0 else "leaked+hidden_rows"


class Decoder:
    """One trial's dummy sentences: B sentences of length T whose `n_free` inner positions are free embeddings, the
    tokenizer's frame ([CLS] … [SEP] for WordPiece) fixed to its true embeddings, and how to decode them to tokens."""

    def __init__(
        self, victim: Victim, batch: int, length: int, allowed: torch.Tensor | None, required: torch.Tensor | None
    ):
        tok = victim.tokenizer
        self.table = victim.model.get_input_embeddings().weight.detach()
        device = self.table.device
        vocab = self.table.shape[0]
        self.prefix, self.suffix = frame(tok)
        self.batch, self.length = batch, length
        self.n_free = length - len(self.prefix) - len(self.suffix)
        if self.n_free < 1:
            raise ValueError(f"sequence length {length} leaves no token inside the frame")
        allowed = torch.arange(vocab) if allowed is None else allowed.cpu()
        self.allowed = allowed[~torch.isin(allowed, torch.tensor(excluded(tok), dtype=torch.long))].to(device)
        self.required: torch.Tensor | None = None  # columns of self.allowed that must each be decoded at least once
        if required is not None and 0 < required.numel() <= batch * self.n_free:
            cols = torch.searchsorted(self.allowed.cpu(), required.cpu())
            if bool((self.allowed.cpu()[cols.clamp_max(self.allowed.numel() - 1)] == required.cpu()).all()):
                self.required = cols.to(device)
        self.typical_norm = float(self.table.norm(dim=1).mean())
        self.rms = float(self.table.square().mean().sqrt())
        layer = victim.input_layer()
        self.input_layer = None if layer is None else (layer[0].detach(), layer[1], layer[2])

    def init(self, gen: torch.Generator) -> torch.Tensor:
        """(B, n_free, E) seeded initial embeddings: N(mean, std) of the vocabulary table per dimension."""
        mean, std = self.table.mean(0).cpu(), self.table.std(0).cpu()
        init = mean + std * torch.randn(self.batch, self.n_free, self.table.shape[1], generator=gen)
        return init.to(self.table.device)

    def embed(self, inner_ids: torch.Tensor) -> torch.Tensor:
        """(B, n_free, E) embeddings of discrete tokens at the inner positions."""
        return self.table[inner_ids]

    @torch.no_grad()
    def scores(self, inner: torch.Tensor) -> torch.Tensor:
        """(B, P, V): how well inner slot p of each sample matches each allowed token (higher is better; see the
        module docstring). Without a position table: −‖x_p − w_v‖² up to a per-slot constant. With one, each dummy
        vector is first assigned one-to-one to the position q whose embedding it carries."""
        words = self.table[self.allowed]  # (V, E)
        if self.input_layer is None:
            return 2 * inner @ words.T - words.square().sum(1)
        pos_table, offset, normalised = self.input_layer
        first = len(self.prefix)
        positions = pos_table[first : first + self.n_free] + offset  # (Q, E)
        seen = inner + positions  # (B, P, E): what the model adds up at each dummy position
        if normalised:  # LayerNorm: compare mean-centred directions
            positions = positions - positions.mean(1, keepdim=True)
            words = words - words.mean(1, keepdim=True)
            seen = seen - seen.mean(-1, keepdim=True)
            seen = seen / seen.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        norms = words.square().sum(1, keepdim=True) + 2 * words @ positions.T + positions.square().sum(1)

        def score(dots: torch.Tensor, q) -> torch.Tensor:  # dots = s_p · (w_v + pos_q)
            return dots / norms[:, q].clamp_min(1e-24).sqrt() if normalised else 2 * dots - norms[:, q]

        out = torch.empty(self.batch, self.n_free, words.shape[0], device=seen.device)
        for b in range(self.batch):
            a, c = seen[b] @ words.T, seen[b] @ positions.T  # (P, V), (P, Q)
            best = torch.stack(
                [score(a[p].unsqueeze(1) + c[p].unsqueeze(0), slice(None)).amax(0) for p in range(self.n_free)]
            )
            rows, cols = linear_sum_assignment(best.cpu().numpy(), maximize=True)
            for p, q in zip(rows.tolist(), cols.tolist(), strict=True):
                out[b, q] = score(a[p] + c[p, q], q)
        return out

    @torch.no_grad()
    def project(self, inner: torch.Tensor) -> torch.Tensor:
        """(B, n_free) token ids decoded from embeddings (B, n_free, E): each slot's best token, except that every
        required (leaked) token is decoded at least once: an assignment of slots to the required tokens plus free
        slots that maximises the summed score (Hungarian)."""
        scores = self.scores(inner)
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


def proposal(n: int, gen: torch.Generator) -> torch.Tensor:
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
