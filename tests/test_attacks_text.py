"""Text attacks: token leakage, TAG, LAMP on BERT and GPT-2 with tiny budgets (their strength: the benchmark)."""

import pytest
import torch

from selenc import data
from selenc.attacks import ATTACKS, BATCHED, MODALITY, VECTORISED
from selenc.attacks.base import Matcher
from selenc.attacks.text import embedding
from selenc.attacks.text.decoding import proposal
from selenc.attacks.text.lamp import polish
from selenc.attacks.text.objective import Distance
from selenc.attacks.text.reading import SeenRows, label_candidates, leakage, sequence_length
from selenc.attacks.text.token_leakage import token_leakage
from selenc.gradients import FlatLayout, client_update
from selenc.models import Batch
from selenc.observed import ObservedUpdate, observe, observe_client
from selenc.selection import decoy_key, top_k
from selenc.significance import ClientView, scores
from tests.conftest import with_changes

TEXT = ["bert", "gpt2"]
TINY = {
    "attacks.text.tag.steps": 3,
    "attacks.text.tag.restarts": 1,
    "attacks.text.lamp.steps": 4,
    "attacks.text.lamp.restarts": 1,
    "attacks.text.lamp.reorder_every": 2,
    "attacks.text.lamp.reorder_candidates": 2,
    "attacks.text.lamp.polish": 5,
}


pytestmark = pytest.mark.usefixtures("one_thread")


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
    cfg = params.attacks.of(name)  # None for the analytic attacks
    return ATTACKS[name](observed, victim, cfg, threat_model, seed)


def word_row_mask(victim, observed, rows: dict[int, slice]) -> torch.Tensor:
    """A mask hiding the given entries of token-embedding rows."""
    name, table = victim.word_embedding()
    span = observed.layout.span(name)
    mask = torch.zeros(observed.n, dtype=torch.bool)
    block = mask[span].view(table.shape)
    for row, cols in rows.items():
        block[row, cols] = True
    return mask


def same(a, b) -> bool:
    return torch.equal(a.labels, b.labels) and a.token_ids == b.token_ids and a.texts == b.texts


def test_registry_declares_the_text_attacks_and_how_each_runs_a_batch():
    text = {a for a, m in MODALITY.items() if m == "text"}
    assert text == {"token_leakage", "dager", "tag", "lamp"} and text <= set(ATTACKS) & set(BATCHED)
    assert text & VECTORISED == {"tag", "lamp"}  # the analytic attacks run their trials one by one


# --- token leakage ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("update", [{}, {"update.batch_size": 4}, {"update.batch_size": 4, "update.kind": "fedavg"}])
@pytest.mark.parametrize("arch", TEXT)
def test_token_leakage_recovers_the_token_set_at_ratio_0(victims, raw_params, arch, update):
    """Batches of 3 and 4, FedSGD and FedAvg (3 local steps: an absent token's row never moves): the exact token set."""
    victim = victims[arch]
    cfg = with_changes(raw_params, **update, **{"update.local_steps": 3, "frontier.n_max": 5}).update
    size = cfg.batch_size if update else 3
    batch = victim.text_batch(sentences(size))
    result = token_leakage(observe_client(victim, batch, cfg), victim)
    truth = sorted({t for row in inner_tokens(victim, batch) for t in row})
    assert result.info["leaked_ids"] == truth
    assert all(sorted(ids) == truth for ids in result.token_ids)  # B > 1: the set, given to every sample
    assert result.info["ordered"] is False and len(result.labels) == size


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
def test_a_mask_of_unknown_origin_leaves_fully_hidden_rows_unknown(victims, params, arch):
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
    assert aware.info["from_mask"] == 0 and aware.info["mask_reading"].startswith("none")
    blind_fill = token_leakage(masked, victim, threat_model="zero_fill")
    assert blind_fill.info["leaked_ids"] == aware.info["leaked_ids"] and blind_fill.info["unknown_rows"] == 0


