"""What every gradient inversion attack shares: the server's view, the matching objective, the result.

An attack is a function `(observed, victim, cfg, threat_model, seed) -> AttackResult`. It receives the
`ObservedUpdate` (visible values, mask, layout, public facts) and the model the server itself distributed
(`victim`: weights, tokenizer, input shape); never the client's batch or the encrypted values. `Matcher` is built from
the observed update alone, so its objective cannot depend on hidden values:

- `mask_aware` (realistic): the distance runs over the visible coordinates only;
- `zero_fill` (what earlier selective-encryption evaluations did): hidden coordinates are taken as 0 and the distance
  runs over all n coordinates, which makes the attacker chase zeros and overstates protection.

**The mask is information** (`mask_boundary`, mask-aware only). Positions are public and, under a support-revealing
metric (`significance.SUPPORT_REVEALING`: magnitude, embedding_rows), chosen from the data: a zero coordinate scores 0,
the lowest, so the hidden coordinates are non-zero (with a shared mask: in some client's update), except the zeros
that fill a budget past the support: index-ordered ties put those first in flat order, before the first visible
coordinate; client-seeded decoys (`selection.decoy_key`) put them anywhere. A mask of unknown origin (metric None) or
of a data-independent metric says nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from selenc.gradients import client_update
from selenc.models import Batch, Victim
from selenc.observed import ObservedUpdate
from selenc.settings import THREAT_MODELS, derive_seed
from selenc.significance import SUPPORT_REVEALING


@dataclass
class AttackResult:
    """An attack's output: the reconstruction, the recovered labels or tokens, and a trace."""

    labels: torch.Tensor  # recovered labels (B,)
    images: torch.Tensor | None = None  # (B, C, H, W) in [0, 1]
    token_ids: list[list[int]] | None = None  # recovered token ids per sample, specials removed
    texts: list[str] | None = None  # decoded token_ids
    losses: list[float] = field(default_factory=list)  # objective per step of the winning restart
    seconds: float = 0.0
    info: dict = field(default_factory=dict)  # attack-specific facts (restart losses, leaked token count, ...)


class Matcher:
    """The attacker's gradient distance between a dummy batch's update and the observed update."""

    def __init__(self, observed: ObservedUpdate, victim: Victim, threat_model: str):
        if threat_model not in THREAT_MODELS:
            raise ValueError(f"unknown threat model {threat_model!r}; allowed: {', '.join(THREAT_MODELS)}")
        self.victim = victim
        self.threat_model = threat_model
        self.update_cfg = observed.public.update
        device = victim.device
        if threat_model == "mask_aware":
            hidden = bool(observed.mask.any())  # nothing hidden: compare the whole vector, no gather
            self.index: torch.Tensor | None = observed.visible_index.to(device) if hidden else None
            self.target = observed.visible.to(device)
        else:
            self.index = None
            self.target = observed.zero_filled().to(device)
        self.target_norm = float(self.target.double().norm())

    @property
    def blind(self) -> bool:
        """True when the attacker measures nothing (mask-aware with every coordinate encrypted)."""
        return self.target.numel() == 0

    def seen(self, update: torch.Tensor) -> torch.Tensor:
        """The part of a full-length update this attacker compares."""
        return update if self.index is None else update.index_select(0, self.index)

    def dummy_update(self, batch: Batch) -> torch.Tensor:
        """The compared part of the update a client would send for `batch` (differentiable in the batch)."""
        return self.seen(client_update(self.victim, batch, self.update_cfg, create_graph=True))

    def l2(self, batch: Batch) -> torch.Tensor:
        return (self.dummy_update(batch) - self.target).square().sum()

    def l2_l1(self, batch: Batch, alpha: float) -> torch.Tensor:
        diff = self.dummy_update(batch) - self.target
        return diff.square().sum() + alpha * diff.abs().sum()

    def cosine(self, batch: Batch) -> torch.Tensor:
        """1 − cos(dummy, target); 0 (constant, no signal) when nothing is compared or the target is all zero."""
        dummy = self.dummy_update(batch)
        if self.blind or self.target_norm == 0:
            return dummy.sum() * 0.0
        return 1.0 - dummy.dot(self.target) / (dummy.norm().clamp_min(1e-12) * self.target_norm)


def mask_boundary(observed: ObservedUpdate) -> int | None:
    """The flat index past which every hidden coordinate is non-zero (−1: all of them), or None when the mask says
    nothing about the support: a metric that does not reveal it, nothing hidden or nothing visible, or random decoys.

    Under a support-revealing metric every hidden coordinate j outranks every visible one. A visible non-zero value
    scores above 0, so then every hidden one is non-zero (−1). With only zeros visible (the budget passed the
    support) and index-ordered ties, the first visible coordinate z scores 0, the lowest, and would have been hidden
    before any zero past it: j > z is non-zero. With decoy ties the zeros filling the budget could be anywhere.
    """
    hidden = int(observed.mask.sum())
    if observed.public.metric not in SUPPORT_REVEALING or hidden in (0, observed.n):
        return None
    if bool(observed.visible.any()):
        return -1
    return int(observed.visible_index[0]) if observed.public.ties == "index" else None


def known_nonzero(observed: ObservedUpdate, boundary: int | None) -> torch.Tensor:
    """Bool (n,): the hidden coordinates the mask shows to be non-zero, those past `boundary` (`mask_boundary`'s;
    none if None)."""
    known = torch.zeros(observed.n, dtype=torch.bool)
    if boundary is not None:
        known[boundary + 1 :] = observed.mask[boundary + 1 :]
    return known


def per_round(
    observed: ObservedUpdate, victim: Victim, attack: Callable[[ObservedUpdate, Victim], AttackResult]
) -> list[AttackResult]:
    """`attack` on each round's message alone, under that round's global model (one message: itself)."""
    return [attack(observed.round(r), observed.victim_at(victim, r)) for r in range(observed.rounds)]


def seeded(seed: int, *tags: str | int) -> torch.Generator:
    """A CPU generator seeded for one purpose of a trial's attack, e.g. `seeded(seed, "init", "dlg", 0)`."""
    return torch.Generator().manual_seed(derive_seed(seed, *tags))


class Timer:
    """`with Timer() as t: ...; t.seconds`."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def one_trial(batched: Callable[..., list[AttackResult]]) -> Callable[..., AttackResult]:
    """The one-trial form `(observed, victim, cfg, threat_model, seed) -> AttackResult` of a batched attack."""

    def attack(observed: ObservedUpdate, victim: Victim, cfg, threat_model: str = "mask_aware", seed: int = 0):
        return batched([observed], victim, cfg, [threat_model], [seed])[0]

    attack.__name__, attack.__doc__ = batched.__name__.removesuffix("_batch"), batched.__doc__
    return attack


def one_by_one(attack: Callable[..., AttackResult]) -> Callable[..., list[AttackResult]]:
    """The batched form of a one-trial attack: its trials one after another."""

    def batched(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
        return [attack(o, victim, cfg, tm, s) for o, tm, s in zip(observed, threat_models, seeds, strict=True)]

    batched.__name__ = f"{attack.__name__}_batch"
    return batched
