"""Text attacks: token leakage, TAG, LAMP on BERT and GPT-2 with tiny budgets (their strength: the benchmark)."""

import pytest
import torch

from selenc import data
from selenc.attacks.base import Matcher
from selenc.attacks.text import (
    ATTACKS,
    Objective,
    SeenRows,
    _polish,
    _proposal,
    label_candidates,
    leakage,
    sequence_length,
    token_leakage,
    word_embedding,
)
from selenc.gradients import FlatLayout, client_update
from selenc.models import Batch
from selenc.observed import ObservedUpdate, observe_client
from tests.conftest import with_changes

TEXT = ["bert", "gpt2"]
TINY = {
    "attacks.tag.steps": 3,
    "attacks.tag.restarts": 1,
    "attacks.lamp.steps": 4,
    "attacks.lamp.restarts": 1,
    "attacks.lamp.reorder_every": 2,
    "attacks.lamp.reorder_candidates": 2,
    "attacks.lamp.polish": 5,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on the shared 2-core machine two threads run these small ops up to 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(raw_params):
    return with_changes(raw_params, **TINY)


def sentences(n: int, start: int = 0) -> list[data.Sentence]:
    return data.target_sentences()[start : start + n]


def observed_of(victim, params, n=1, start=0, mask=None):
    return observe_client(victim, victim.text_batch(sentences(n, start)), params.update, mask)


def inner_tokens(victim, batch) -> list[list[int]]:
    special = set(victim.tokenizer.all_special_ids)
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(batch.inputs, batch.attention_mask, strict=True)]
    return [[t for t in r if t not in special] for r in rows]


def run(name, observed, victim, params, threat_model="mask_aware", seed=0):
    cfg = None if name == "token_leakage" else getattr(params.attacks, name)
    return ATTACKS[name](observed, victim, cfg, threat_model, seed)


def word_row_mask(victim, observed, rows: dict[int, slice]) -> torch.Tensor:
    """A mask hiding the given entries of token-embedding rows."""
    name, table = word_embedding(victim)
    span = observed.layout.span(name)
    mask = torch.zeros(observed.n, dtype=torch.bool)
    block = mask[span].view(table.shape)
    for row, cols in rows.items():
        block[row, cols] = True
    return mask


def same(a, b) -> bool:
    return torch.equal(a.labels, b.labels) and a.token_ids == b.token_ids and a.texts == b.texts


def test_registry():
    assert set(ATTACKS) == {"token_leakage", "tag", "lamp"}


# --- token leakage ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", TEXT)
def test_token_leakage_recovers_the_token_set_at_ratio_0(victims, params, arch):
    victim = victims[arch]
    batch = victim.text_batch(sentences(3))
    result = token_leakage(observe_client(victim, batch, params.update), victim)
    truth = sorted({t for row in inner_tokens(victim, batch) for t in row})
    assert result.info["leaked_ids"] == truth
    assert all(sorted(ids) == truth for ids in result.token_ids)  # B > 1: the set, given to every sample
    assert result.info["ordered"] is False and len(result.labels) == 3


@pytest.mark.parametrize("arch", TEXT)
def test_token_leakage_reads_the_whole_sentence_at_batch_1(victims, params, arch):
    victim = victims[arch]
    for i in (0, 1):
        batch = victim.text_batch(sentences(1, i))
        result = token_leakage(observe_client(victim, batch, params.update), victim)
        assert result.token_ids == inner_tokens(victim, batch), "order and repeats from the position rows"
        assert result.labels.tolist() == batch.labels.tolist()
        assert result.info["ordered"] and result.info["length_source"] == "position_rows"
        assert result.info["length"] == batch.inputs.shape[1]


@pytest.mark.parametrize("arch", TEXT)
def test_token_leakage_loses_the_fully_hidden_rows(victims, params, arch):
    victim = victims[arch]
    batch = victim.text_batch(sentences(1, 1))
    tokens = sorted(set(inner_tokens(victim, batch)[0]))
    gone, half = tokens[:2], tokens[2]
    observed = observe_client(victim, batch, params.update)
    mask = word_row_mask(victim, observed, {gone[0]: slice(None), gone[1]: slice(None), half: slice(0, 50)})
    masked = observe_client(victim, batch, params.update, mask)
    aware = token_leakage(masked, victim, threat_model="mask_aware")
    assert aware.info["leaked_ids"] == [t for t in tokens if t not in gone], "a partly hidden row still leaks"
    assert aware.info["unknown_rows"] == 2 and not aware.info["ordered"]
    blind_fill = token_leakage(masked, victim, threat_model="zero_fill")
    assert blind_fill.info["leaked_ids"] == aware.info["leaked_ids"] and blind_fill.info["unknown_rows"] == 0


