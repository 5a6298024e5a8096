"""Selective CKKS encryption and homomorphic FedAvg, with real TenSEAL keys and ciphertexts (no mocks)."""

import dataclasses
import math

import pytest
import tenseal as ts
import torch

from selenc import data, he
from selenc.gradients import FlatLayout, client_update
from selenc.models import build_victim
from selenc.observed import ObservedUpdate, public_info
from selenc.selection import budget, shared_scores, top_k_mask
from tests.conftest import with_changes

SLOTS = 4096  # params.yaml: poly_modulus_degree 8192


@pytest.fixture(scope="module")
def lenet(params):
    return build_victim("lenet", params)


@pytest.fixture(scope="module")
def updates(lenet, params):
    """LeNet FedSGD updates of three different real CIFAR-10 images (one per client)."""
    images = data.target_images("cifar10")
    out = []
    for i in range(3):
        one = data.Images(images.images[i : i + 1], images.labels[i : i + 1])
        out.append(client_update(lenet, lenet.image_batch(one), params.update))
    return out


@pytest.fixture(scope="module")
def client(params):
    return he.HEClient(params.he)


@pytest.fixture(scope="module")
def server(client):
    return he.HEServer(client.public_bytes())


def test_slots_match_params(params):
    assert he.slots(params.he) == SLOTS == params.he.poly_modulus_degree // 2


@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.2, 0.5, 1.0])
def test_round_trip_and_ciphertext_count(client, updates, ratio):
    update = updates[0]
    n = update.numel()
    mask = top_k_mask(update.abs(), ratio)
    k = budget(ratio, n)
    enc = client.encrypt(update, mask, n=n)
    assert enc.k == k and len(enc.ciphertexts) == math.ceil(k / SLOTS) == enc.cost.ciphertexts
    assert enc.visible.dtype == torch.float32 and enc.visible.numel() == n - k
    if ratio == 0.0:
        assert enc.ciphertexts == () and torch.equal(enc.visible, update)
    if ratio == 1.0:
        assert enc.visible.numel() == 0 and len(enc.ciphertexts) == 4  # ceil(15,826 / 4,096)
    out, cost = client.decrypt(enc)
    assert out.shape == update.shape
    assert torch.equal(out[~mask], update[~mask])  # plaintext part: bit-exact
    if k:
        err = (out[mask] - update[mask]).abs().max().item()
        assert err < 1e-5 * update.abs().max().item()
        assert cost.decrypt_s > 0


