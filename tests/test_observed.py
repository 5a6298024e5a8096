"""The server's view: only the visible values cross, the mask and the public facts beside them, one constructor."""

import dataclasses

import pytest
import torch

from selenc.gradients import FlatLayout, client_update
from selenc.observed import ObservedUpdate, observe, observe_client, public_info
from selenc.selection import top_k_mask
from tests.test_models import real_batch


@pytest.fixture
def lenet_layout(victims):
    return FlatLayout.of(victims["lenet"].model)


@pytest.fixture
def public(victims, params):
    return public_info(victims["lenet"], 1, params.update)


def test_observed_update_holds_only_the_visible_values(lenet_layout, public):
    n = lenet_layout.n
    update = torch.randn(n, generator=torch.Generator().manual_seed(1))
    mask = top_k_mask(update.abs(), 0.2)
    update[mask] = 12345.0  # a sentinel: the hidden values must appear nowhere in the observed view
    observed = ObservedUpdate.observe(update, mask, lenet_layout, public)
    assert observed.visible.numel() == n - int(mask.sum())
    assert torch.equal(observed.visible, update[~mask])
    for f in dataclasses.fields(observed):
        value = getattr(observed, f.name)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert not (value == 12345.0).any(), f"hidden values reachable through {f.name}"
    filled = observed.zero_filled()
    assert torch.equal(filled[mask], torch.zeros(int(mask.sum())))
    assert torch.equal(filled[~mask], update[~mask])
    update[~mask] = 0.0  # the view is a copy: later changes to the client's tensor do not reach it
    assert observed.visible.abs().sum() > 0


def test_observed_update_rejects_mismatched_inputs(lenet_layout, public):
    n = lenet_layout.n
    with pytest.raises(ValueError, match=f"flat vector of {n} values"):
        ObservedUpdate.observe(torch.zeros(n - 1), torch.zeros(n - 1, dtype=torch.bool), lenet_layout, public)
    with pytest.raises(ValueError, match="mask must be a bool vector"):
        ObservedUpdate.observe(torch.zeros(n), torch.zeros(n), lenet_layout, public)


def test_rows_show_one_parameter_with_its_hidden_entries_unseen(victims, params):
    victim = victims["lenet"]
    update = client_update(victim, real_batch(victim, params, n=1), params.update)
    mask = top_k_mask(update.abs(), 0.5)
    observed = observe(victim, update, mask, 1, params.update, "magnitude")
    layout = FlatLayout.of(victim.model)
    values, seen = observed.rows("fc.weight", (10, 768))
    span = layout.span("fc.weight")
    assert torch.equal(seen.flatten(), ~mask[span])
    assert torch.equal(values.flatten()[seen.flatten()], update[span][~mask[span]])
    assert not values.flatten()[~seen.flatten()].any()
    assert torch.equal(observed.visible_index, (~mask).nonzero().flatten())


def test_observe_records_the_public_facts_and_the_client_view_hides_nothing_by_default(victims, params):
    victim = victims["gpt2"]
    batch = real_batch(victim, params, n=1)
    observed = observe_client(victim, batch, params.update)
    assert not observed.mask.any() and torch.equal(observed.visible, client_update(victim, batch, params.update))
    info = observed.public
    assert (info.arch, info.batch_size, info.num_classes, info.input_shape) == ("gpt2", 1, 2, victim.input_shape)
    assert info.metric is None and info.mask_source == "own" and info.ties == "index"
    masked = observe(
        victim,
        observed.visible,
        top_k_mask(observed.visible.abs(), 0.1),
        1,
        params.update,
        "embedding_rows",
        "shared",
        "decoys",
    )
    assert (masked.public.metric, masked.public.mask_source, masked.public.ties) == (
        "embedding_rows",
        "shared",
        "decoys",
    )
    assert masked.public.model_facts == info.model_facts  # batchable together: the mask's origin may differ
