"""Several rounds of one federated run: the run itself, the mask policies, the stacked server view and the attacker
that matches one candidate against every round."""

import pytest
import torch

from selenc import trial as trial_mod
from selenc.attacks import ATTACKS
from selenc.attacks.image.matching import Matching, observed_distance
from selenc.attacks.text.objective import Distance
from selenc.config import parse_params
from selenc.gradients import at_weights, client_update, model_weights
from selenc.models import Batch, client_targets, target_batch
from selenc.observed import ObservedUpdate, observe
from selenc.rounds import federated_run, peer_batches
from selenc.settings import FIRST_ROUND_IS_ONE_ROUND, MASK_POLICIES, ConfigError
from tests.conftest import with_changes
from tests.test_grid import trial as grid_point

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small(raw_params):
    return with_changes(raw_params, **{"significance.samples": 1, "attacks.image.dlg.steps": 4})


def rounds_point(rounds: int, policy: str = "fresh", **changes):
    return grid_point(rounds=rounds, mask_policy=policy, clients=3, server_lr=1.0, **changes)


def test_the_run_moves_the_global_model_by_the_mean_of_its_clients_updates(small, victims):
    victim = victims["lenet"]
    update = rounds_point(3).update
    batch = target_batch(victim, "cifar10", client_targets("cifar10", 0, 1))
    peers = peer_batches(victim, update)
    assert len(peers) == 2 and all(len(p) == 1 for p in peers)
    run = federated_run(victim, batch, peers, update)
    assert run.weights.shape == (3, model_weights(victim).numel())
    assert torch.equal(run.weights[0], model_weights(victim))
    assert torch.equal(run.updates[0], client_update(victim, batch, update))
    for r in (1, 2):
        before = at_weights(victim, run.weights[r - 1])
        mean = torch.stack([client_update(before, b, update) for b in [batch, *peers]]).mean(0)
        torch.testing.assert_close(run.weights[r], run.weights[r - 1] - mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(run.updates[r], client_update(at_weights(victim, run.weights[r]), batch, update))
    assert not torch.allclose(run.updates[0], run.updates[2])  # the model moved: the message changed
    assert torch.equal(model_weights(victim), run.weights[0])  # the victim itself never moves


def test_frozen_masks_show_one_rounds_coordinates_and_fresh_ones_show_more_each_round(small, victims):
    victim = victims["lenet"]
    one = trial_mod.prepare(rounds_point(1), small, victim)
    k = int(one.mask.sum())
    frozen = trial_mod.prepare(rounds_point(4, "frozen"), small, victim)
    assert all(torch.equal(m, one.mask) for m in frozen.masks)  # round 0 is the one-round message of the same sample
    assert int(frozen.masks.all(0).sum()) == k and frozen.observed.n == 4 * one.observed.n
    hidden_all = []
    for rounds in (1, 2, 4):
        fresh = trial_mod.prepare(rounds_point(rounds), small, victim)
        assert torch.equal(fresh.masks[0], one.mask) and (fresh.masks.sum(1) == k).all()
        hidden_all.append(int(fresh.masks.all(0).sum()))
    assert hidden_all[0] == k > hidden_all[1] >= hidden_all[2]  # the attacker's visible set grows with R
    union = trial_mod.prepare(rounds_point(4, "union"), small, victim)
    assert torch.equal(union.masks[0], one.mask) and int(union.masks.all(0).sum()) == k
    assert all(bool((union.masks[r] >= union.masks[r - 1]).all()) for r in range(1, 4))  # never reveals again
    assert int(union.masks[3].sum()) > k
    row = trial_mod.finish(union, ATTACKS["dlg"](union.observed, victim, small.attacks.image.dlg), small, victim)
    assert row.hidden_all == k and row.hidden_total == int(union.masks.sum()) and row.k == k


def test_random_fresh_masks_are_drawn_anew_each_round_and_frozen_ones_are_not(small, victims):
    victim = victims["lenet"]
    one = trial_mod.prepare(rounds_point(1, metric="random"), small, victim)
    fresh = trial_mod.prepare(rounds_point(3, metric="random"), small, victim)
    frozen = trial_mod.prepare(rounds_point(3, "frozen", metric="random"), small, victim)
    assert torch.equal(fresh.masks[0], one.mask) and torch.equal(frozen.masks[0], one.mask)
    assert not torch.equal(fresh.masks[1], fresh.masks[0]) and not torch.equal(fresh.masks[2], fresh.masks[1])
    assert all(torch.equal(m, one.mask) for m in frozen.masks)


def test_round_zero_is_the_one_round_message_exactly_under_the_policies_that_say_so(small, victims):
    victim = victims["lenet"]
    one = trial_mod.prepare(rounds_point(1), small, victim)
    for policy in MASK_POLICIES:
        first = trial_mod.prepare(rounds_point(2, policy), small, victim).masks[0]
        assert torch.equal(first, one.mask) == (policy in FIRST_ROUND_IS_ONE_ROUND), policy


def test_one_round_through_the_rounds_path_is_todays_attack(small, victims):
    victim = victims["lenet"]
    prepared = trial_mod.prepare(grid_point(), small, victim)
    plain = prepared.observed
    stacked = ObservedUpdate.of_rounds([plain], model_weights(victim)[None])
    assert stacked.rounds == 1 and torch.equal(stacked.visible, plain.visible)
    # linear runs IG's optimiser here: its L-BFGS form amplifies the float32 round-off of two equal objectives
    for name, extra in (("dlg", {}), ("ig", {}), ("linear", {"optimiser": "adam"})):
        cfg = small.attacks.of(name).model_copy(update={"steps": 4, "restarts": 2, **extra})
        a, b = (ATTACKS[name](o, victim, cfg, "mask_aware", 7) for o in (plain, stacked))
        torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-5)
        assert torch.equal(a.labels, b.labels)


