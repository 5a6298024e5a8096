"""The server's view of one client's update: everything an honest-but-curious server sees, and nothing else.

`ObservedUpdate` holds the plaintext values of the visible coordinates, the mask (positions are public: homomorphic
aggregation adds ciphertexts slot by slot, so every party knows which coordinates are encrypted), the parameter
layout and the protocol's public facts (`PublicInfo`). It never holds the encrypted values, so an attack that
receives it cannot reach them. Over several rounds of one federated run (`rounds`) the server keeps every message:
the view then stacks the R rounds' coordinates (round-major, R·n of them) beside each round's public global model
(`weights`), and `sent` is the stacked update a candidate batch would produce under those models.

`observe` is the one constructor from a client's update; the sweep, the theory stage,
HE and the tests all build the server's view through it (HE's `EncryptedUpdate.observed` drops its ciphertexts into
the same dataclass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selenc.gradients import FlatLayout, at_weights, client_update
from selenc.models import Batch, Victim
from selenc.settings import Update


@dataclass(frozen=True)
class PublicInfo:
    """Public facts of the protocol: known to the server without looking at any client data."""

    arch: str
    batch_size: int
    num_classes: int
    input_shape: tuple[int, ...]  # (C, H, W) for images, (max_length,) for text
    update: Update  # how clients compute their update (FedSGD / FedAvg steps and lr)
    # how the mask was chosen: the protocol fixes it, so the server knows it (Kerckhoffs). metric None: not known to
    # rank the data (a hand-made mask); a support-revealing metric lets an attacker read the mask (`attacks.text`)
    metric: str | None = None
    mask_source: str = "own"  # own: the client's scores alone; shared: the sum of K clients' scores
    ties: str = "index"  # equal scores to the lower flat index, or to client-seeded random decoys (`selection`)

    @property
    def model_facts(self) -> tuple:
        """What the trials of one vectorised batch must share: model, batch size, input and update rule (each trial's
        mask may be chosen its own way)."""
        return self.arch, self.batch_size, self.num_classes, self.input_shape, self.update


@dataclass(frozen=True)
class ObservedUpdate:
    """What the server sees of one client's update: visible plaintext values, the mask, layout and public facts."""

    visible: torch.Tensor  # values of the visible coordinates, in flat order (length n − k)
    mask: torch.Tensor  # bool (n,), True = encrypted: position public, value hidden
    layout: FlatLayout
    public: PublicInfo
    # (R, layout.n): each round's public global model, the R rounds' coordinates stacked in `visible` and `mask`;
    # None: one message, at the model's own weights
    weights: torch.Tensor | None = None
    # each round's public facts (how its mask was chosen, `rounds.round_masks`); None: `public` for every round
    publics: tuple[PublicInfo, ...] | None = None

    def __post_init__(self) -> None:
        if self.weights is not None and (self.weights.ndim != 2 or self.weights.shape[1] != self.layout.n):
            raise ValueError(f"weights must have shape (rounds, {self.layout.n}), got {tuple(self.weights.shape)}")
        size = self.rounds * self.layout.n
        if self.mask.dtype != torch.bool or self.mask.ndim != 1 or self.mask.numel() != size:
            raise ValueError(f"mask must be a bool vector of shape ({size},), got {tuple(self.mask.shape)}")
        hidden = int(self.mask.sum())
        if self.visible.ndim != 1 or self.visible.numel() != size - hidden:
            raise ValueError(f"visible must hold the n − k = {size - hidden} values, got {tuple(self.visible.shape)}")

    @classmethod
    def observe(
        cls, update: torch.Tensor, mask: torch.Tensor, layout: FlatLayout, public: PublicInfo
    ) -> ObservedUpdate:
        """Keep only what crosses the wire in plaintext: a copy of the visible values (the hidden ones are dropped)."""
        if update.ndim != 1 or update.numel() != layout.n:
            raise ValueError(f"update must be a flat vector of {layout.n} values, got shape {tuple(update.shape)}")
        if mask.dtype != torch.bool or mask.shape != update.shape:
            raise ValueError(f"mask must be a bool vector of shape {tuple(update.shape)}")
        mask = mask.detach().cpu().clone()
        visible = update.detach()[~mask.to(update.device)].clone()
        return cls(visible, mask, layout, public)

    @classmethod
    def of_rounds(cls, rounds: list[ObservedUpdate], weights: torch.Tensor) -> ObservedUpdate:
        """One view of a federated run's messages (each a one-round view) under each round's global model."""
        first = rounds[0]
        if len(rounds) != len(weights) or any(o.layout != first.layout or o.weights is not None for o in rounds):
            raise ValueError("of_rounds needs one one-round view of the same model per round's weights")
        visible = torch.cat([o.visible for o in rounds])
        mask = torch.cat([o.mask for o in rounds])
        publics = tuple(o.public for o in rounds)
        return cls(visible, mask, first.layout, first.public, weights.detach().cpu().clone(), publics)

    @property
    def n(self) -> int:
        """Coordinates the server sees the positions of: the model's, times the rounds."""
        return self.mask.numel()

    @property
    def rounds(self) -> int:
        return 1 if self.weights is None else len(self.weights)

    def round(self, r: int) -> ObservedUpdate:
        """Round r's message alone (its global model: `victim_at`)."""
        if self.weights is None:
            if r != 0:
                raise IndexError(f"one message has round 0 only, not {r}")
            return self
        n = self.layout.n
        mask = self.mask[r * n : (r + 1) * n]
        before = int((~self.mask[: r * n]).sum())
        visible = self.visible[before : before + int((~mask).sum())]
        public = self.public if self.publics is None else self.publics[r]
        return ObservedUpdate(visible, mask.clone(), self.layout, public)

    def victim_at(self, victim: Victim, r: int) -> Victim:
        """`victim` at round r's global model (a copy; the victim itself when there are no rounds)."""
        return victim if self.weights is None else at_weights(victim, self.weights[r])

    def sent(self, victim: Victim, batch: Batch, create_graph: bool = False) -> torch.Tensor:
        """The (stacked) update a client with `batch` would have sent: what this view's coordinates compare to."""
        cfg = self.public.update
        if self.weights is None:
            return client_update(victim, batch, cfg, create_graph)
        weights = self.weights.to(victim.device)
        rounds = [client_update(victim, batch, cfg, create_graph, self.layout.unflatten(w)) for w in weights]
        return torch.cat(rounds)

    @property
    def visible_index(self) -> torch.Tensor:
        """Flat indices of the visible coordinates (the attacker's loss runs over these when mask-aware)."""
        return (~self.mask).nonzero().flatten()

    def zero_filled(self) -> torch.Tensor:
        """The full-length update with hidden coordinates set to 0 (the zero-fill attacker's view)."""
        full = torch.zeros(self.n, dtype=self.visible.dtype, device=self.visible.device)
        full[self.visible_index.to(self.visible.device)] = self.visible
        return full

    def rows(self, name: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """One parameter's gradient as the server sees it: (values with hidden entries 0, bool mask of visible ones);
        one message only (over rounds: each `round`'s)."""
        if self.rounds > 1:
            raise ValueError(f"rows of {name!r}: this view stacks {self.rounds} rounds; read one `round(r)` at a time")
        span = self.layout.span(name)
        values = self.zero_filled()[span].view(shape)
        seen = (~self.mask[span]).view(shape)
        return values, seen.to(values.device)


def public_info(
    victim: Victim,
    batch_size: int,
    update_cfg: Update,
    metric: str | None = None,
    mask_source: str = "own",
    ties: str = "index",
) -> PublicInfo:
    """The protocol's public facts for a client of `victim` sending an update of `batch_size` samples, masked by
    `metric` over the `mask_source` scores with `ties`."""
    shape = victim.input_shape
    return PublicInfo(victim.arch, batch_size, victim.num_classes, shape, update_cfg, metric, mask_source, ties)


def observe(
    victim: Victim,
    update: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int,
    update_cfg: Update,
    metric: str | None = None,
    mask_source: str = "own",
    ties: str = "index",
) -> ObservedUpdate:
    """The server's view of `update` (a client's flat update of `victim`) with `mask`'s coordinates encrypted; how
    the mask was chosen is public (metric None: a mask not known to rank the data)."""
    public = public_info(victim, batch_size, update_cfg, metric, mask_source, ties)
    return ObservedUpdate.observe(update, mask, FlatLayout.of(victim.model), public)


def observe_client(
    victim: Victim, batch: Batch, update_cfg: Update, mask: torch.Tensor | None = None
) -> ObservedUpdate:
    """What the server receives from a client with `batch`: its update with `mask`'s coordinates hidden (none by
    default: the unprotected, ratio-0 case)."""
    update = client_update(victim, batch, update_cfg)
    if mask is None:
        mask = torch.zeros(update.numel(), dtype=torch.bool)
    return observe(victim, update, mask, len(batch), update_cfg)