def ranked_observed(victim, params, batch, k: int, metric: str = "magnitude", public: str | None = "same"):
    """The server's view of `batch`'s update under the top-k mask of `metric` (ties to the lower index), the metric
    made public as `public` ("same": the metric itself; None: withheld)."""
    update = client_update(victim, batch, params.update)
    view = ClientView(victim, batch, update, params.update, params.significance, 0)
    mask = top_k(scores(metric, view), k)
    return observe(victim, update, mask, len(batch), params.update, metric if public == "same" else public)


@pytest.mark.parametrize("arch", TEXT)
def test_the_mask_gives_the_token_set_away(victims, params, arch):
    """k < the non-zero count: every hidden coordinate is non-zero, so fully hidden token rows (embedding_rows hides
    them first) are the batch's tokens; the zero_fill attacker and a mask of unknown origin read none of them."""
    victim = victims[arch]
    batch = victim.text_batch(sentences(2, 2))
    truth = sorted({t for row in inner_tokens(victim, batch) for t in row})
    nonzero = int((client_update(victim, batch, params.update) != 0).sum())
    observed = ranked_observed(victim, params, batch, nonzero // 2, "embedding_rows")
    aware = token_leakage(observed, victim, threat_model="mask_aware")
    assert aware.info["leaked_ids"] == truth and aware.info["from_mask"] > 0
    assert aware.info["unknown_rows"] == 0 and aware.info["mask_reading"].startswith("support")
    assert len(aware.info["leaked_ids"]) > len(
        token_leakage(observed, victim, threat_model="zero_fill").info["leaked_ids"]
    )
    unread = ranked_observed(victim, params, batch, nonzero // 2, "embedding_rows", public=None)
    assert token_leakage(unread, victim).info["from_mask"] == 0


@pytest.mark.parametrize("arch", TEXT)
@pytest.mark.parametrize("name", ["token_leakage", "tag"])
def test_all_zero_visible_values_at_a_partial_mask_are_not_blind(victims, tiny, arch, name):
    """k > the non-zero count: every visible value is 0 and ties hide the first zero rows; the token rows past them,
    the length and the vocabulary are still read off the mask, and the attack does not return its prior."""
    victim = victims[arch]
    batch = victim.text_batch(sentences(1, 4))
    update = client_update(victim, batch, tiny.update)
    width = victim.model.get_input_embeddings().weight.shape[1]
    observed = ranked_observed(victim, tiny, batch, int((update != 0).sum()) + 3000 * width)
    assert not observed.visible.any()
    tokens = sorted(set(inner_tokens(victim, batch)[0]))
    boundary_row = SeenRows(observed, "mask_aware").boundary - observed.layout.span(victim.word_embedding()[0]).start
    boundary_row //= width
    assert 0 < boundary_row < max(tokens), "the ties must hide some rows, and a token must lie past them"
    result = run(name, observed, victim, tiny, "mask_aware", seed=0)
    assert not result.info.get("blind") and result.info["length"] == batch.inputs.shape[1]
    assert result.info["length_source"] == "position_rows"
    if name == "token_leakage":
        assert result.info["leaked_ids"] == [t for t in tokens if t > boundary_row]
        assert result.info["unknown_rows"] >= boundary_row  # the tie-filled rows: in the batch or not, unknown
    else:
        assert result.info["vocab"] == "leaked+hidden_rows" and result.info["vocab_size"] < victim.tokenizer.vocab_size


@pytest.mark.parametrize("arch", TEXT)
def test_decoy_ties_hide_the_support(victims, params, arch):
    """The same budget past the support with client-seeded decoy rows: the hidden rows are the tokens and random
    decoys alike, so the mask-reading attacker reads no token off the mask (and says so)."""
    victim = victims[arch]
    batch = victim.text_batch(sentences(1, 4))
    update = client_update(victim, batch, params.update)
    name, table = victim.word_embedding()
    span = FlatLayout.of(victim.model).span(name)
    key = decoy_key(update.numel(), [(span.start, *table.shape)], seed=0)
    mask = top_k(update.abs(), int((update != 0).sum()) + 3000 * table.shape[1], key)
    observed = observe(victim, update, mask, 1, params.update, "magnitude", ties="decoys")
    result = token_leakage(observed, victim)
    assert result.info["leaked_ids"] == [] and result.info["mask_reading"].startswith("none")
    tokens = set(inner_tokens(victim, batch)[0])
    assert result.info["unknown_rows"] > 2000, "decoy rows and token rows hidden alike"
    hidden_rows = mask[span].view(table.shape).all(1).nonzero().flatten().tolist()
    assert tokens <= set(hidden_rows) and max(hidden_rows) > 0.9 * table.shape[0], "decoys spread over the table"


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
    name, table = victim.word_embedding()
    for tm in ("mask_aware", "zero_fill"):
        values, seen = SeenRows(observed, tm)(name, table.shape)
        ref_values, ref_seen = observed.rows(name, tuple(table.shape))
        assert torch.equal(values, ref_values) and torch.equal(seen, ref_seen)


def distance_of(observed, victim, threat_model, kind, alpha, dummy):
    d = Distance([observed], victim, [threat_model], kind, alpha)
    row = d.row()
    return float(d.value(dummy.inputs, dummy.labels, dummy.attention_mask, *row))


@pytest.mark.parametrize("arch", TEXT)
def test_distance_equals_the_matchers(victims, params, arch):
    victim = victims[arch]
    batch = victim.text_batch(sentences(1, 3))
    update = client_update(victim, batch, params.update)
    mask = torch.rand(update.numel(), generator=torch.Generator().manual_seed(0)) < 0.3
    observed = observe_client(victim, batch, params.update, mask)
    width = victim.model.get_input_embeddings().embedding_dim
    x = torch.randn(1, batch.inputs.shape[1], width, generator=torch.Generator().manual_seed(1)) * 0.05
    dummy = Batch(x, batch.labels, batch.attention_mask)
    layout = observed.layout
    for tm in ("mask_aware", "zero_fill"):
        matcher = Matcher(observed, victim, tm)
        want = float(matcher.l2_l1(dummy, 0.01).detach())
        assert distance_of(observed, victim, tm, "l2_l1", 0.01, dummy) == pytest.approx(want, rel=1e-4)
        # LAMP's per-tensor cosine, from the full updates tensor by tensor
        weight = torch.ones(observed.n) if tm == "zero_fill" else (~observed.mask).float()
        d = client_update(victim, dummy, params.update) * weight
        t = observed.zero_filled() * weight
        pieces = [(d[layout.span(n)], t[layout.span(n)]) for n in layout.names if n != victim.word_embedding()[0]]
        largest = max(float(b.norm()) for _, b in pieces)  # tensors at round-off (BERT's key biases) are left out
        terms = [1 - float(a.dot(b) / (a.norm() * b.norm())) for a, b in pieces if float(b.norm()) > 1e-6 * largest]
        got = distance_of(observed, victim, tm, "layer_cosine", 0.0, dummy)
        assert got == pytest.approx(sum(terms) / len(terms), rel=1e-4)


def test_fedavg_distance_equals_the_matchers(victims, raw_params):
    victim = victims["gpt2"]
    params = with_changes(raw_params, **TINY, **{"update.kind": "fedavg", "update.local_steps": 2})
    batch = victim.text_batch(sentences(1, 7))
    observed = observe_client(victim, batch, params.update)
    x = victim.model.get_input_embeddings().weight.detach()[batch.inputs]
    dummy = Batch(x + 0.01, batch.labels, batch.attention_mask)
    want = float(Matcher(observed, victim, "mask_aware").l2_l1(dummy, 0.5).detach())
    assert distance_of(observed, victim, "mask_aware", "l2_l1", 0.5, dummy) == pytest.approx(want, rel=1e-5)
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
        assert len(result.losses) >= tiny.attacks.of(name).steps
    if name == "lamp":
        assert result.info["lm_prior"].startswith("none (lm_weight 0)")  # params.yaml: prior off (test_prior.py)


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
    name, _ = victim.word_embedding()
    mask = torch.zeros(observed.n, dtype=torch.bool)
    mask[observed.layout.span(name)] = True  # every token-embedding row encrypted
    hidden = run("tag", observe_client(victim, batch, params.update, mask), victim, params)
    assert hidden.info["vocab"] == "full (embedding rows encrypted)"
    assert hidden.info["vocab_size"] == victim.model.get_input_embeddings().num_embeddings
    off = with_changes(raw_params, **TINY, **{"attacks.text.lamp.restrict_vocab": False})
    assert run("lamp", observed, victim, off).info["vocab"] == "full (restrict_vocab off)"


def test_polish_keeps_only_improvements_and_undoes_a_swap():
    target = torch.arange(8).unsqueeze(0)
    seen = []

    def score(rows, proposals) -> torch.Tensor:  # tokens out of place, every row's proposal in one call
        seen.extend(p.clone() for p in proposals)
        return torch.tensor([float((p != target).sum()) for p in proposals])

    swapped, moved = target.clone(), target.clone()
    swapped[0, [1, 6]] = swapped[0, [6, 1]]
    moved[0] = moved[0, [0, 2, 3, 1, 4, 5, 6, 7]]
    start = [(float((s != target).sum()), s) for s in (swapped, moved)]
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    found = polish(start, 400, score, gens)
    assert all(value == 0 and torch.equal(ids, target) for value, ids in found), "both rows climb to the target"
    assert all(sorted(c[0].tolist()) == list(range(8)) for c in seen)  # reorderings only
    gen = torch.Generator().manual_seed(1)
    assert all(not torch.equal(proposal(n, gen), torch.arange(n)) for n in (2, 3, 9) for _ in range(100))
    assert polish(start, 0, score, gens)[0][1] is swapped  # no budget, no change


@pytest.mark.parametrize("arch", TEXT)
@pytest.mark.parametrize("name", ["tag", "lamp"])
def test_batched_equals_one_at_a_time(victims, raw_params, arch, name, monkeypatch):
    """Trials of different lengths, masks and threat models attacked as one batch give each trial the outcome it gets
    alone, up to float round-off: the same labels and decoded tokens, losses to 1e-3; whether the batch's rows go
    through one torch.func.vmap call (a GPU's way, forced here) or one by one through autograd (the CPU's). LAMP's
    discrete phases compare distances that can tie to round-off, so there the losses are compared up to the first
    phase and the decoded tokens as a multiset (the order may differ where two reorderings score alike)."""
    victim = victims[arch]
    params = with_changes(raw_params, **(TINY | {f"attacks.text.{name}.restarts": 2}))
    cfg = params.attacks.of(name)
    observed, threats = [], ["mask_aware", "zero_fill", "mask_aware"]
    for i, start in enumerate((0, 1, 2)):
        batch = victim.text_batch(sentences(1, start))
        n = client_update(victim, batch, params.update).numel()
        mask = torch.rand(n, generator=torch.Generator().manual_seed(i)) < 0.3 * i
        observed.append(observe_client(victim, batch, params.update, mask))
    assert len({o.public.batch_size for o in observed}) == 1
    lengths = {victim.text_batch(sentences(1, s)).inputs.shape[1] for s in (0, 1, 2)}
    assert len(lengths) > 1, "the batch mixes lengths, so its rows are padded"
    eager = BATCHED[name](observed, victim, cfg, threats, [3, 4, 5])
    monkeypatch.setitem(embedding.VECTORISE, "cpu", True)
    vectorised = BATCHED[name](observed, victim, cfg, threats, [3, 4, 5])
    monkeypatch.undo()
    for i in range(3):
        alone = BATCHED[name]([observed[i]], victim, cfg, [threats[i]], [3 + i])[0]
        for together in (eager[i], vectorised[i]):
            assert torch.equal(together.labels, alone.labels)
            if name == "tag":
                assert together.token_ids == alone.token_ids
                assert together.losses == pytest.approx(alone.losses, rel=1e-3)
            else:
                assert [sorted(t) for t in together.token_ids] == [sorted(t) for t in alone.token_ids]
                first = cfg.reorder_every
                assert together.losses[:first] == pytest.approx(alone.losses[:first], rel=1e-3)
            assert together.info["batch"] == 3 and alone.info["batch"] == 1


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