def test_the_joint_objective_is_the_sum_over_rounds_and_its_gradient_matches_finite_differences(small, victims):
    victim = victims["lenet"]
    double = at_weights(victim, model_weights(victim))
    double.model.double()
    update = rounds_point(2).update
    batch = target_batch(double, "cifar10", client_targets("cifar10", 0, 1))
    batch = Batch(batch.inputs.double(), batch.labels)
    peers = [Batch(p.inputs.double(), p.labels) for p in peer_batches(double, update)]
    run = federated_run(double, batch, peers, update)
    rounds = list(zip(run.victims, run.updates, strict=True))
    views = [observe(v, u, torch.zeros_like(u, dtype=torch.bool), 1, update) for v, u in rounds]
    observed = ObservedUpdate.of_rounds(views, run.weights)
    matching = Matching(double, observed, rows=2)  # the functional (vmapped) form
    target = observed.zero_filled().double()
    weight = torch.ones_like(target)
    models = run.weights.double()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, 3, 32, 32), generator=gen, dtype=torch.float64)
    y = batch.labels

    def value(x):
        return matching.l2(x, y, target, weight, 1.0, None, models)

    per_round = sum((client_update(v, Batch(x, y), update) - u).square().sum() for v, u in rounds)
    torch.testing.assert_close(value(x), per_round)
    grad = torch.func.grad(value)(x)
    for _ in range(3):
        u = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        eps = 1e-5
        numeric = (value(x + eps * u) - value(x - eps * u)) / (2 * eps)
        torch.testing.assert_close((grad * u).sum(), numeric, rtol=1e-5, atol=1e-9)
    # the attacker's measure of a candidate runs over both rounds too: the true batch is at distance 0
    assert observed_distance(observed, double, "mask_aware", batch.inputs, y, "l2") < 1e-20


