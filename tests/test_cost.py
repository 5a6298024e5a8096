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


def test_a_runs_cost_sums_its_rounds_and_union_grows_with_the_masks(params, lenet, tmp_path):
    from selenc import engine
    from selenc.results import Outcome
    from tests.test_grid import trial as grid_point

    n = lenet.num_parameters()
    k = budget(0.1, n)
    done = {"status": "ok", "seed": 0, "phi": 0.5, "k": k, "n": n, "attack_s": 1.0, "trial_s": 1.0}
    per_ratio = engine.costs(params, "lenet", {0.1}, tmp_path)
    per_k = engine.budget_costs(params, "lenet", {k, 3 * k}, tmp_path)
    assert per_k[k].he_ciphertexts == per_ratio[0.1].he_ciphertexts  # the ratio's k, measured by budget
    one = engine.run_cost(grid_point(ratio=0.1), Outcome(**done), per_ratio, per_k)
    assert (one.he_bytes_run, one.he_ciphertexts_run) == (per_ratio[0.1].he_bytes, per_ratio[0.1].he_ciphertexts)
    frozen = grid_point(ratio=0.1, rounds=3, mask_policy="frozen", clients=2, server_lr=1.0)
    run = engine.run_cost(frozen, Outcome(**done, hidden_rounds=f"{k} {k} {k}"), per_ratio, per_k)
    assert run.he_bytes_run == 3 * per_ratio[0.1].he_bytes and run.he_ciphertexts_run == 3 * one.he_ciphertexts_run
    union = engine.run_cost(
        grid_point(ratio=0.1, rounds=3, mask_policy="union", clients=2, server_lr=1.0),
        Outcome(**done, hidden_rounds=f"{k} {3 * k} {3 * k}"),
        per_ratio,
        per_k,
    )
    assert union.he_bytes_run == per_k[k].he_bytes + 2 * per_k[3 * k].he_bytes > run.he_bytes_run
