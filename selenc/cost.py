"""The measured CKKS cost of one client upload per (architecture, ratio).

Real TenSEAL encryption of a real update (the first target batch) with the k = ⌈ρ·n⌉ largest-magnitude coordinates
encrypted: ciphertexts, bytes on the wire and seconds. The cost depends on k only, not on which coordinates a metric
picked, so it is measured once per ratio and joined onto every row of that ratio. It always runs on the CPU (TenSEAL
is CPU-only), in the process that assembles the table, so that process never initialises CUDA.

The bytes are not an exact constant: each encryption draws fresh randomness, and SEAL's compression of the serialized
ciphertext saves a slightly different amount each time. `he_bytes_sd` says by how much: the standard deviation of one
full ciphertext's serialized size over SIZE_SAMPLES fresh encryptions of the same values, times √(ciphertexts)
(ciphertexts are compressed independently).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from selenc.gradients import client_update
from selenc.he import HEClient
from selenc.models import Victim, build_victim, client_targets, target_batch
from selenc.results import Cost
from selenc.selection import top_k_mask
from selenc.settings import Params

SIZE_SAMPLES = 8  # fresh encryptions of one ciphertext that measure how much its serialized size varies


def measure(params: Params, arch: str, ratio: float, victim: Victim | None = None) -> Cost:
    """Encrypt the first target batch's update of `arch` at ratio ρ and report what it cost."""
    victim = victim or build_victim(arch, params, device=torch.device("cpu"))
    dataset = getattr(params.models, arch).dataset
    batch = target_batch(victim, dataset, client_targets(dataset, 0, params.update.batch_size))
    update = client_update(victim, batch, params.update)
    client = HEClient(params.he)
    mask = top_k_mask(update.abs(), ratio)
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