@pytest.mark.parametrize("k", [1, 4095, 4096, 4097, 8192, 8193])
def test_packing_at_slot_boundaries(client, k):
    n = 9000
    update = torch.linspace(-1, 1, n)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=torch.Generator().manual_seed(k))[:k]] = True
    enc = client.encrypt(update, mask)
    assert len(enc.ciphertexts) == -(-k // SLOTS)
    out, _ = client.decrypt(enc)
    assert (out - update).abs().max().item() < 1e-6


def test_cost_fields_add_up(client, updates):
    update = updates[0]
    n = update.numel()
    for ratio, encoding in [(0.01, "index"), (0.5, "bitmap")]:
        enc = client.encrypt(update, top_k_mask(update.abs(), ratio))
        c = enc.cost
        assert c.n == n and c.k == budget(ratio, n)
        assert c.cipher_bytes == sum(len(b) for b in enc.ciphertexts) > 0
        assert c.plain_bytes == 4 * (n - c.k)
        assert c.mask_encoding == encoding and c.mask_bytes == min(math.ceil(n / 8), 4 * c.k)
        assert c.wire_bytes == c.cipher_bytes + c.plain_bytes + c.mask_bytes
        assert c.plaintext_bytes == 4 * n
        assert 0 < c.serialize_s < c.encrypt_s


def test_homomorphic_fedavg_equals_plaintext_fedavg(params, updates):
    alice = he.HEClient(params.he)
    clients = [alice, he.HEClient(params.he, alice.secret_bytes()), he.HEClient(params.he, alice.secret_bytes())]
    server = he.HEServer(alice.public_bytes())
    mask = top_k_mask(shared_scores([u.abs() for u in updates]), 0.5)  # one mask for all: slot-wise addition
    uploads = [c.encrypt(u, mask) for c, u in zip(clients, updates, strict=True)]
    for weights in (None, [1.0, 2.0, 5.0]):
        agg = server.aggregate(uploads, weights)
        assert agg.clients == 3 and len(agg.ciphertexts) == math.ceil(budget(0.5, mask.numel()) / SLOTS)
        w = torch.full((3,), 1 / 3, dtype=torch.float64) if weights is None else torch.tensor(weights) / 8.0
        expected = sum(wi * u.double() for wi, u in zip(w, updates, strict=True))
        for c in clients:  # every client holds the key and decrypts the same aggregate
            got, dec = c.decrypt(agg)
            rel = ((got.double() - expected).abs().max() / expected.abs().max()).item()
            print(f"weights={weights}: max |HE FedAvg - FedAvg| / max |FedAvg| = {rel:.3e}")
            assert rel < 1e-5
        # the encrypted coordinates really went through CKKS: approximate, not bit-exact
        assert (got.double() - expected)[mask].abs().max().item() > 0
        assert agg.cost.aggregate_s > 0
        # the aggregate's ciphertexts are one level lower, hence smaller than an upload's
        assert agg.cost.cipher_bytes < uploads[0].cost.cipher_bytes
        round_ = he.round_cost(uploads[0].cost, agg.cost, dec)
        assert round_.encrypt_s == uploads[0].cost.encrypt_s and round_.aggregate_s == agg.cost.aggregate_s
        assert round_.decrypt_s == dec.decrypt_s > 0 and round_.wire_bytes == uploads[0].cost.wire_bytes


def test_zero_weight_drops_a_client(client, server, updates):
    mask = top_k_mask(updates[0].abs(), 0.3)
    uploads = [client.encrypt(u, mask) for u in updates[:2]]
    got, _ = client.decrypt(server.aggregate(uploads, [0.0, 3.0]))
    assert (got - updates[1]).abs().max().item() < 1e-5 * updates[1].abs().max().item()


def test_key_separation(client, server, updates):
    public = client.public_bytes()
    assert client.context.has_secret_key()
    assert not ts.context_from(public).has_secret_key() and ts.context_from(public).is_public()
    assert not server.context.has_secret_key()
    assert ts.context_from(client.secret_bytes()).has_secret_key()
    enc = client.encrypt(updates[0], top_k_mask(updates[0].abs(), 0.1))
    with pytest.raises(he.HEError, match="no secret key: only clients can decrypt"):
        server.decrypt(enc)
    with pytest.raises(he.HEError, match="no secret key"):
        he.decrypt(ts.context_from(public), enc)
    # TenSEAL itself refuses too: the server's ciphertext objects have no key to decrypt with
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(server.context, enc.ciphertexts[0]).decrypt()
    with pytest.raises(he.HEError, match="secret key"):
        he.HEServer(client.secret_bytes())
    with pytest.raises(he.HEError, match="public context"):
        he.HEClient(client.cfg, public)


def test_another_key_cannot_read_the_ciphertexts(params, client, updates):
    update = updates[0]
    mask = top_k_mask(update.abs(), 0.1)
    enc = client.encrypt(update, mask)
    stranger, _ = he.HEClient(params.he).decrypt(enc)
    assert (stranger[mask] - update[mask]).abs().max().item() > 1.0  # garbage, not the update


def test_observed_view_holds_visible_values_only(params, lenet, client, updates):
    update = updates[0]
    layout = FlatLayout.of(lenet.model)
    mask = top_k_mask(update.abs(), 0.2)
    enc = client.encrypt(update, mask)
    public = public_info(lenet, 1, params.update)
    seen = enc.observed(layout, public)
    reference = ObservedUpdate.observe(update, mask, layout, public)
    assert isinstance(seen, ObservedUpdate)
    assert torch.equal(seen.visible, reference.visible) and torch.equal(seen.mask, reference.mask)
    assert seen.visible.numel() == update.numel() - int(mask.sum())
    assert seen.public == public
    # what the server sees, and the public models of a run's rounds (one message: none)
    assert {f.name for f in dataclasses.fields(seen)} == {"visible", "mask", "layout", "public", "weights", "publics"}
    assert seen.weights is None and seen.publics is None
    assert not any(isinstance(v, bytes) for v in dataclasses.asdict(seen.public).values())  # no ciphertext inside
    with pytest.raises(he.HEError, match="layout has n="):
        enc.observed(FlatLayout(("w",), ((10,),), (0, 10)), public)


# --- bad input ---------------------------------------------------------------------------------------------------
def test_aggregate_refuses_different_masks(client, server, updates):
    a = client.encrypt(updates[0], top_k_mask(updates[0].abs(), 0.1))
    b = client.encrypt(updates[1], top_k_mask(updates[1].abs(), 0.1))
    with pytest.raises(he.HEError, match=r"client 1's mask differs .* same \(shared\) mask"):
        server.aggregate([a, b])
    short = client.encrypt(updates[0][:100], torch.zeros(100, dtype=torch.bool))
    with pytest.raises(he.HEError, match="client 1 sent n=100"):
        server.aggregate([a, short])
    with pytest.raises(he.HEError, match="at least one"):
        server.aggregate([])


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0], "got 1 weights for 2 clients"),
        ([1.0, 2.0, 3.0], "got 3 weights for 2 clients"),
        ([1.0, -0.5], "must be >= 0"),
        ([0.0, 0.0], "positive sum"),
        ([float("nan"), 1.0], "finite"),
    ],
)
def test_aggregate_refuses_bad_weights(client, server, updates, weights, message):
    mask = top_k_mask(updates[0].abs(), 0.05)
    uploads = [client.encrypt(u, mask) for u in updates[:2]]
    with pytest.raises(he.HEError, match=message):
        server.aggregate(uploads, weights)


