"""The measured CKKS cost of one client upload per (architecture, ratio), and of a federated run's uploads.

Real TenSEAL encryption of a real update (the first target batch) with the k = ⌈ρ·n⌉ largest-magnitude coordinates
encrypted: ciphertexts, bytes on the wire and seconds. The cost depends on k only, not on which coordinates a metric
picked, so it is measured once per ratio and joined onto every row of that ratio. It always runs on the CPU (TenSEAL
is CPU-only), in the process that assembles the table, so that process never initialises CUDA.

The bytes are not an exact constant: each encryption draws fresh randomness, and SEAL's compression of the serialized
ciphertext saves a slightly different amount each time. `he_bytes_sd` says by how much: the standard deviation of one
full ciphertext's serialized size over SIZE_SAMPLES fresh encryptions of the same values, times √(ciphertexts)
(ciphertexts are compressed independently).

Over rounds the cost is per training run (`run_cost`): the sum over its rounds of the cost of each round's k. Every
policy but `union` encrypts k = ⌈ρ·n⌉ coordinates each round (R times the ratio's cost); `union` encrypts the growing
union of the masks, each round's k measured on its own (`measure_k`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from selenc.gradients import client_update
from selenc.he import HEClient
from selenc.models import Victim, build_victim, client_targets, target_batch
from selenc.results import Cost, RunCost
from selenc.selection import budget, top_k
from selenc.settings import Params

SIZE_SAMPLES = 8  # fresh encryptions of one ciphertext that measure how much its serialized size varies


def measure(params: Params, arch: str, ratio: float, victim: Victim | None = None) -> Cost:
    """Encrypt the first target batch's update of `arch` at ratio ρ and report what it cost."""
    victim = victim or build_victim(arch, params, device=torch.device("cpu"))
    return measure_k(params, arch, budget(ratio, victim.num_parameters()), victim)


def measure_k(params: Params, arch: str, k: int, victim: Victim | None = None) -> Cost:
    """Encrypt the first target batch's update of `arch` with its k largest-magnitude coordinates hidden."""
    victim = victim or build_victim(arch, params, device=torch.device("cpu"))
    dataset = params.models[arch].dataset
    batch = target_batch(victim, dataset, client_targets(dataset, 0, params.update.batch_size))
    update = client_update(victim, batch, params.update)
    client = HEClient(params.he)
    mask = top_k(update.abs(), k)
    enc = client.encrypt(update, mask)
    spread = 0.0
    if enc.cost.ciphertexts:
        first = mask & (mask.cumsum(0) <= client.slots)  # the upload's first ciphertext alone
        sizes = [len(client.encrypt(update, first).ciphertexts[0]) for _ in range(SIZE_SAMPLES)]
        spread = float(np.std(sizes, ddof=1)) * math.sqrt(enc.cost.ciphertexts)
    return Cost(
        he_ciphertexts=enc.cost.ciphertexts,
        he_bytes=enc.cost.wire_bytes,
        he_bytes_sd=round(spread, 1),
        he_encrypt_s=enc.cost.encrypt_s,
    )


def run_cost(per_round: list[Cost]) -> RunCost:
    """A federated run's HE cost: its rounds' uploads summed (one round: that upload's)."""
    return RunCost(
        he_ciphertexts_run=sum(c.he_ciphertexts for c in per_round),
        he_bytes_run=sum(c.he_bytes for c in per_round),
        he_encrypt_s_run=sum(c.he_encrypt_s for c in per_round),
    )