@pytest.mark.parametrize("kind", ["l2_l1", "layer_cosine"])
def test_the_text_distance_over_rounds_combines_each_rounds_under_its_own_model(small, victims, kind):
    """TAG's distance over two rounds is the sum of each round's (LAMP's layer cosine: their mean), each round's
    update taken under that round's global model, and it differentiates in the dummy embeddings."""
    victim = victims["gpt2"]
    point = {"arch": "gpt2", "attack": "tag", "metric": "embedding_rows", "ratio": 0.0}
    observed = trial_mod.prepare(rounds_point(2, **point), small, victim).observed
    joint = Distance([observed], victim, ["mask_aware"], kind, alpha=1.0)
    alone = [Distance([observed.round(r)], observed.victim_at(victim, r), ["mask_aware"], kind, 1.0) for r in (0, 1)]
    gen = torch.Generator().manual_seed(0)
    table = victim.model.get_input_embeddings().weight.detach()
    embeds = table[torch.randint(0, table.shape[0], (1, 6), generator=gen)] + 0.01 * torch.randn(
        1, 6, 128, generator=gen
    )
    labels, mask = torch.tensor([1]), torch.ones(1, 6, dtype=torch.long)
    per_round = [d.value(embeds, labels, mask, *d.row()) for d in alone]
    combined = sum(per_round) if kind == "l2_l1" else sum(per_round) / 2
    torch.testing.assert_close(joint.value(embeds, labels, mask, *joint.row()), combined, rtol=1e-4, atol=1e-6)
    assert not torch.isclose(per_round[0], per_round[1], rtol=1e-3, atol=0.0)
    grad = torch.func.grad(lambda e: joint.value(e, labels, mask, *joint.row()))(embeds)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_tag_and_lamp_attack_every_round_jointly(small, victims):
    victim = victims["gpt2"]
    point = {"arch": "gpt2", "attack": "tag", "metric": "embedding_rows", "ratio": 0.2}
    one = trial_mod.prepare(grid_point(**point), small, victim).observed
    frozen = trial_mod.prepare(rounds_point(3, "frozen", **point), small, victim).observed
    for name in ("tag", "lamp"):
        cfg = small.attacks.of(name).model_copy(update={"steps": 3, "restarts": 1})
        alone, joint = (ATTACKS[name](o, victim, cfg, "mask_aware", 5) for o in (one, frozen))
        assert joint.token_ids and len(joint.labels) == 1
        # a frozen mask shows the first round's embedding rows in every round: the same vocabulary and length
        assert joint.info["vocab_size"] == alone.info["vocab_size"] and joint.info["length"] == alone.info["length"]


def test_multi_round_grids_are_refused_where_nothing_can_run_them(raw):
    text = {"metrics": ["embedding_rows"], "ratios": [0.05], "attacks": ["tag", "lamp"], "updates": [{"rounds": 4}]}
    raw["sweep"]["gpt2"]["slices"] = [*raw["sweep"]["gpt2"].get("slices", []), text]
    parse_params(raw)  # every text attack combines rounds
    raw["sweep"]["gpt2"]["slices"].pop()
    image = {"metrics": ["magnitude"], "ratios": [0.3], "attacks": ["dlg", "linear"]}
    raw["sweep"]["lenet"]["slices"] = [image | {"updates": [{"rounds": 4, "clients": 3000, "batch_size": 2}]}]
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    assert str(info.value) == (
        "params: sweep.lenet.slices.0.updates.0: 2999 peers x batch size 2 = 5998 samples, but the pretraining pool "
        "the peers draw from has only 5000; lower clients or the batch size"
    )
    raw["sweep"]["lenet"]["slices"] = [image | {"updates": [{"rounds": 4}]}]
    parse_params(raw)  # every image attack combines rounds
    raw["update"]["rounds"] = 2
    with pytest.raises(ConfigError, match=r"^params: update\.rounds: 2, but the theory stage checks one message"):
        parse_params(raw)


def test_each_rounds_view_says_how_its_mask_was_chosen_and_the_rounds_token_set_holds_one_rounds(small, victims):
    """A frozen (or union) mask after round 0 was not chosen from that round's scores: reading it as that round's
    support would call every hidden row a token. Token leakage over frozen rounds finds one round's tokens, no more."""
    victim = victims["gpt2"]
    point = {"arch": "gpt2", "attack": "token_leakage", "metric": "embedding_rows", "ratio": 0.2}
    one = trial_mod.prepare(grid_point(**point), small, victim)
    frozen = trial_mod.prepare(rounds_point(3, "frozen", **point), small, victim)
    assert [frozen.observed.round(r).public.metric for r in range(3)] == ["embedding_rows", None, None]
    consensus = trial_mod.prepare(rounds_point(2, "consensus", **point), small, victim)
    assert {consensus.observed.round(r).public.mask_source for r in range(2)} == {"shared"}
    alone, joint = (ATTACKS["token_leakage"](p.observed, victim, None) for p in (one, frozen))
    assert joint.info["leaked_per_round"][0] == alone.info["leaked_tokens"] > 0
    assert set(joint.info["leaked_ids"]) == set(alone.info["leaked_ids"])
