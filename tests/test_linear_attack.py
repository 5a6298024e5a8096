"""The linear-layer inversion attack: exact features at batch 1, mask-aware reading (direction when the bias is
hidden, fallback when the whole layer is), zero-fill, batching, and real strength on the unprotected LeNet."""

import pytest
import torch

from selenc.attacks import ATTACKS, BATCHED, VECTORISED
from selenc.attacks.image.labels import recover_labels
from selenc.attacks.image.linear import read_features
from selenc.attacks.image.matching import random_images
from selenc.gradients import client_update
from selenc.metrics import image_scores
from selenc.models import Batch, target_batch
from selenc.observed import observe, observe_client
from selenc.theory import float64
from tests.conftest import with_changes

STEPS = 200  # the strength test's budget (the default is larger)
LENET_PSNR = 15.0  # mean over targets 0-1 at STEPS steps: 21.5 dB measured (2026-11-23), less a margin


pytestmark = pytest.mark.usefixtures("one_thread")


def true_features(victim, batch) -> torch.Tensor:
    """The input of the victim's last linear layer on the client's batch, from the model's own modules (the attack
    never sees this)."""
    with torch.no_grad():
        return victim.model.body(batch.inputs).flatten(1).double().cpu()


def fc_mask(observed, weight: bool, bias: bool) -> torch.Tensor:
    """Hide the last layer's weight and/or bias entirely."""
    mask = torch.zeros(observed.n, dtype=torch.bool)
    if weight:
        mask[observed.layout.span("fc.weight")] = True
    if bias:
        mask[observed.layout.span("fc.bias")] = True
    return mask


def with_changes_steps(params, steps: int):
    """The default linear attack with `steps` iterations."""
    return params.attacks.image.linear.model_copy(update={"steps": steps})


def read(observed, victim, threat_model="mask_aware"):
    return read_features(observed, victim, threat_model, recover_labels(observed, victim, 0), 0)


def test_registered():
    assert "linear" in ATTACKS and "linear" in BATCHED and "linear" in VECTORISED


@pytest.mark.parametrize("arch", ["lenet", "cnn"])
def test_exact_features_at_batch_one(victims, params, arch):
    """Unprotected, batch 1: the features read are the client's own last-layer input, to float round-off."""
    victim = victims[arch]
    for i in (0, 5):
        batch = target_batch(victim, "cifar10", [i])
        reading = read(observe_client(victim, batch, params.update), victim)
        truth = true_features(victim, batch)
        assert reading.kind == "exact" and bool(reading.scaled.all()) and bool(reading.known.all())
        assert reading.count == truth.numel()
        assert torch.allclose(reading.values, truth, atol=1e-5 * float(truth.abs().max()))


def test_hidden_bias_reads_the_direction(victims, params):
    """With the bias hidden the rows give h up to scale; non-negative features fix the sign."""
    victim = victims["lenet"]
    batch = target_batch(victim, "cifar10", [2])
    plain = observe_client(victim, batch, params.update)
    observed = observe_client(victim, batch, params.update, fc_mask(plain, weight=False, bias=True))
    reading = read(observed, victim)
    truth = true_features(victim, batch)[0]
    assert reading.kind == "direction" and not bool(reading.scaled.any()) and bool(reading.known.all())
    cosine = float(reading.values[0] @ truth / (reading.values[0].norm() * truth.norm()))
    assert cosine > 1 - 1e-6
    assert abs(float(reading.values[0].norm()) - 1.0) < 1e-9  # unit direction, not the true scale
    result = ATTACKS["linear"](observed, victim, with_changes_steps(params, 3), "mask_aware", 0)
    assert result.info["features"] == "direction" and not result.info["exact"]


def test_partial_rows_are_read_where_visible(victims, params):
    """Half of the weight rows' entries hidden at random: a feature is known iff some row shows it, and the rank-1
    fit over the visible entries alone reads each known one exactly."""
    victim = victims["lenet"]
    batch = target_batch(victim, "cifar10", [4])
    plain = observe_client(victim, batch, params.update)
    span = plain.layout.span("fc.weight")
    mask = torch.zeros(plain.n, dtype=torch.bool)
    mask[span] = torch.rand(span.stop - span.start, generator=torch.Generator().manual_seed(1)) < 0.5
    observed = observe_client(victim, batch, params.update, mask)
    reading = read(observed, victim)
    truth = true_features(victim, batch)
    shows = (~mask[span]).view(victim.num_classes, -1).any(0)
    assert reading.kind == "exact" and torch.equal(reading.known[0], shows) and 0.99 * truth.numel() < reading.count
    assert torch.allclose(reading.values[0, shows], truth[0, shows], atol=1e-5 * float(truth.abs().max()))
    assert bool((reading.values[0, ~shows] == 0).all())
    # zero-fill takes the hidden entries as zeros: it claims every feature and gets them wrong
    zero = read(observed, victim, "zero_fill")
    assert bool(zero.known.all()) and not torch.allclose(zero.values, truth, atol=1e-2 * float(truth.abs().max()))
    result = ATTACKS["linear"](observed, victim, with_changes_steps(params, 3), "zero_fill", 0)
    assert not result.info["exact"] and result.images.shape == batch.inputs.shape


