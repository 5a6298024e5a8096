"""DAGER: exact sentences from the first attention block's gradient span, and what it does with less of it."""

import pytest
import torch

from selenc import data
from selenc.attacks import ATTACKS, BATCHED
from selenc.attacks.text.dager import Span, candidates, dager
from selenc.attacks.text.reading import SeenRows
from selenc.attacks.text.token_leakage import token_leakage
from selenc.metrics import text_scores
from selenc.models import client_targets, target_batch
from selenc.observed import observe, observe_client
from tests.conftest import with_changes
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


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_batch_4_reads_every_token_at_its_position_and_beats_the_token_set(victims, params, raw, arch):
    """Client 0's batch of 4 (targets 0, 10, 20, 30), unprotected FedSGD: block 0's candidates hold every token at its
    position, DAGER's sentences hold no token outside the batch, and they score a higher ROUGE-1 than the token set
    (what token leakage gives every sample)."""
    victim = victims[arch]
    update = with_changes(raw, **{"update.batch_size": 4, "frontier.n_max": 5}).update
    batch = target_batch(victim, "rotten_tomatoes", client_targets("rotten_tomatoes", 0, 4))
    observed = observe_client(victim, batch, update)
    for p, c_p in enumerate(candidates(Span(SeenRows(observed, "mask_aware"), victim, 0), victim)):
        truth = {int(t) for t, m in zip(batch.inputs[:, p], batch.attention_mask[:, p], strict=True) if m}
        assert truth <= {t for t, _ in c_p}
    true_ids = inner_tokens(victim, batch)
    texts = [victim.tokenizer.decode(ids) for ids in true_ids]
    result, bag = dager(observed, victim), token_leakage(observed, victim)
    assert result.info["fallback"] is None and len(result.token_ids) == 4
    assert {t for row in result.token_ids for t in row} <= {t for row in true_ids for t in row}
    rouge = [text_scores(r.texts, texts, r.token_ids, true_ids)["rouge1"] for r in (result, bag)]
    assert rouge[0] > rouge[1]


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_fedavg_batch_4_leaves_no_span_and_falls_back_to_the_token_set(victims, raw, arch):
    """FedAvg, 3 local steps: block 0's rows move between the steps, so its gradient spans no fixed set of input rows
    the check could use; DAGER says so and answers with the embedding rows, which still give the exact token set."""
    victim = victims[arch]
    changes = {"update.kind": "fedavg", "update.batch_size": 4, "update.local_steps": 3, "frontier.n_max": 5}
    batch = target_batch(victim, "rotten_tomatoes", client_targets("rotten_tomatoes", 0, 4))
    result = dager(observe_client(victim, batch, with_changes(raw, **changes).update), victim)
    assert result.info["fallback"] == "token_leakage"
    assert result.info["leaked_ids"] == sorted({t for row in inner_tokens(victim, batch) for t in row})
