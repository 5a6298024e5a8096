"""The shared update (FedSGD / FedAvg) and the flat index layout."""

import numpy as np
import pytest
import torch

from selenc import data
from selenc.gradients import FlatLayout, client_update
from tests.conftest import with_changes
from tests.test_models import real_batch


@pytest.fixture(scope="module")
def layout(victims):
    return FlatLayout.of(victims["gpt2"].model)


def test_layout_round_trip_and_index_map(layout, victims):
    model = victims["gpt2"].model
    assert layout.n == sum(p.numel() for p in model.parameters())
    flat = torch.arange(layout.n, dtype=torch.float64)
    parts = layout.unflatten(flat)
    assert torch.equal(layout.flatten(parts), flat)
    assert torch.equal(layout.flatten(list(parts.values())), flat)
    rng = np.random.default_rng(0)
    for i in [*rng.integers(0, layout.n, 200).tolist(), 0, layout.n - 1]:
        name, pos = layout.locate(i)
        assert layout.index(name, pos) == i
        assert parts[name][pos] == i  # the value stored at that position is the flat index itself
    idx = rng.integers(0, layout.n, 10_000)
    k = layout.parameter_of(idx)
    assert all(layout.names[kk] == layout.locate(int(i))[0] for kk, i in zip(k[:100], idx[:100], strict=True))
    wte = layout.span("transformer.wte.weight")
    assert wte.stop - wte.start == model.transformer.wte.weight.numel()


def test_layout_rejects_bad_input(layout):
    with pytest.raises(ValueError, match="expected a 1-D vector of"):
        layout.unflatten(torch.zeros(layout.n + 1))
    parts = layout.unflatten(torch.zeros(layout.n))
    parts[layout.names[0]] = torch.zeros(3)
    with pytest.raises(ValueError, match=f"{layout.names[0]!r} has shape \\(3,\\)"):
        layout.flatten(parts)
    with pytest.raises(ValueError, match="no tensor for parameter"):
        layout.flatten({})
    with pytest.raises(IndexError, match="flat indices must lie in"):
        layout.parameter_of(np.array([layout.n]))
    with pytest.raises(KeyError, match="no parameter named 'nope'"):
        layout.span("nope")


def test_fedsgd_is_the_flattened_gradient(victims, params):
    victim = victims["lenet"]
    batch = real_batch(victim, params)
    victim.model.zero_grad()
    victim.loss(batch).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in victim.model.parameters()])
    victim.model.zero_grad()
    assert torch.allclose(client_update(victim, batch, params.update), expected)


def test_fedavg_is_the_model_delta_and_leaves_the_model_alone(victims, raw, params):
    victim = victims["cnn"]
    batch = real_batch(victim, params)
    before = [p.detach().clone() for p in victim.model.parameters()]
    one = with_changes(raw, **{"update.kind": "fedavg", "update.local_steps": 1, "update.local_lr": 0.1}).update
    g = client_update(victim, batch, params.update)
    assert torch.allclose(client_update(victim, batch, one), 0.1 * g, atol=1e-7)
    three = with_changes(raw, **{"update.kind": "fedavg", "update.local_steps": 3, "update.local_lr": 0.1}).update
    delta = client_update(victim, batch, three)
    copy = [p.detach().clone().requires_grad_() for p in victim.model.parameters()]  # manual SGD on a copy
    names = [n for n, _ in victim.model.named_parameters()]
    for _ in range(3):
        grads = torch.autograd.grad(victim.loss(batch, dict(zip(names, copy, strict=True))), copy)
        copy = [(c - 0.1 * gr).detach().requires_grad_() for c, gr in zip(copy, grads, strict=True)]
    manual = torch.cat([(b - c).reshape(-1) for b, c in zip(before, copy, strict=True)])
    assert torch.allclose(delta, manual, atol=1e-6)
    assert not torch.allclose(delta, 0.3 * g, atol=1e-6)  # three steps differ from one big step
    for p, b in zip(victim.model.parameters(), before, strict=True):
        assert torch.equal(p, b)


def test_update_is_differentiable_in_the_input_for_attacks(victims, params):
    victim = victims["lenet"]
    batch = real_batch(victim, params, n=1)
    batch.inputs.requires_grad_(True)
    g = client_update(victim, batch, params.update, create_graph=True)
    (grad_x,) = torch.autograd.grad(g.square().sum(), batch.inputs)
    assert torch.isfinite(grad_x).all() and grad_x.abs().sum() > 0


def test_text_update_from_embeddings_matches_ids_outside_the_embedding(victims, params):
    victim = victims["gpt2"]
    batch = victim.text_batch(data.target_sentences()[:1])
    layout = FlatLayout.of(victim.model)
    from_ids = client_update(victim, batch, params.update)
    embeds = victim.model.transformer.wte(batch.inputs).detach()
    from_embeds = client_update(victim, type(batch)(embeds, batch.labels, batch.attention_mask), params.update)
    wte = layout.span("transformer.wte.weight")
    assert torch.allclose(from_ids[wte.stop :], from_embeds[wte.stop :], atol=1e-6)
    assert from_embeds[wte].abs().sum() == 0  # the token table is not reached from embeddings
    rows = from_ids[wte].view(-1, victim.model.config.n_embd).abs().sum(1).nonzero().flatten()
    assert set(rows.tolist()) == set(batch.inputs.flatten().tolist())  # token leakage: rows of the batch's tokens