# --- what the optimisation attacks read off the update ----------------------------------------------------------------
@pytest.mark.parametrize("arch", TEXT)
def test_length_labels_and_vocabulary_from_the_update(victims, params, arch):
    victim = victims[arch]
    batch = victim.text_batch(sentences(1, 2))
    observed = observe_client(victim, batch, params.update)
    leak = leakage(observed, victim)
    assert sequence_length(observed, victim, "mask_aware", leak) == (batch.inputs.shape[1], "position_rows")
    cands, source = label_candidates(observed, victim, "mask_aware")
    if arch == "bert":  # the head bias gives the label (iDLG)
        assert (cands, source) == ([tuple(batch.labels.tolist())], "head_bias")
    else:  # GPT-2's score head has no bias: both labels are probed
        assert (cands, source) == ([(0,), (1,)], "probe")
    name, table = word_embedding(victim)
    for tm in ("mask_aware", "zero_fill"):
        values, seen = SeenRows(observed, tm)(name, table.shape)
        ref_values, ref_seen = observed.rows(name, tuple(table.shape))
        assert torch.equal(values, ref_values) and torch.equal(seen, ref_seen)


@pytest.mark.parametrize("arch", TEXT)
def test_objective_equals_the_matchers_distance(victims, params, arch):
    victim = victims[arch]
    batch = victim.text_batch(sentences(1, 3))
    update = client_update(victim, batch, params.update)
    mask = torch.rand(update.numel(), generator=torch.Generator().manual_seed(0)) < 0.3
    observed = observe_client(victim, batch, params.update, mask)
    width = victim.model.get_input_embeddings().embedding_dim
    x = torch.randn(1, batch.inputs.shape[1], width, generator=torch.Generator().manual_seed(1)) * 0.05
    dummy = Batch(x, batch.labels, batch.attention_mask)
    for tm in ("mask_aware", "zero_fill"):
        matcher, objective = Matcher(observed, victim, tm), Objective(observed, victim, tm)
        pieces = objective.update(dummy, create_graph=False)
        want, got = float(matcher.l2_l1(dummy, 0.01).detach()), float(objective.l2_l1(pieces, 0.01))
        assert got == pytest.approx(want, rel=1e-4)
        assert float(objective.cosine(pieces)) == pytest.approx(float(matcher.cosine(dummy).detach()), abs=1e-3)


def test_fedavg_updates_go_through_the_matcher(victims, raw_params):
    victim = victims["gpt2"]
    params = with_changes(raw_params, **TINY, **{"update.kind": "fedavg", "update.local_steps": 2})
    batch = victim.text_batch(sentences(1, 7))
    observed = observe_client(victim, batch, params.update)
    x = victim.model.get_input_embeddings().weight.detach()[batch.inputs]
    dummy = Batch(x + 0.01, batch.labels, batch.attention_mask)
    matcher, objective = Matcher(observed, victim, "mask_aware"), Objective(observed, victim, "mask_aware")
    assert objective.generic
    got = float(objective.l2_l1(objective.update(dummy, create_graph=False), 0.5))
    assert got == pytest.approx(float(matcher.l2_l1(dummy, 0.5).detach()), rel=1e-5)
    assert label_candidates(observed, victim, "mask_aware")[1] == "probe"
    result = run("tag", observed, victim, params)
    assert len(result.token_ids[0]) == batch.inputs.shape[1] and len(result.losses) >= 3


# --- TAG and LAMP -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", TEXT)
@pytest.mark.parametrize("name", ["token_leakage", "tag", "lamp"])
@pytest.mark.parametrize("threat_model", ["mask_aware", "zero_fill"])
def test_attacks_return_valid_reconstructions(victims, tiny, arch, name, threat_model):
    victim = victims[arch]
    batch_size = 2 if arch == "gpt2" else 1  # GPT-2 at B = 2 probes 3 label multisets
    batch = victim.text_batch(sentences(batch_size))
    result = run(name, observe_client(victim, batch, tiny.update), victim, tiny, threat_model)
    vocab = victim.model.get_input_embeddings().num_embeddings
    special = set(victim.tokenizer.all_special_ids)
    assert result.labels.shape == (batch_size,) and set(result.labels.tolist()) <= {0, 1}
    assert len(result.token_ids) == len(result.texts) == batch_size
    for ids, text in zip(result.token_ids, result.texts, strict=True):
        assert ids and all(isinstance(t, int) and 0 <= t < vocab and t not in special for t in ids)
        assert text == victim.tokenizer.decode(ids)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.seconds > 0 and result.info["threat_model"] == threat_model
    assert result.info["length"] == batch.inputs.shape[1]
    if name != "token_leakage":
        assert len(result.losses) >= getattr(tiny.attacks, name).steps
    if name == "lamp":
        assert "no pretrained language model" in result.info["lm_prior"]


