"""Encryption masks from significance scores, and the update as the server observes it.

The mask for ratio ρ over n coordinates holds exactly k = ⌈ρ·n⌉ coordinates (ρ = 0 -> none, ρ = 1 -> all): the k
highest scores, found in O(n) with a partition (no sort, no Python loop). Ties: `index` gives equal scores to the
lower flat index; `decoys` to the lower of a client-seeded random key (`decoy_key`), one key per token-embedding row
so that whole rows go together. A budget past the update's support (every non-zero scored) is filled with zeros either
way, but index-ordered ties fill it from the start of the vector, which tells a server holding the mask where the
support ends (`attacks.base.mask_boundary`); random decoys look like support.
Mask sources: `own` (the victim's scores) or `shared` (the sum of K clients' normalised scores: the single mask a
deployment must agree on, because homomorphic aggregation adds ciphertexts slot by slot).

The server's view of a masked update lives in `observed`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch


def budget(ratio: float, n: int) -> int:
    """k = ⌈ρ·n⌉, computed on the decimal value of ρ (0.2 · 20 is 4, not 5 from float round-off)."""
    if not 0.0 <= ratio <= 1.0 or math.isnan(ratio):
        raise ValueError(f"ratio must lie in [0, 1], got {ratio!r}")
    return math.ceil(Fraction(repr(float(ratio))) * n)


def _as_numpy(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"scores must be a flat vector, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores contain {np.count_nonzero(~np.isfinite(s))} NaN/inf values")
    return s


def top_k_mask(scores: torch.Tensor | np.ndarray, ratio: float, key: np.ndarray | None = None) -> torch.Tensor:
    """Boolean mask (True = encrypted) of the ⌈ρ·n⌉ highest scores; equal scores go to the lower index first (to the
    lower `key`, then the lower index, when a key is given)."""
    return top_k(scores, budget(ratio, len(scores)), key)


def top_k(scores: torch.Tensor | np.ndarray, k: int, key: np.ndarray | None = None) -> torch.Tensor:
    """Boolean mask of exactly the k highest scores (ties to the lower key, then the lower index), in O(n) plus a
    sort of the tied scores when a key is given."""
    s = _as_numpy(scores)
    if key is not None and key.shape != s.shape:
        raise ValueError(f"the tie key must have the scores' shape {s.shape}, got {key.shape}")
    n = s.size
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, {n}], got {k}")
    mask = np.zeros(n, dtype=bool)
    if k == n:
        mask[:] = True
    elif k > 0:
        kth = np.partition(s, n - k)[n - k]  # the k-th largest value
        above = s > kth
        ties = np.flatnonzero(s == kth)
        if key is not None:
            ties = ties[np.argsort(key[ties], kind="stable")]
        ties = ties[: k - int(above.sum())]
        mask = above
        mask[ties] = True
    return torch.from_numpy(mask)


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """Scores scaled to sum to 1 (all-zero scores become uniform), so clients weigh equally in a shared mask."""
    scores = scores.double()
    total = scores.sum()
    return scores / total if total > 0 else torch.full_like(scores, 1.0 / scores.numel())


def shared_scores(client_scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The shared-mask scores: the sum of K clients' normalised score vectors."""
    if len(client_scores) < 1:
        raise ValueError("shared_scores needs at least one client's scores")
    sizes = {s.numel() for s in client_scores}
    if len(sizes) != 1:
        raise ValueError(f"clients' score vectors differ in length: {sorted(sizes)}")
    return torch.stack([normalise(s) for s in client_scores]).sum(0)


def decoy_key(n: int, rows: Sequence[tuple[int, int, int]], seed: int) -> np.ndarray:
    """A client-seeded random tie key over n coordinates; the coordinates of each (start, count, width) block of rows
    (a token-embedding table) share their row's key, so decoys are whole rows, indistinguishable from leaked ones."""
    gen = np.random.default_rng(seed)
    key = gen.random(n)
    for start, count, width in rows:
        key[start : start + count * width] = np.repeat(gen.random(count), width)
    return key


def make_mask(
    client_scores: Sequence[torch.Tensor], ratio: float, source: str, key: np.ndarray | None = None
) -> torch.Tensor:
    """The encryption mask at ratio ρ: `own` ranks the victim's scores (the first entry); `shared` ranks the sum of
    all K clients' normalised scores, the one mask every client must use for homomorphic aggregation. Equal scores go
    to the lower `key` (decoys), else to the lower index."""
    if source == "own":
        return top_k_mask(client_scores[0], ratio, key)
    if source == "shared":
        if len(client_scores) < 2:
            raise ValueError(f"a shared mask needs the scores of K >= 2 clients, got {len(client_scores)}")
        return top_k_mask(shared_scores(client_scores), ratio, key)
    raise ValueError(f"unknown mask source {source!r}; allowed: own, shared")
