"""The measured CKKS cost of one client upload per (architecture, ratio).

Real TenSEAL encryption of a real update (the first target batch) with the k = ⌈ρ·n⌉ largest-magnitude coordinates
encrypted: ciphertexts, bytes on the wire and seconds. The cost depends on k only, not on which coordinates a metric
picked, so it is measured once per ratio and joined onto every row of that ratio. It always runs on the CPU (TenSEAL
is CPU-only), in the process that assembles the table, so that process never initialises CUDA.
"""

from __future__ import annotations

import torch

from selenc.gradients import client_update
from selenc.he import HEClient
from selenc.models import Victim, build_victim, target_batch
from selenc.results import Cost
from selenc.selection import top_k_mask
from selenc.settings import Params


def measure(params: Params, arch: str, ratio: float, victim: Victim | None = None) -> Cost:
    """Encrypt the first target batch's update of `arch` at ratio ρ and report what it cost."""
    victim = victim or build_victim(arch, params, device=torch.device("cpu"))
    batch = target_batch(victim, getattr(params.models, arch).dataset, list(range(params.update.batch_size)))
    update = client_update(victim, batch, params.update)
    enc = HEClient(params.he).encrypt(update, top_k_mask(update.abs(), ratio))
    return Cost(he_ciphertexts=enc.cost.ciphertexts, he_bytes=enc.cost.wire_bytes, he_encrypt_s=enc.cost.encrypt_s)
