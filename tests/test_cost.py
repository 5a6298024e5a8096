"""The measured HE cost of one upload per ratio: real TenSEAL CKKS on a real update, ciphertexts as the packing says."""

import math

import pytest

from selenc import cost
from selenc.models import build_victim
from selenc.selection import budget


@pytest.fixture(scope="module")
def lenet(params):
    import torch

    return build_victim("lenet", params, device=torch.device("cpu"))


def test_cost_grows_with_the_ratio_and_counts_ciphertexts_as_packed(params, lenet):
    slots = params.he.poly_modulus_degree // 2
    n = lenet.num_parameters()
    measured = {r: cost.measure(params, "lenet", r, lenet) for r in (0.0, 0.1, 1.0)}
    # nothing encrypted: the update crosses as float32 plaintext (and its empty mask)
    assert measured[0.0].he_ciphertexts == 0 and 4 * n <= measured[0.0].he_bytes < 4 * n + n // 8 + 64
    for r in (0.1, 1.0):
        assert measured[r].he_ciphertexts == math.ceil(budget(r, n) / slots) and measured[r].he_encrypt_s > 0
    # a CKKS ciphertext is far larger than the float32 values it replaces: bytes grow with the ratio
    assert measured[0.0].he_bytes < measured[0.1].he_bytes < measured[1.0].he_bytes
    # fresh randomness compresses differently: a spread is measured, small against the bytes, none without ciphertexts
    assert measured[0.0].he_bytes_sd == 0.0
    assert 0 < measured[0.1].he_bytes_sd < 0.01 * measured[0.1].he_bytes
