"""DAGER: exact sentences from the first attention block's gradient span, and what it does with less of it."""

import pytest
import torch

from selenc import data
from selenc.attacks import ATTACKS, BATCHED
from selenc.attacks.text.dager import Span, candidates, dager
from selenc.attacks.text.reading import SeenRows
from selenc.observed import observe, observe_client
from tests.test_attacks_text import inner_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def block0_mask(victim, observed, keep: int | None) -> torch.Tensor:
    """A mask hiding block 0's attention projections except the last `keep` input-space vectors of the first one
    (GPT-2: of the value part; the query part misses position 0, which attends to itself alone) (None: hide all)."""
    mask = torch.zeros(observed.n, dtype=torch.bool)
    named = dict(victim.model.named_parameters())
    for i, (name, rows_are_inputs) in enumerate(victim.attention_projections(0)):
        block = mask[observed.layout.span(name)].view(named[name].shape)
        block[:] = True
        if keep is not None and i == 0:
            (block if rows_are_inputs else block.T)[-keep:] = False
    return mask


def test_registered_as_an_analytic_text_attack():
    assert "dager" in ATTACKS and "dager" in BATCHED


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_recovers_the_whole_sentence_at_batch_1(victims, params, arch):
    victim = victims[arch]
    batch = victim.text_batch(data.target_sentences()[1:2])
    result = dager(observe_client(victim, batch, params.update), victim)
    assert result.token_ids == inner_tokens(victim, batch)
    assert result.info["fallback"] is None and result.labels.tolist() == batch.labels.tolist()


def test_block0_candidates_hold_every_token_at_its_position_at_batch_3(victims, params):
    victim = victims["bert"]
    batch = victim.text_batch(data.target_sentences()[:3])
    cands = candidates(Span(SeenRows(observe_client(victim, batch, params.update), "mask_aware"), victim, 0), victim)
    assert len(cands) == batch.inputs.shape[1]  # positions run to the longest sentence, then nothing passes
    for p, c_p in enumerate(cands):
        truth = {int(t) for t, m in zip(batch.inputs[:, p], batch.attention_mask[:, p], strict=True) if m}
        assert truth <= {t for t, _ in c_p}


def test_needs_only_rank_many_visible_vectors(victims, params):
    victim = victims["gpt2"]
    batch = victim.text_batch(data.target_sentences()[:1])
    full = observe_client(victim, batch, params.update)
    length = batch.inputs.shape[1]
    update = torch.zeros(full.n)
    update[full.visible_index] = full.visible
    few = observe(victim, update, block0_mask(victim, full, keep=2 * length), 1, params.update)
    result = dager(few, victim)
    assert result.info["block0"] == f"rank {length} on 128 of 128 coordinates from {2 * length} visible vectors"
    assert result.token_ids == inner_tokens(victim, batch)
    # fewer vectors than inputs: the span is too small, every token fails the check, the embedding rows answer
    too_few = observe(victim, update, block0_mask(victim, full, keep=length - 2), 1, params.update)
    assert dager(too_few, victim).info["fallback"] == "token_leakage"


def test_block0_hidden_falls_back_to_the_embedding_rows(victims, params):
    victim = victims["gpt2"]
    batch = victim.text_batch(data.target_sentences()[:2])
    full = observe_client(victim, batch, params.update)
    update = torch.zeros(full.n)
    update[full.visible_index] = full.visible
    hidden = observe(victim, update, block0_mask(victim, full, keep=None), 2, params.update)
    result = dager(hidden, victim)
    assert result.info["fallback"] == "token_leakage" and result.info["block0"].startswith("unusable")
    truth = sorted({t for row in inner_tokens(victim, batch) for t in row})
    assert result.info["leaked_ids"] == truth  # not the prior: the embedding rows still show the tokens
