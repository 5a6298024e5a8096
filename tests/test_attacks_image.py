"""The image attacks: valid, reproducible results; analytic labels; no access to hidden values; the prior when blind;
and real strength on the unprotected LeNet and CNN."""

import dataclasses
import inspect

import numpy as np
import pytest
import torch

from selenc import data
from selenc.attacks import ATTACKS, BATCHED, MODALITY, VECTORISED
from selenc.attacks.base import Matcher
from selenc.attacks.image.labels import recover_labels
from selenc.attacks.image.matching import Matching, observed_distance, random_images
from selenc.gradients import client_update
from selenc.metrics import image_scores, psnr
from selenc.models import Batch
from selenc.observed import ObservedUpdate, observe, observe_client
from selenc.selection import top_k, top_k_mask
from selenc.theory import float64
from tests.conftest import with_changes

TINY = {
    "attacks.image.dlg.steps": 4,
    "attacks.image.idlg.steps": 4,
    "attacks.image.ig.steps": 4,
    "attacks.image.ig.restarts": 2,
}
CIFAR = data.target_images("cifar10")
SENTINEL = 12345.678


def batch_of(victim, idx) -> Batch:
    idx = np.atleast_1d(idx)
    return victim.image_batch(data.Images(CIFAR.images[idx], CIFAR.labels[idx]))


def random_mask(n: int, ratio: float, seed: int = 0) -> torch.Tensor:
    return top_k_mask(torch.rand(n, generator=torch.Generator().manual_seed(seed)), ratio)


def run(name, observed, victim, params, threat_model="mask_aware", seed=3):
    return ATTACKS[name](observed, victim, params.attacks.of(name), threat_model, seed)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(raw_params):
    return with_changes(raw_params, **TINY)


def test_registry_declares_the_image_attacks_each_vectorised():
    image = {a for a, m in MODALITY.items() if m == "image"}
    assert image == {"dlg", "idlg", "ig", "linear"} and image <= VECTORISED & set(ATTACKS) & set(BATCHED)


@pytest.mark.parametrize("arch", ["lenet", "cnn"])
@pytest.mark.parametrize("threat_model", ["mask_aware", "zero_fill"])
@pytest.mark.parametrize("name", ["dlg", "idlg", "ig"])
def test_valid_and_reproducible(victims, tiny, arch, threat_model, name):
    victim = victims[arch]
    batch = batch_of(victim, [0, 3])
    n = sum(p.numel() for p in victim.model.parameters())
    observed = observe_client(victim, batch, tiny.update, random_mask(n, 0.3))
    first = run(name, observed, victim, tiny, threat_model)
    again = run(name, observed, victim, tiny, threat_model)
    other = run(name, observed, victim, tiny, threat_model, seed=4)
    assert first.images.shape == (2, *victim.input_shape) and first.images.dtype == torch.float32
    assert first.images.min() >= 0.0 and first.images.max() <= 1.0 and torch.isfinite(first.images).all()
    assert first.labels.shape == (2,) and first.labels.dtype == torch.long
    assert ((first.labels >= 0) & (first.labels < victim.num_classes)).all()
    assert first.losses and all(np.isfinite(first.losses)) and first.seconds > 0 and not first.info["blind"]
    assert len(first.info["restart_losses"]) == tiny.attacks.of(name).restarts
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert first.losses == again.losses
    assert not torch.equal(first.images, other.images)
    assert all(p.grad is None for p in victim.model.parameters())  # the attack never touches the model's .grad