@pytest.mark.parametrize("arch", TEXT)
@pytest.mark.parametrize("name", ["tag", "lamp"])
def test_attacks_are_reproducible_with_a_seed(victims, tiny, arch, name):
    victim = victims[arch]
    observed = observed_of(victim, tiny)
    first = run(name, observed, victim, tiny, seed=5)
    assert same(first, run(name, observed, victim, tiny, seed=5))
    assert first.losses == run(name, observed, victim, tiny, seed=5).losses


@pytest.mark.parametrize("arch", TEXT)
def test_vocabulary_restriction_and_its_fallback(victims, raw_params, arch):
    victim = victims[arch]
    params = with_changes(raw_params, **TINY)
    batch = victim.text_batch(sentences(1, 4))
    truth = set(inner_tokens(victim, batch)[0])
    observed = observe_client(victim, batch, params.update)
    restricted = run("tag", observed, victim, params)
    # decoded onto the leaked tokens, each of them at least once (a 3-step run cannot find them otherwise)
    assert restricted.info["vocab"] == "leaked" and set(restricted.token_ids[0]) == truth
    name, _ = word_embedding(victim)
    mask = torch.zeros(observed.n, dtype=torch.bool)
    mask[observed.layout.span(name)] = True  # every token-embedding row encrypted
    hidden = run("tag", observe_client(victim, batch, params.update, mask), victim, params)
    assert hidden.info["vocab"] == "full (embedding rows encrypted)"
    assert hidden.info["vocab_size"] == victim.model.get_input_embeddings().num_embeddings
    off = with_changes(raw_params, **TINY, **{"attacks.lamp.restrict_vocab": False})
    assert run("lamp", observed, victim, off).info["vocab"] == "full (restrict_vocab off)"


def test_polish_keeps_only_improvements_and_undoes_a_swap():
    target = torch.arange(8).unsqueeze(0)
    seen = []

    def distance(ids: torch.Tensor) -> float:  # tokens out of place
        seen.append(ids.clone())
        return float((ids != target).sum())

    start = target.clone()
    start[0, [1, 6]] = start[0, [6, 1]]
    value, ids = _polish(start, distance(start), 300, distance, torch.Generator().manual_seed(0))
    assert value == 0 and torch.equal(ids, target)
    assert all(sorted(c[0].tolist()) == list(range(8)) for c in seen)  # reorderings only
    gen = torch.Generator().manual_seed(1)
    assert all(not torch.equal(_proposal(n, gen), torch.arange(n)) for n in (2, 3, 9) for _ in range(100))
    assert _polish(start, 2.0, 0, distance, torch.Generator())[1] is start  # no budget, no change


@pytest.mark.parametrize("arch", TEXT)
@pytest.mark.parametrize("name", ["tag", "lamp"])
def test_everything_hidden_returns_the_prior(victims, tiny, arch, name):
    victim = victims[arch]
    everything = torch.ones(FlatLayout.of(victim.model).n, dtype=torch.bool)
    results = []
    for start in (0, 5):  # two different clients: the prior cannot depend on them
        hidden = observe_client(victim, victim.text_batch(sentences(1, start)), tiny.update, everything)
        results.append(run(name, hidden, victim, tiny, "mask_aware", seed=3))
    assert all(r.info.get("blind") and r.losses == [] for r in results)
    assert same(*results)
    assert results[0].info["length_source"] == "max_length" and results[0].info["vocab"].startswith("full")


@pytest.mark.parametrize("arch", TEXT)
@pytest.mark.parametrize("name", ["token_leakage", "tag", "lamp"])
def test_hidden_values_cannot_reach_the_attack(victims, tiny, arch, name):
    victim = victims[arch]
    batch = victim.text_batch(sentences(1, 6))
    update = client_update(victim, batch, tiny.update)
    mask = torch.rand(update.numel(), generator=torch.Generator().manual_seed(2)) < 0.2
    layout = FlatLayout.of(victim.model)
    meta = observe_client(victim, batch, tiny.update).public
    results = []
    for fill in (0.0, 1e3):
        changed = update.clone()
        changed[mask] = fill  # whatever the encrypted values are
        observed = ObservedUpdate.observe(changed, mask, layout, meta)
        results.append(run(name, observed, victim, tiny, "mask_aware", seed=1))
    assert same(*results) and results[0].losses == results[1].losses


def test_unknown_threat_model_is_refused(victims, tiny):
    observed = observed_of(victims["gpt2"], tiny)
    for name in ATTACKS:
        with pytest.raises(ValueError, match="unknown threat model 'peek'"):
            run(name, observed, victims["gpt2"], tiny, "peek")