def test_hidden_layer_falls_back_to_matching(victims, params):
    """The whole last layer hidden: no features, but the attack still matches the visible conv gradients."""
    victim = victims["lenet"]
    batch = target_batch(victim, "cifar10", [1])
    plain = observe_client(victim, batch, params.update)
    observed = observe_client(victim, batch, params.update, fc_mask(plain, weight=True, bias=True))
    assert read(observed, victim).kind == "none"
    result = ATTACKS["linear"](observed, victim, with_changes_steps(params, 20), "mask_aware", 0)
    prior = random_images(observed.public, 0, "linear", 0)
    assert result.info["features"] == "none" and result.info["features_known"] == 0 and not result.info["blind"]
    assert len(result.losses) >= 20 and result.losses[-1] < result.losses[0]
    assert not torch.equal(result.images, prior.clamp(0, 1))
    blind = observe_client(victim, batch, params.update, torch.ones(plain.n, dtype=torch.bool))
    assert ATTACKS["linear"](blind, victim, with_changes_steps(params, 3), "mask_aware", 0).info["blind"]


def test_batch_two_reads_label_rows(victims, params, raw):
    """Batch 2: each sample gets its label's row (a mix, flagged `mixed`, never `exact`)."""
    victim = victims["cnn"]
    update = with_changes(raw, **{"update.batch_size": 2, "frontier.n_max": 10}).update  # 10 probes x 2 = the pool
    batch = target_batch(victim, "cifar10", [0, 1])
    observed = observe_client(victim, batch, update)
    result = ATTACKS["linear"](observed, victim, with_changes_steps(params, 3), "mask_aware", 0)
    assert result.info["features"] == "mixed" and not result.info["exact"]
    assert result.images.shape == batch.inputs.shape and sorted(result.labels.tolist()) == sorted(batch.labels.tolist())


@pytest.mark.parametrize("arch", ["lenet", "cnn"])
def test_batch_four_with_distinct_labels_separates_the_samples(victims, raw, arch):
    """FedSGD batch 4, labels 3, 8, 0, 6: each sample's reading (its label's row) lies nearer its own features than
    any other sample's, and nearer them than the batch's mean features are. (Not so for FedAvg with 3 local steps,
    whose rows mix the steps' features too: README.)"""
    changes = {"update.batch_size": 4, "frontier.n_max": 5}
    update = with_changes(raw, **changes).update
    victim = victims[arch]
    batch = target_batch(victim, "cifar10", [0, 1, 3, 4])
    assert len(set(batch.labels.tolist())) == 4
    observed = observe_client(victim, batch, update)
    labels = recover_labels(observed, victim, 0)
    reading = read_features(observed, victim, "mask_aware", labels, 0)
    assert reading.kind == "mixed" and bool(reading.known.all()) and bool(reading.scaled.all())
    owner = [batch.labels.tolist().index(c) for c in labels.tolist()]  # the sample whose label each reading took
    truth = true_features(victim, batch)
    distance = torch.cdist(reading.values, truth)  # (reading, sample)
    assert distance.argmin(1).tolist() == owner
    mean = torch.cdist(truth.mean(0, keepdim=True), truth)[0]
    assert bool((distance[range(4), owner] < mean[owner]).all())


@pytest.mark.parametrize("arch", ["lenet", "cnn"])  # L-BFGS and signed Adam
def test_batched_equals_one_by_one(victims, params, arch):
    """Two trials (different samples, masks, threat models, seeds) attacked together and alone give the same results
    (float64: in float32 the batched kernels' round-off, amplified by the optimiser, moves pixels by ~1e-4)."""
    victim, _ = float64(victims[arch], target_batch(victims[arch], "cifar10", [3]))
    cfg = with_changes_steps(params, 5)
    batches = [target_batch(victim, "cifar10", [i]) for i in (3, 6)]
    updates = [client_update(victim, Batch(b.inputs.double(), b.labels), params.update) for b in batches]
    masks = [torch.zeros(updates[0].numel(), dtype=torch.bool), None]
    plain = observe(victim, updates[1], masks[0], 1, params.update)
    masks[1] = fc_mask(plain, weight=False, bias=True)
    observed = [observe(victim, u, m, 1, params.update) for u, m in zip(updates, masks, strict=True)]
    threats, seeds = ["mask_aware", "zero_fill"], [0, 1]
    together = BATCHED["linear"](observed, victim, cfg, threats, seeds)
    for i, joint in enumerate(together):
        alone = ATTACKS["linear"](observed[i], victim, cfg, threats[i], seeds[i])
        assert torch.equal(alone.labels, joint.labels) and alone.info["features"] == joint.info["features"]
        assert (alone.images - joint.images).abs().max() < 1e-6
        assert alone.losses == pytest.approx(joint.losses, rel=1e-6, abs=1e-12)


def test_breaks_unprotected_lenet(victims, params):
    """Ratio 0, batch 1: the attack alone recovers the images well above the moderate privacy bound."""
    victim = victims["lenet"]
    batches = [target_batch(victim, "cifar10", [i]) for i in (0, 1)]
    observed = [observe_client(victim, b, params.update) for b in batches]
    results = BATCHED["linear"](observed, victim, with_changes_steps(params, STEPS), ["mask_aware"] * 2, [0, 0])
    scores = [image_scores(r.images, b.inputs, r.labels, b.labels) for r, b in zip(results, batches, strict=True)]
    assert all(s["label_acc"] == 1.0 for s in scores)
    assert sum(s["psnr"] for s in scores) / len(scores) > LENET_PSNR
