"""Masks of exactly ⌈ρ·n⌉ coordinates with deterministic ties; shared masks from real clients."""

import math

import numpy as np
import pytest
import torch

from selenc.selection import budget, decoy_key, normalise, shared_scores, top_k, top_k_mask


@pytest.mark.parametrize(
    ("ratio", "n", "k"),
    [(0.0, 100, 0), (1.0, 100, 100), (0.2, 20, 4), (0.1, 15826, 1583), (0.05, 7, 1), (0.3, 10, 3), (0.01, 1, 1)],
)
def test_budget_is_the_ceiling_of_the_decimal_ratio(ratio, n, k):
    assert budget(ratio, n) == k


@pytest.mark.parametrize("ratio", [-0.1, 1.01, float("nan")])
def test_budget_rejects_ratios_outside_the_unit_interval(ratio):
    with pytest.raises(ValueError, match=r"ratio must lie in \[0, 1\]"):
        budget(ratio, 10)


def test_mask_takes_the_highest_scores():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.random(10_000))
    for ratio in (0.0, 0.01, 0.05, 0.1, 0.5, 1.0):
        mask = top_k_mask(scores, ratio)
        k = math.ceil(ratio * 10_000)
        assert mask.dtype == torch.bool and int(mask.sum()) == k
        if 0 < k < 10_000:
            assert scores[mask].min() > scores[~mask].max()


def test_ties_go_to_the_lower_index():
    assert top_k_mask(torch.ones(10), 0.3).nonzero().flatten().tolist() == [0, 1, 2]
    scores = torch.tensor([0.0, 5.0, 1.0, 1.0, 1.0, 5.0, 1.0])
    assert top_k_mask(scores, 0.5).nonzero().flatten().tolist() == [1, 2, 3, 5]  # 4 = ⌈3.5⌉: both 5s, then 1s in order
    assert torch.equal(top_k_mask(scores, 0.5), top_k_mask(scores.numpy(), 0.5))


def test_decoy_ties_are_seeded_random_whole_rows():
    """Past the support (10 non-zero scores) index ties fill the budget from the start; decoy ties take random zero
    coordinates, whole rows of the (start, count, width) block together, the same ones for the same seed."""
    scores = np.zeros(1_000)
    scores[500:510] = 1.0
    k = 10 + 4 * 8
    assert top_k(scores, k).nonzero().flatten().tolist() == [*range(32), *range(500, 510)]
    key = decoy_key(1_000, [(100, 50, 8)], seed=3)  # rows of 8 over coordinates 100..499
    assert all(len(set(key[100 + 8 * r : 108 + 8 * r])) == 1 for r in range(50))
    mask = top_k(scores, k, key)
    assert mask[500:510].all() and int(mask.sum()) == k, "the scored coordinates first, whatever the key"
    assert torch.equal(mask, top_k(scores, k, decoy_key(1_000, [(100, 50, 8)], seed=3)))
    assert not torch.equal(mask, top_k(scores, k, decoy_key(1_000, [(100, 50, 8)], seed=4)))
    assert not torch.equal(mask, top_k(scores, k)), "decoys are not the index prefix"
    decoys = mask.clone()
    decoys[500:510] = False
    rows = decoys[100:500].view(50, 8)
    assert (rows.all(1) | ~rows.any(1)).all(), "a decoy in the embedding block is a whole row"
    with pytest.raises(ValueError, match="tie key must have the scores' shape"):
        top_k(scores, k, key[:10])


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="1 NaN/inf values"):
        top_k_mask(torch.tensor([1.0, float("nan"), 2.0]), 0.5)
    with pytest.raises(ValueError, match="flat vector"):
        top_k_mask(torch.ones(2, 2), 0.5)


def test_selection_is_vectorised_on_25m_coordinates():
    scores = torch.rand(25_000_000, generator=torch.Generator().manual_seed(0))
    mask = top_k_mask(scores, 0.1)
    assert int(mask.sum()) == 2_500_000


def test_shared_mask_weighs_clients_equally():
    loud = torch.tensor([1000.0, 0.0, 0.0, 0.0, 1.0])
    quiet = torch.tensor([0.0, 0.002, 0.0, 0.0, 0.0])
    shared = shared_scores([loud, quiet])
    assert top_k_mask(shared, 0.4).nonzero().flatten().tolist() == [0, 1]
    assert torch.allclose(normalise(loud).sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(normalise(torch.zeros(4)), torch.full((4,), 0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"differ in length: \[3, 5\]"):
        shared_scores([loud, torch.ones(3)])


def test_own_and_shared_masks_from_real_clients(victims, params):
    from selenc import data
    from selenc.selection import make_mask
    from selenc.significance import client_scores

    victim = victims["lenet"]
    images = data.target_images("cifar10")
    batches = [victim.image_batch(data.Images(images.images[i : i + 1], images.labels[i : i + 1])) for i in range(4)]
    per_client = client_scores("magnitude", victim, batches, params.update, params.significance, seed=0)
    own = make_mask(per_client, 0.1, "own")
    shared = make_mask(per_client, 0.1, "shared")
    assert int(own.sum()) == int(shared.sum()) == budget(0.1, per_client[0].numel())
    assert torch.equal(own, top_k_mask(per_client[0], 0.1))
    assert torch.equal(shared, top_k_mask(shared_scores(per_client), 0.1))
    assert not torch.equal(own, shared)  # other clients' data move the shared mask
    with pytest.raises(ValueError, match="needs the scores of K >= 2 clients"):
        make_mask(per_client[:1], 0.1, "shared")
    with pytest.raises(ValueError, match="unknown mask source 'mine'"):
        make_mask(per_client, 0.1, "mine")
