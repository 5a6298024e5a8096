"""Several rounds of one federated run: the global model of each round, the client's message in each, and the mask
each message carries.

A client keeps its local data across rounds and sends an update every round; the server keeps them all. Between
rounds the global model moves: θ_{r+1} = θ_r − server_lr · mean of the round's `clients` updates (this client's and
those of `clients` − 1 peers, each on its own batch of the pretraining pool, disjoint from the attack targets and from
each other), FedSGD gradients and FedAvg deltas alike. Every θ_r is public: the server computed and sent it.

Mask policies (`settings.MASK_POLICIES`), each round's mask chosen by the client from what it holds that round:
- `fresh`: the round's own top-k (the one-round rule, every round, its random draws made anew: `round_seed`): a
  coordinate hidden in one round can be visible in the next, so an attacker combining rounds sees more than any one
  round shows;
- `frozen`: the first round's mask, reused: every round hides the same coordinates;
- `union`: the union of the fresh masks so far: never reveals a coordinate once hidden, and grows the HE budget;
- `consensus`: the top-k of the sum of the round's clients' scores (`selection`'s shared source over the federation's
  own clients), recomputed each round: the one mask homomorphic aggregation needs, as selective-HE systems agree on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from selenc import data
from selenc.gradients import at_weights, client_update, model_weights
from selenc.models import Batch, Victim
from selenc.settings import Update, derive_seed


def peer_batches(victim: Victim, cfg: Update) -> list[Batch]:
    """The batches of the run's `clients` − 1 other clients: peer j holds pretraining-pool samples (j−1)·B .. j·B − 1
    (never attack targets), the same in every round."""
    peers, size = cfg.clients - 1, cfg.batch_size
    if not peers:
        return []
    if victim.modality == "image":
        pool = data.pretrain_images(peers * size)  # `Victim.image_batch` puts them on the model's channels
        parts = [slice(j * size, (j + 1) * size) for j in range(peers)]
        return [victim.image_batch(data.Images(pool.images[part], pool.labels[part])) for part in parts]
    sentences = data.pretrain_sentences(peers * size)
    return [victim.text_batch(sentences[j * size : (j + 1) * size]) for j in range(peers)]


@dataclass
class Run:
    """One seeded federated run as the client lived it: each round's global model and its own update there."""

    victims: list[Victim]  # the global model of round r (round 0: the victim itself)
    weights: torch.Tensor  # (R, n) the same models as flat vectors: public, the server sent them
    updates: list[torch.Tensor]  # the client's flat update in round r


def federated_run(victim: Victim, batch: Batch, peers: list[Batch], cfg: Update) -> Run:
    """`cfg.rounds` rounds from `victim`'s weights: the client's update on `batch` each round, the global model moved
    between rounds by the mean of its update and the peers' (`server_lr`)."""
    victims, updates = [victim], []
    for r in range(cfg.rounds):
        current = victims[-1]
        own = client_update(current, batch, cfg)
        updates.append(own)
        if r + 1 < cfg.rounds:
            mean = torch.stack([own, *(client_update(current, b, cfg) for b in peers)]).mean(0)
            victims.append(at_weights(current, model_weights(current) - cfg.server_lr * mean))
    weights = torch.stack([model_weights(v) for v in victims]).cpu()
    return Run(victims, weights, updates)


def round_masks(policy: str, fresh: Callable[[int], torch.Tensor], rounds: int) -> list[torch.Tensor]:
    """Each round's mask under `policy`, from `fresh(r)`: round r's own top-k (for `consensus`, the caller's top-k of
    the round's clients' summed scores). `frozen` asks for round 0 only."""
    if policy == "frozen":
        first = fresh(0)
        return [first] * rounds
    masks = [fresh(r) for r in range(rounds)]
    if policy == "union":
        for r in range(1, rounds):
            masks[r] = masks[r] | masks[r - 1]
    elif policy not in ("fresh", "consensus"):
        raise ValueError(f"unknown mask policy {policy!r}; allowed: fresh, frozen, union, consensus")
    return masks


def round_seed(seed: int, r: int) -> int:
    """The seed of round r's mask: round 0's is the one-round message's, every later round draws its own (a client
    that picks a random mask, or samples its significance, does so again each round)."""
    return seed if r == 0 else derive_seed(seed, "round", r)


def round_rule(policy: str, r: int, metric: str, mask_source: str) -> tuple[str | None, str]:
    """How round r's mask was chosen, as the server knows it (a public fact of the protocol, `observed.PublicInfo`):
    (metric, mask source). Fresh: the round's own top-k of `metric` over `mask_source`'s scores; consensus: over the
    round's clients' summed scores (shared); frozen and union after round 0: not from this round's scores alone, so
    the mask says nothing about this round's support (metric None) and the attacker reads it from round 0's view."""
    if policy == "consensus":
        return metric, "shared"
    if policy in ("frozen", "union") and r > 0:
        return None, mask_source
    return metric, mask_source
