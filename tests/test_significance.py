"""Significance metrics: shapes and determinism on the four models; estimators against exact derivatives."""

import pytest
import torch
from torch import nn

from selenc.gradients import FlatLayout, client_update, update_jvp
from selenc.models import Batch, Victim
from selenc.selection import top_k, top_k_mask
from selenc.significance import (
    METRICS,
    SUPPORT_REVEALING,
    ClientView,
    distance_significance,
    hessian,
    scores,
    sensitivity,
)
from tests.conftest import with_changes
from tests.test_grid import trial as grid_point
from tests.test_models import real_batch


@pytest.fixture(scope="module")
def small(raw_params):
    import copy

    raw = copy.deepcopy(raw_params)
    return with_changes(raw, **{"significance.samples": 2})


def view_of(victim, params, seed=0, n=1):
    batch = real_batch(victim, params, n=n)
    return ClientView(
        victim, batch, client_update(victim, batch, params.update), params.update, params.significance, seed
    )


@pytest.mark.parametrize("arch", ["lenet", "cnn", "bert", "gpt2"])
def test_every_metric_scores_every_coordinate_deterministically(victims, small, arch):
    victim = victims[arch]
    view = view_of(victim, small)
    reveals = {}
    for metric in METRICS:
        if metric == "embedding_rows" and victim.modality == "image":
            with pytest.raises(ValueError, match="embedding_rows needs a text model"):
                scores(metric, view)
            continue
        s = scores(metric, view)
        assert s.shape == view.update.shape and s.dtype == torch.float32, metric
        assert torch.isfinite(s).all() and (s >= 0).all(), metric
        assert s.abs().sum() > 0, metric
        assert torch.equal(s, scores(metric, view)), f"{metric} is not reproducible with the same seed"
        zero = view.update == 0
        if zero.any():  # BERT / GPT-2 (unused embedding rows), the ReLU CNN: the mask-reading split holds
            reveals[metric] = bool((s[zero] == 0).all() and (s[~zero] > 0).all())
    if reveals:  # the metrics an attacker reads the support off score 0 exactly where the gradient is 0
        assert SUPPORT_REVEALING & set(reveals) <= {m for m, r in reveals.items() if r}
        assert not reveals["random"] and not reveals["distance"]
    other = view_of(victim, small, seed=1)
    assert not torch.equal(scores("random", view), scores("random", other))


def test_unknown_metric_is_refused(victims, small):
    with pytest.raises(ValueError, match="unknown significance metric 'fisher'; allowed: random, magnitude"):
        scores("fisher", view_of(victims["lenet"], small))


# --- exact checks on a model small enough for its Jacobian and Hessian --------------------------------------------
@pytest.fixture(scope="module")
def tiny(params):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Sigmoid(), nn.Linear(6, 3)).double().eval()
    victim = Victim("lenet", model, torch.device("cpu"), 3, (1, 4, 4))
    batch = Batch(torch.rand(1, 1, 4, 4, dtype=torch.float64), torch.tensor([2]))
    return victim, batch


def tiny_view(tiny, params, samples):
    victim, batch = tiny
    cfg = params.significance.model_copy(update={"samples": samples})
    return ClientView(victim, batch, client_update(victim, batch, params.update), params.update, cfg, seed=0)


def exact_jacobian(victim, batch, params):
    f = lambda x: client_update(victim, Batch(x, batch.labels), params.update, create_graph=True)  # noqa: E731
    return torch.autograd.functional.jacobian(f, batch.inputs).reshape(-1, batch.inputs.numel())


def test_jvp_is_the_exact_jacobian_product(tiny, params):
    victim, batch = tiny
    jac = exact_jacobian(victim, batch, params)
    u = torch.randn_like(batch.inputs)
    (ju,) = update_jvp(victim, batch, params.update, batch.inputs, [u])
    assert torch.allclose(ju, jac @ u.reshape(-1), atol=1e-12, rtol=1e-9)


def test_sensitivity_estimates_the_jacobian_row_norms(tiny, params):
    victim, batch = tiny
    exact = exact_jacobian(victim, batch, params).square().sum(1)
    est = sensitivity(tiny_view(tiny, params, samples=1500))
    live = exact > 1e-12 * exact.max()
    rel = ((est - exact).abs() / exact)[live]
    assert rel.median() < 0.1 and rel.max() < 0.3  # chi-square(1)/m noise: rel. std sqrt(2/1500) = 3.7%
    assert torch.all(est[~live] < 1e-10 * exact.max())