@pytest.mark.parametrize("arch", ["lenet", "cnn"])
def test_idlg_labels_batch_one(victims, params, arch):
    """iDLG's sign rule recovers every target's label; by elimination even when its own last-layer row is hidden."""
    victim = victims[arch]
    layout_names = [name for name, _ in victim.model.named_parameters()]
    assert layout_names[-2:] == ["fc.weight", "fc.bias"]
    for i in range(len(CIFAR)):
        batch = batch_of(victim, i)
        observed = observe_client(victim, batch, params.update)
        assert recover_labels(observed, victim, seed=0).tolist() == batch.labels.tolist()
        y = int(batch.labels[0])
        mask = torch.zeros(observed.n, dtype=torch.bool)
        w, b = observed.layout.span("fc.weight"), observed.layout.span("fc.bias")
        mask[w] = (torch.arange(w.stop - w.start) // observed.layout.shapes[-2][1]) == y  # the label's weight row
        mask[b.start + y] = True
        hidden = observe_client(victim, batch, params.update, mask)
        assert recover_labels(hidden, victim, seed=0).tolist() == [y]


@pytest.mark.parametrize("kind", ["fedsgd", "fedavg"])
@pytest.mark.parametrize("arch", ["lenet", "cnn"])
def test_batch_label_heuristic(victims, raw, arch, kind):
    """Distinct labels (batch 4 and 8) and repeated ones (8, 8, 6, 6) are recovered as multisets."""
    victim = victims[arch]
    update = with_changes(raw, **{"update.kind": kind}).update
    distinct4 = [0, 1, 3, 4]  # labels 3, 8, 0, 6
    distinct8 = [0, 1, 3, 4, 6, 11, 12, 13]  # 3, 8, 0, 6, 1, 9, 5, 7
    repeats = [1, 2, 4, 5]  # 8, 8, 6, 6
    for idx in (distinct4, distinct8, repeats):
        batch = batch_of(victim, idx)
        observed = observe_client(victim, batch, update)
        assert observed.public.batch_size == len(idx)
        got = recover_labels(observed, victim, seed=0)
        assert sorted(got.tolist()) == sorted(batch.labels.tolist())


@pytest.mark.parametrize("rows", [1, 2])  # plain autograd, torch.func
@pytest.mark.parametrize("arch", ["lenet", "cnn"])
def test_fedavg_simulation_at_the_true_inputs_is_the_clients_update(victims, raw, arch, rows):
    """The attacker's simulation of 3 local SGD steps on a batch of 4 (`Matching.update`, with the protocol's public
    local settings), at the client's own inputs and labels, is the client's θ₀ − θ₃ to float64 round-off; and with
    one-hot soft labels (DLG's) too."""
    changes = {"update.kind": "fedavg", "update.batch_size": 4, "update.local_steps": 3, "frontier.n_max": 5}
    update = with_changes(raw, **changes).update
    victim, batch = float64(victims[arch], batch_of(victims[arch], [0, 5, 10, 15]))
    observed = observe_client(victim, batch, update)
    matching = Matching(victim, observed, rows)
    assert matching.functional == (rows > 1)
    want = observed.zero_filled()
    assert want.abs().max() > 0
    onehot = torch.nn.functional.one_hot(batch.labels, victim.num_classes).double()
    for labels in (batch.labels, onehot):
        got = matching.update(batch.inputs, labels).detach()
        assert (got - want).abs().max() <= 1e-12 * want.abs().max()
    moved = matching.update(batch.inputs.flip(0), batch.labels).detach()  # the samples' labels swapped round
    assert (moved - want).abs().max() > 1e-3 * want.abs().max()


def test_mask_aware_objective_ignores_hidden_values(victims, params):
    victim = victims["lenet"]
    batch = batch_of(victim, 0)
    update = observe_client(victim, batch, params.update)
    mask = random_mask(update.n, 0.5)
    full = update.zero_filled()
    planted = full.clone()
    planted[mask] = SENTINEL
    layout, meta = update.layout, update.public
    a, b = ObservedUpdate.observe(full, mask, layout, meta), ObservedUpdate.observe(planted, mask, layout, meta)
    dummy = Batch(random_images(a.public, 0, "test"), batch.labels)
    for objective in ("l2", "cosine"):
        la = getattr(Matcher(a, victim, "mask_aware"), objective)(dummy)
        lb = getattr(Matcher(b, victim, "mask_aware"), objective)(dummy)
        zero = getattr(Matcher(a, victim, "zero_fill"), objective)(dummy)
        assert torch.equal(la, lb)
        assert not torch.allclose(la, zero)


def _tensors(obj):
    """Every tensor reachable from an ObservedUpdate's fields and metadata."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


@pytest.mark.parametrize("name", ["dlg", "idlg", "ig"])
def test_attacks_cannot_reach_hidden_values(victims, tiny, name):
    victim = victims["cnn"]
    batch = batch_of(victim, 5)
    clean = observe_client(victim, batch, tiny.update)
    mask = random_mask(clean.n, 0.2, seed=1)
    planted = clean.zero_filled()
    planted[mask] = SENTINEL
    observed = {}
    for key, values in (("zero", clean.zero_filled()), ("sentinel", planted)):
        observed[key] = ObservedUpdate.observe(values, mask, clean.layout, clean.public)
    assert not any((t == SENTINEL).any() for t in _tensors(observed["sentinel"]) if t.is_floating_point())
    for threat_model in ("mask_aware", "zero_fill"):
        a = run(name, observed["zero"], victim, tiny, threat_model)
        b = run(name, observed["sentinel"], victim, tiny, threat_model)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.losses == b.losses


@pytest.mark.parametrize("name", ["dlg", "idlg", "ig"])
@pytest.mark.parametrize("arch", ["lenet", "cnn"])
def test_all_encrypted_returns_the_prior(victims, params, arch, name):
    """At ratio 1 the mask-aware attacker sees nothing: it returns its seeded init, no better than that init."""
    victim = victims[arch]
    batch = batch_of(victim, [7, 9])
    observed = observe_client(victim, batch, params.update, torch.ones(victim.num_parameters(), dtype=torch.bool))
    assert Matcher(observed, victim, "mask_aware").blind
    result = run(name, observed, victim, params, seed=11)
    prior = random_images(observed.public, 11, name, 0)
    assert result.info["blind"] and result.losses == []
    assert torch.equal(result.images, prior)
    assert psnr(result.images, batch.inputs) == psnr(prior, batch.inputs) < 12.0
    again = run(name, observed, victim, params, seed=11)
    assert torch.equal(again.labels, result.labels)


def test_no_signal_returns_the_prior(victims, params, tiny):
    """Zero-fill at ratio 1 compares against all zeros: IG's cosine is undefined, so IG returns its prior, while
    DLG still chases the zero gradient (what makes zero-fill overstate protection)."""
    victim = victims["cnn"]
    batch = batch_of(victim, 1)
    observed = observe_client(victim, batch, params.update, torch.ones(victim.num_parameters(), dtype=torch.bool))
    ig = run("ig", observed, victim, params, "zero_fill", seed=2)
    assert ig.info["blind"] and torch.equal(ig.images, random_images(observed.public, 2, "ig", 0))
    dlg = run("dlg", observed, victim, tiny, "zero_fill", seed=2)
    assert not dlg.info["blind"] and dlg.losses


@pytest.mark.parametrize("name", ["dlg", "ig"])
def test_all_zero_visible_values_at_a_partial_mask_match_the_support(victims, raw_params, name):
    """Magnitude with a budget past the ReLU CNN's support hides every non-zero value: the visible values are all 0,
    yet the mask shows where the update is non-zero. The mask-aware attack matches that support (not its prior): its
    objective falls and its answer depends on the client; withholding the metric leaves IG blind."""
    victim = victims["cnn"]
    params = with_changes(raw_params, **{f"attacks.image.{name}.steps": 30, f"attacks.image.{name}.restarts": 1})
    results = []
    for i in (4, 5):
        batch = batch_of(victim, i)
        update = observe_client(victim, batch, params.update).zero_filled()
        mask = top_k(update.abs(), int((update != 0).sum()) + 1000)
        observed = observe(victim, update, mask, 1, params.update, "magnitude")
        assert not observed.visible.any() and observed.visible.numel() > 0
        result = run(name, observed, victim, params, seed=1)
        assert not result.info["blind"] and result.info["objective"] == "support"
        assert result.losses[-1] < 0.9 * result.losses[0]
        results.append(result)
        if name == "ig":
            unread = observe(victim, update, mask, 1, params.update, None)
            assert run(name, unread, victim, params, seed=1).info["blind"]
    assert not torch.equal(results[0].images, results[1].images), "the answer must depend on the observed support"


def test_dlg_runs_on_tiny_visible_values(victims, raw_params):
    """A magnitude mask leaves only the smallest values visible; DLG must still run its iterations, not stop at once
    on L-BFGS's absolute tolerances."""
    victim = victims["lenet"]
    params = with_changes(raw_params, **{"attacks.image.dlg.steps": 40})
    batch = batch_of(victim, 0)
    update = observe_client(victim, batch, params.update).zero_filled()
    observed = observe_client(victim, batch, params.update, top_k_mask(update.abs(), 0.9))
    result = run("dlg", observed, victim, params)
    assert len(result.losses) >= 40 and result.losses[-1] < 0.5 * result.losses[0]


def test_dlg_breaks_unprotected_lenet(victims, params):
    """Real strength at the default budget: DLG reconstructs a CIFAR-10 image and its label from LeNet's gradient."""
    victim = victims["lenet"]
    batch = batch_of(victim, 0)
    result = run("dlg", observe_client(victim, batch, params.update), victim, params, seed=0)
    scores = image_scores(result.images, batch.inputs, result.labels, batch.labels)
    assert scores["psnr"] > 30.0 and scores["label_acc"] == 1.0


def test_ig_breaks_unprotected_cnn(victims, params):
    victim = victims["cnn"]
    batch = batch_of(victim, 2)
    result = run("ig", observe_client(victim, batch, params.update), victim, params, seed=0)
    scores = image_scores(result.images, batch.inputs, result.labels, batch.labels)
    assert scores["psnr"] > 20.0 and scores["label_acc"] == 1.0


@pytest.mark.parametrize("name", ["dlg", "idlg", "ig"])
@pytest.mark.parametrize("arch", ["lenet", "cnn"])
def test_batched_trials_equal_one_at_a_time(victims, raw_params, arch, name):
    """Trials with their own samples, masks (metric, source, ties), threat models and seeds, attacked as one batch, get
    what each gets alone:
    the same labels, losses and images to 1e-6 after 25 steps in float64 (in float32 the batched kernels' round-off,
    amplified by the optimisers on the ReLU CNN, moves images by up to ~0.06), a blind trial its prior."""
    victim, _ = float64(victims[arch], batch_of(victims[arch], 0))
    params = with_changes(raw_params, **{f"attacks.image.{name}.steps": 25, f"attacks.image.{name}.restarts": 2})
    n = victim.num_parameters()
    masks = [random_mask(n, 0.0), random_mask(n, 0.3, seed=1), random_mask(n, 0.6, seed=2), random_mask(n, 1.0)]
    batches = [batch_of(victim, i) for i in range(len(masks))]
    how = [("none", "own", "index"), ("random", "shared", "index"), ("random", "own", "decoys"), ("all",) * 3]
    updates = [client_update(victim, Batch(b.inputs.double(), b.labels), params.update) for b in batches]
    observed = [observe(victim, u, m, 1, params.update, *h) for u, m, h in zip(updates, masks, how, strict=True)]
    threats, seeds = ["mask_aware", "zero_fill", "mask_aware", "mask_aware"], [5, 6, 7, 8]
    cfg = params.attacks.of(name)
    together = BATCHED[name](observed, victim, cfg, threats, seeds)
    for i, result in enumerate(together):
        alone = BATCHED[name]([observed[i]], victim, cfg, [threats[i]], [seeds[i]])[0]
        assert result.info["blind"] == alone.info["blind"] == (i == 3)
        assert result.info["batch"] == 4 and alone.info["batch"] == 1
        assert torch.equal(result.labels, alone.labels)
        assert (result.images - alone.images).abs().max() < 1e-6
        assert result.losses == pytest.approx(alone.losses, rel=1e-6, abs=1e-12)
        assert result.info["restart_losses"] == pytest.approx(alone.info["restart_losses"], rel=1e-6, abs=1e-12)


def test_candidates_are_chosen_from_the_servers_view_alone(victims, params):
    """`observed_distance`, the winner's criterion, is handed the observed update and the public model, never the
    client's batch: it ranks the true image first, and changing the hidden values of the update changes nothing."""
    victim = victims["lenet"]
    batch = batch_of(victim, 2)
    update = observe_client(victim, batch, params.update)
    mask = random_mask(update.n, 0.5)
    planted = update.zero_filled().clone()
    planted[mask] = SENTINEL
    a = ObservedUpdate.observe(update.zero_filled(), mask, update.layout, update.public)
    b = ObservedUpdate.observe(planted, mask, update.layout, update.public)
    noise = random_images(a.public, 0, "candidate")
    for measure in ("l2", "cosine"):
        truth = observed_distance(a, victim, "mask_aware", batch.inputs, batch.labels, measure)
        other = observed_distance(a, victim, "mask_aware", noise, batch.labels, measure)
        assert truth < 1e-6 < other
        assert observed_distance(b, victim, "mask_aware", noise, batch.labels, measure) == other
    assert list(inspect.signature(observed_distance).parameters) == [
        "observed",
        "victim",
        "threat_model",
        "images",
        "labels",
        "measure",
    ]


def test_configurations_run_as_rows_and_the_closest_wins(victims, raw_params):
    """IG with two TV weights runs one candidate per (restart, weight) from the same inits; the result is the candidate
    whose update lies closest to the observed one, and it differs from what either weight alone would pick only by
    that choice."""
    victim = victims["cnn"]
    params = with_changes(raw_params, **{"attacks.image.ig.steps": 30, "attacks.image.ig.tv": [0.0, 0.5]})
    observed = observe_client(victim, batch_of(victim, 4), params.update)
    cfg = params.attacks.of("ig")
    both = ATTACKS["ig"](observed, victim, cfg, "mask_aware", 0)
    assert both.info["configs"] == [0, 1] and len(both.info["restart_losses"]) == 2
    scores = both.info["restart_losses"]
    assert both.info["config"] == scores.index(min(scores)) and scores[0] != scores[1]
    alone = ATTACKS["ig"](
        observed, victim, cfg.model_copy(update={"tv": [cfg.tv[both.info["config"]]]}), "mask_aware", 0
    )
    assert torch.equal(alone.images, both.images)


def test_dlg_label_configurations(victims, raw_params):
    """DLG with both label parametrisations runs a soft-label and an analytic-label candidate from each init; the
    analytic one keeps the labels read from the last layer, each equals its configuration run alone (float64: in
    float32 the batched and one-row paths round differently), and the winner is the closer one."""
    victim, _ = float64(victims["lenet"], batch_of(victims["lenet"], 1))
    params = with_changes(
        raw_params, **{"attacks.image.dlg.steps": 20, "attacks.image.dlg.labels": ["soft", "analytic"]}
    )
    batch = batch_of(victim, 1)
    update = client_update(victim, Batch(batch.inputs.double(), batch.labels), params.update)
    observed = observe(victim, update, torch.zeros(update.numel(), dtype=torch.bool), 1, params.update)
    cfg = params.attacks.of("dlg")
    both = ATTACKS["dlg"](observed, victim, cfg, "mask_aware", 2)
    assert both.info["configs"] == [0, 1] and len(both.info["restart_losses"]) == 2
    soft = ATTACKS["dlg"](observed, victim, cfg.model_copy(update={"labels": ["soft"]}), "mask_aware", 2)
    analytic = ATTACKS["dlg"](observed, victim, cfg.model_copy(update={"labels": ["analytic"]}), "mask_aware", 2)
    assert torch.equal(analytic.labels, recover_labels(observed, victim, 2))
    assert soft.info["restart_losses"][0] == pytest.approx(both.info["restart_losses"][0], rel=1e-6)
    assert analytic.info["restart_losses"][0] == pytest.approx(both.info["restart_losses"][1], rel=1e-6)
    winner = soft if both.info["config"] == 0 else analytic
    assert both.info["restart_losses"][both.info["config"]] == min(both.info["restart_losses"])
    assert (winner.images - both.images).abs().max() < 1e-6