def test_encrypt_refuses_bad_updates(client, updates):
    update = updates[0]
    n = update.numel()
    mask = top_k_mask(update.abs(), 0.1)
    with pytest.raises(he.HEError, match="equal length"):
        client.encrypt(update, mask[:-1])
    with pytest.raises(he.HEError, match=f"expected n={n + 1:,}"):
        client.encrypt(update, mask, n=n + 1)
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = update.clone()
        broken[7] = bad
        with pytest.raises(he.HEError, match="1 NaN/inf values"):
            client.encrypt(broken, mask)
    huge = torch.full((10,), 3e38)  # finite, but its float32 sum overflows: must not be taken for NaN/inf
    assert client.encrypt(huge, torch.zeros(10, dtype=torch.bool)).visible.eq(3e38).all()
    with pytest.raises(he.HEError, match="1-D bool tensor"):
        client.encrypt(update, mask.float())
    with pytest.raises(he.HEError, match="1-D float tensor"):
        client.encrypt(update.view(1, -1), mask)


def test_ciphertext_budget_is_checked_before_encrypting(raw, updates, monkeypatch):
    cfg = with_changes(raw, **{"he.max_ciphertexts": 1}).he
    small = he.HEClient(cfg)
    update = updates[0]
    n = update.numel()
    full = torch.zeros(n, dtype=torch.bool)
    full[:4096] = True
    assert len(small.encrypt(update, full).ciphertexts) == 1  # exactly one full ciphertext fits

    def no_encryption(*args, **kwargs):
        raise AssertionError("encrypted before checking the ciphertext budget")

    monkeypatch.setattr(he.ts, "ckks_vector", no_encryption)
    with pytest.raises(he.HEError) as info:
        small.encrypt(update, top_k_mask(update.abs(), 0.5))
    msg = str(info.value)
    assert f"k={budget(0.5, n):,}" in msg and "max_ciphertexts=1" in msg and "4,096 values" in msg
    suggested = float(msg.split("use a ratio <= ")[1].split()[0])
    assert suggested <= 4096 / n and budget(suggested, n) <= 4096


def test_one_full_ciphertext_cost(client):
    # ranges only: on a shared machine the two medians can swap order
    assert 1e-4 < he.encrypt_cost_of_one_full_ciphertext(client, repeats=9) < 1.0
    assert 1e-4 < he.encrypt_cost_of_one_full_ciphertext(client, repeats=9, serialize=False) < 1.0
