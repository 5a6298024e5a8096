"""One trial's data flow: what the client prepares and sends, how an attack's output is scored into a row, and how a
worker's batch survives a failing trial."""

import pytest
import torch

from selenc import trial as trial_mod
from selenc.attacks import AttackResult
from selenc.gradients import client_update
from selenc.models import client_targets
from selenc.results import decode_images
from selenc.selection import budget, make_mask
from tests.conftest import with_changes
from tests.test_grid import trial as grid_point


@pytest.fixture(scope="module")
def small(raw_params):
    return with_changes(raw_params, **{"significance.samples": 1, "attacks.image.dlg.steps": 3})


def test_prepare_sends_the_visible_values_of_the_trials_own_sample_and_keeps_the_rest(small, victims):
    victim = victims["lenet"]
    prepared = trial_mod.prepare(grid_point(), small, victim)
    update = client_update(victim, prepared.batch, small.update)
    n = update.numel()
    assert int(prepared.mask.sum()) == budget(0.3, n) and torch.equal(
        prepared.mask, make_mask([update.abs()], 0.3, "own", None)
    )  # magnitude: the largest |g|
    assert torch.equal(prepared.observed.visible, update[~prepared.mask])
    assert prepared.support == int(update.ne(0).sum()) and 0 < prepared.phi < 1
    assert prepared.observed.public.metric == "magnitude"
    # trial t is the t-th client batch of the target pool, whatever the attack
    again = trial_mod.prepare(grid_point(attack="linear", threat_model="zero_fill"), small, victim)
    assert torch.equal(again.batch.inputs, prepared.batch.inputs) and torch.equal(again.mask, prepared.mask)
    assert not torch.equal(trial_mod.prepare(grid_point(trial=2), small, victim).batch.inputs, prepared.batch.inputs)
    none, everything = (trial_mod.prepare(grid_point(ratio=r), small, victim) for r in (0.0, 1.0))
    assert not none.mask.any() and everything.mask.all() and none.phi == 0.0 and everything.phi == pytest.approx(1.0)


def test_finish_scores_the_attack_output_against_the_true_sample(small, victims):
    victim = victims["lenet"]
    prepared = trial_mod.prepare(grid_point(), small, victim)
    perfect = AttackResult(labels=prepared.batch.labels.cpu(), images=prepared.batch.inputs.cpu(), seconds=1.5)
    row = trial_mod.finish(prepared, perfect, small, victim)
    assert row.status == "ok" and row.psnr > 45 and row.ssim > 0.99 and row.label_acc == 1.0
    assert (row.k, row.n, row.phi, row.attack_s) == (int(prepared.mask.sum()), prepared.mask.numel(), prepared.phi, 1.5)
    assert abs(decode_images(row.reconstruction) - prepared.batch.inputs.cpu().numpy()).max() <= 0.5 / 255 + 1e-6
    wrong = AttackResult(labels=(prepared.batch.labels.cpu() + 1) % 10, images=torch.zeros_like(perfect.images))
    assert trial_mod.finish(prepared, wrong, small, victim).label_acc == 0.0


def test_finish_fails_on_a_score_the_row_does_not_know():
    assert trial_mod.measured({"psnr": 1.0, "order": [0]}) == {"psnr": 1.0}
    with pytest.raises(ValueError, match=r"scores \['psnr_db'\] have no column"):
        trial_mod.measured({"psnr_db": 1.0})


def test_a_failing_trial_becomes_an_error_row_and_the_rest_of_the_batch_finishes(small, victims):
    trials = [grid_point(trial=0), grid_point(metric="no_such_metric", trial=1), grid_point(trial=2)]
    outcomes = trial_mod.run_trials(trials, small, victims["lenet"])
    assert [o.status for o in outcomes] == ["ok", "error", "ok"]
    assert "ValueError: unknown significance metric 'no_such_metric'" in outcomes[1].error
    assert "significance.py:" in outcomes[1].error  # where it was raised
    assert outcomes[0].psnr is not None and outcomes[0].attack_s > 0


def test_a_trial_sends_the_update_it_names_and_its_client_keeps_its_first_sample(small, victims):
    victim = victims["lenet"]
    assert client_targets("cifar10", 2, 4) == [2, 7, 12, 17] and client_targets("cifar10", 2, 1) == [2]
    assert sorted(i for c in range(5) for i in client_targets("cifar10", c, 4)) == list(range(20))  # disjoint clients
    one = trial_mod.prepare(grid_point(trial=2), small, victim)
    four = trial_mod.prepare(grid_point(trial=2, batch_size=4), small, victim)  # the update section says batch 1
    assert small.update.batch_size == 1 and four.observed.public.batch_size == 4 and len(four.batch.inputs) == 4
    assert torch.equal(four.batch.inputs[0], one.batch.inputs[0])  # client 2 starts with target 2 at any batch size
    fedavg = grid_point(trial=2, batch_size=4, update_kind="fedavg", local_steps=3, local_lr=0.1)
    avg = trial_mod.prepare(fedavg, small, victim)
    assert avg.observed.public.update == fedavg.update and fedavg.update.local_steps == 3
    sent = client_update(victim, avg.batch, fedavg.update)
    assert torch.equal(avg.observed.visible, sent[~avg.mask])
    assert not torch.allclose(sent, client_update(victim, avg.batch, four.observed.public.update))