def test_hutchinson_estimates_the_hessian_diagonal(tiny, params):
    victim, batch = tiny
    names = [n for n, _ in victim.model.named_parameters()]
    layout = FlatLayout.of(victim.model)
    theta = torch.cat([p.detach().reshape(-1) for p in victim.model.parameters()])

    def loss(flat):
        return victim.loss(batch, params=dict(zip(names, layout.unflatten(flat).values(), strict=True)))

    full = torch.autograd.functional.hessian(loss, theta)
    m = 2000
    est = hessian(tiny_view(tiny, params, samples=m))
    off = (full.square().sum(1) - full.diagonal().square()).sqrt() / m**0.5  # std of the estimate per coordinate
    assert torch.all((est - full.diagonal().abs()).abs() <= 5 * off + 1e-12)
    assert torch.corrcoef(torch.stack([est, full.diagonal().abs()]))[0, 1] > 0.95


def test_near_field_distance_approaches_sensitivity(tiny, params):
    """theory.md near-field limit: s_i(near) ≈ (ε·rms)² ‖J_i‖² as ε -> 0."""
    victim, batch = tiny
    view = tiny_view(tiny, params, samples=1500)
    view.cfg = view.cfg.model_copy(update={"near_eps": 1e-4})
    scale = 1e-4 * float(batch.inputs.square().mean().sqrt())
    exact = exact_jacobian(victim, batch, params).square().sum(1) * scale**2
    est = distance_significance(view, "near")
    live = exact > 1e-12 * exact.max()
    assert ((est - exact).abs() / exact)[live].median() < 0.1


def test_distance_fields_differ_and_path_runs(victims, small):
    view = view_of(victims["lenet"], small)
    for p in view.victim.model.parameters():
        p.grad = None
    far, near, path = (distance_significance(view, q) for q in ("far", "near", "path"))
    for name in set(METRICS) - {"embedding_rows"}:  # every image metric runs on the same model
        scores(name, view)
    # the server hands this model to the attacker: no data-dependent gradient may be left on it
    assert all(p.grad is None for p in view.victim.model.parameters())
    assert far.sum() > 100 * near.sum()  # far candidates are much further from x than ε-perturbations
    assert torch.isfinite(path).all() and path.sum() > 0
    with pytest.raises(ValueError, match="unknown distance field Q='mid'"):
        distance_significance(view, "mid")


def test_layer_metrics_take_whole_tensors_in_order(victims, small):
    view = view_of(victims["lenet"], small)
    layout = view.layout
    for ratio in (0.05, 0.3, 0.6):
        first = top_k_mask(scores("layer_first", view), ratio)
        k = int(first.sum())
        assert first[:k].all() and not first[k:].any()  # input side first, boundary tensor from its start
        last = top_k_mask(scores("layer_last", view), ratio)
        spans = [layout.span(name) for name in layout.names]
        full = [bool(last[s].all()) for s in spans]
        partial = [bool(last[s].any()) and not f for s, f in zip(spans, full, strict=True)]
        assert sum(partial) <= 1
        covered = [f or p for f, p in zip(full, partial, strict=True)]
        assert covered == sorted(covered)  # once a tensor is (partly) in, every later tensor is in


def test_embedding_rows_come_first(victims, small):
    victim = victims["gpt2"]
    view = view_of(victim, small, n=2)
    span = view.layout.span("transformer.wte.weight")
    width = victim.model.config.n_embd
    tokens = view.batch.inputs[view.batch.attention_mask.bool()].unique()
    k = len(tokens) * width
    mask = top_k(scores("embedding_rows", view), k)
    chosen = mask.nonzero().flatten()
    assert chosen.min() >= span.start and chosen.max() < span.stop
    rows = ((chosen - span.start) // width).unique()
    assert set(rows.tolist()) == set(tokens.tolist())


def test_a_samples_significance_is_computed_once_per_model_sample_and_settings(victims, params):
    """`trial.prepare` reuses a sample's distance significance across metrics, ratios and attacks, and recomputes it
    for another sample, other settings or another model."""
    from selenc.trial import _significance_memo, prepare

    victim = victims["lenet"]
    _significance_memo.pop(victim.model, None)

    def trial(metric, ratio, t):
        return grid_point(metric=metric, ratio=ratio, trial=t)

    a = prepare(trial("magnitude", 0.3, 0), params, victim)
    b = prepare(trial("random", 0.6, 0), params, victim)
    memo = _significance_memo[victim.model]
    assert len(memo) == 1
    s = next(iter(memo.values()))
    assert a.phi == pytest.approx(float(s[a.mask].sum() / s.sum())) and b.phi != a.phi
    prepare(trial("magnitude", 0.3, 1), params, victim)
    more = with_changes(params.model_dump(), **{"significance.samples": 2})
    prepare(trial("magnitude", 0.3, 0), more, victim)
    assert len(memo) == 3
    again = prepare(trial("magnitude", 0.3, 0), more, victim)
    assert len(memo) == 3 and again.phi == prepare(trial("magnitude", 0.3, 0), more, victim).phi
