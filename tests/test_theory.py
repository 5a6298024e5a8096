"""The theory module against exact answers: identity in float64, JVP estimators and power iteration against the
materialised Jacobian of a small real model, (B1) on a linear map where it is tight and at a real attack's output, φ as
the encrypted share of the expected distance, effective rank."""

import pandas as pd
import pytest
import torch

from selenc import data, stats, theory, theory_check
from selenc.attacks import ATTACKS
from selenc.engine import SweepFailed
from selenc.gradients import at_input, client_update, continuous_input, functional_update
from selenc.models import build_victim
from selenc.observed import observe, observe_client
from selenc.selection import top_k_mask
from selenc.settings import ConfigError
from selenc.significance import ClientView, far_field
from tests.conftest import FEDSGD_B1, with_changes


@pytest.fixture(scope="module")
def small(raw_params):
    """LeNet on MNIST (1,024 input pixels): small enough to materialise J = ∂g/∂x exactly."""
    import copy

    raw = copy.deepcopy(raw_params)
    raw["models"]["lenet"]["dataset"] = "mnist"
    params = with_changes(raw)
    victim = build_victim("lenet", params, torch.device("cpu"))
    pool = data.target_images("mnist")
    batch = victim.image_batch(data.Images(pool.images[:1], pool.labels[:1]))
    f = functional_update(victim, batch, params.update)
    x = continuous_input(victim, batch)
    g = f(x).detach()
    jac = torch.func.jacfwd(f)(x).reshape(g.numel(), -1)
    return params, victim, batch, f, x, g, jac


def test_identity_holds_to_float64_precision_with_the_attackers_own_distance(small):
    params, victim, batch, *_ = small
    v64, b64 = theory.float64(victim, batch)
    update = client_update(v64, b64, params.update)
    gen = torch.Generator().manual_seed(1)
    for ratio in (0.05, 0.5, 0.95):
        mask = top_k_mask(torch.rand(update.numel(), generator=gen), ratio)
        observed = observe_client(v64, b64, params.update, mask)
        for _ in range(3):
            candidate = torch.rand(b64.inputs.shape).double()
            out = theory.identity_error(v64, b64, params.update, observed, update, candidate)
            assert out["D_V"] > 0 and out["D_S"] > 0  # both parts non-trivial
            assert out["rel_err"] < 1e-12, out
    assert next(victim.model.parameters()).dtype == torch.float32  # the original is untouched


def test_row_norms_exact_and_estimated_match_the_materialised_jacobian(small):
    params, victim, batch, _, _, _, jac = small
    exact = jac.square().sum(1)
    assert torch.allclose(theory.row_norms(victim, batch, params.update, exact=True), exact, rtol=1e-4, atol=1e-10)
    est = theory.row_norms(victim, batch, params.update, exact=False, samples=256, seed=0)
    big = exact > exact.quantile(0.5)
    rel = ((est - exact).abs() / exact)[big]
    assert rel.median() < 0.15  # chi-square with 256 dof: relative sd ~ 0.09
    assert stats.spearman(est, exact) > 0.95


def test_power_iteration_converges_to_the_exact_spectral_norm_from_below(small):
    _, _, _, f, x, g, jac = small
    for ratio in (0.01, 0.2):
        mask = top_k_mask(g.abs(), ratio)
        exact = float(torch.linalg.matrix_norm(jac[mask], 2))
        est, _ = theory.spectral_norm(f, x, mask, 40, torch.Generator().manual_seed(0))
        assert est <= exact * (1 + 1e-4)
        assert est == pytest.approx(exact, rel=2e-3)
    assert theory.spectral_norm(f, x, torch.zeros_like(mask), 5, torch.Generator())[0] == 0.0


def test_bound_is_exact_on_a_linear_map_and_never_violated_elsewhere():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(60, 12, generator=gen, dtype=torch.float64)
    rows = torch.zeros(60, dtype=torch.bool)
    rows[:25] = True

    def f(x):
        return a @ x

    x = torch.randn(12, generator=gen, dtype=torch.float64)
    _, _, vh = torch.linalg.svd(a[rows])
    top = theory.bound_of(f, x, x + 3.0 * vh[0], rows, grid=3, iters=50, seed=0)
    assert top.lipschitz == pytest.approx(float(torch.linalg.matrix_norm(a[rows], 2)), rel=1e-9)
    assert top.tightness == pytest.approx(1.0, rel=1e-9) and not top.violated  # equality along the top direction
    for _ in range(5):
        other = theory.bound_of(f, x, x + torch.randn(12, generator=gen, dtype=torch.float64), rows, 3, 50, 0)
        assert 0 < other.tightness < 1 and not other.violated
    none = theory.bound_of(f, x, x + 1.0, torch.zeros(60, dtype=torch.bool), 3, 5, 0)
    assert none.bound == 0 and none.mismatch == 0 and none.error > 0


def test_bound_holds_on_a_real_attack_output(small):
    """(B1) at what DLG actually reconstructs from the visible 90% of the update (magnitude hides the top 10%)."""
    params, victim, batch, _, x, g, _ = small
    mask = top_k_mask(g.abs(), 0.1)
    observed = observe(victim, g, mask, len(batch), params.update, "magnitude")
    cfg = params.attacks.image.dlg.model_copy(update={"steps": 40})
    x_hat = ATTACKS["dlg"](observed, victim, cfg, "mask_aware", 0).images
    b = theory.bound(victim, batch, params.update, x_hat, mask, grid=8, iters=6, seed=0)
    assert b.error == pytest.approx(float((x_hat.to(x.dtype) - x).norm()), rel=1e-6) and b.error > 0
    hidden = float((functional_update(victim, batch, params.update)(x_hat.to(x.dtype)) - g)[mask].norm())
    assert b.mismatch == pytest.approx(hidden, rel=1e-4) and b.mismatch > 0
    assert b.lipschitz > 0 and not b.violated and 0 < b.tightness <= 1
    with pytest.raises(ValueError, match="input space"):
        theory.bound(victim, batch, params.update, x_hat[..., :5], mask, 2, 1, 0)


def test_phi_is_the_encrypted_share_of_the_expected_distance(small):
    """φ(S) = E[D_S] / E[D] over the far field (theory.md): computed here from the candidates' own updates, against
    `theory.phi` of the sample's distance significance, for masks of three metrics; plus a hand-computed case."""
    params, victim, batch, _, x, g, _ = small
    view = ClientView(victim, batch, g, params.update, params.significance, seed=7)
    s = theory.significance(view, "far")
    gen = view.generator("distance-far")  # the far-field draws that s averages over
    diffs = [
        client_update(victim, at_input(victim, batch, far_field(view, x, gen)), params.update) - g
        for _ in range(params.significance.samples)
    ]
    total = sum(float(d.double().square().sum()) for d in diffs)
    for scores in (g.abs(), s, torch.rand(g.shape, generator=torch.Generator().manual_seed(1))):
        mask = top_k_mask(scores, 0.2)
        hidden = sum(float(d.double()[mask].square().sum()) for d in diffs)
        assert theory.phi(s, mask) == pytest.approx(hidden / total, rel=1e-5)
    assert theory.phi(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([True, False, True, False])) == 0.4
    assert theory.phi(s, torch.zeros_like(s, dtype=torch.bool)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        theory.phi(s, mask[:-1])


def test_effective_rank_and_near_null_dimension_match_an_exact_svd(small):
    assert theory.effective_rank(torch.ones(7)) == pytest.approx(7.0)
    assert theory.effective_rank(torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert theory.effective_rank(torch.zeros(3)) == 0.0
    params, victim, batch, _, x, g, jac = small
    spectrum = theory.Spectrum(victim, batch, params.update)
    top = float(torch.linalg.svdvals(jac.double())[0])
    dims = []
    for ratio in (0.0, 0.3, 0.9):  # V the larger and the smaller half
        visible = ~top_k_mask(g.abs(), ratio)
        exact = torch.linalg.svdvals(jac[visible].double())
        sv = spectrum.singular_values(visible)
        assert sv.shape == (x.numel(),) and torch.allclose(sv[: len(exact)], exact, rtol=1e-4, atol=1e-6 * top)
        assert theory.effective_rank(sv) == pytest.approx(theory.effective_rank(exact), rel=1e-3)
        dims.append(theory.near_null_dim(sv, x.numel(), top, 1e-3))
        assert dims[-1] == x.numel() - int((exact > 1e-3 * top).sum())
    assert dims[0] <= dims[1] <= dims[2] and dims[2] > dims[0]  # hiding rows can only hide directions


def test_text_point_is_zero_for_the_true_tokens_and_none_for_another_length(params, victims):
    victim = victims["gpt2"]
    batch = victim.text_batch([data.target_sentences()[0]])
    special = set(victim.tokenizer.all_special_ids)
    ids = [[t for t in batch.inputs[0].tolist() if t not in special]]
    point = theory.text_point(victim, batch, ids)
    assert point is not None and point.shape == continuous_input(victim, batch).shape and point.abs().max() == 0
    moved = theory.text_point(victim, batch, [[ids[0][1], ids[0][0], *ids[0][2:]]])
    assert moved.abs().sum() > 0
    assert theory.text_point(victim, batch, [ids[0][:-1]]) is None


def test_phi_cells_merge_the_metric_free_ratios_and_t4_sign():
    rows = []
    for metric, good in (("magnitude", True), ("random", False)):
        for ratio in (0.0, 0.5, 1.0):
            phi = ratio if good or ratio in (0, 1) else ratio / 5
            rows.append(
                {
                    "attack": "dlg",
                    "threat_model": "mask_aware",
                    "mask_source": "own",
                    "ties": "index",
                    "victim": "untrained",
                    **FEDSGD_B1,
                    "status": "ok",
                    "metric": metric,
                    "ratio": ratio,
                    "phi": phi,
                    "psnr": 40 - 30 * phi,
                }
            )
    table = pd.DataFrame(rows)
    cells = stats.phi_cells(table, "psnr")
    assert len(cells) == 4 and set(cells.metric) == {"none", "all", "magnitude", "random"}
    assert stats.phi_spearman(table, "psnr")["dlg"] == pytest.approx(-1.0)


def test_theory_config_rejects_an_attack_of_the_wrong_modality(raw):
    raw["theory"]["cases"][0]["attack"] = "tag"
    with pytest.raises(ConfigError, match=r"theory\.cases\.0\.attacks: 'tag' is a text attack and lenet"):
        with_changes(raw)
    raw["theory"]["cases"] = []
    with pytest.raises(ConfigError, match=r"theory\.cases"):
        with_changes(raw)


def test_case_params_make_an_ordinary_small_sweep(params):
    case = params.theory.cases[0]
    before = params.attacks.of(case.attack).steps
    cp = theory_check.case_params(params, case)
    grid = cp.sweep.grid(case.arch)
    assert grid.attacks == [case.attack] and grid.threat_models == ["mask_aware"] and grid.metrics == case.metrics
    assert cp.attacks.of(case.attack).steps == case.steps and cp.sweep.bound_grid == params.theory.grid
    assert params.attacks.of(case.attack).steps == before  # the original params are not modified


def test_client_view_far_field_identity_table_runs_on_text(params, victims):
    victim = victims["gpt2"]
    batch = victim.text_batch([data.target_sentences()[3]])
    update = client_update(victim, batch, params.update)
    view = ClientView(victim, batch, update, params.update, params.significance, 0)
    masks = {("magnitude", 0.1): top_k_mask(update.abs(), 0.1)}
    table = theory_check.identity_table(view, masks, samples=2)
    assert len(table) == 2 and (table.rel_err < 1e-10).all() and (table.D_S > 0).all()


def test_theory_stage_fails_when_a_case_trial_does_not_finish(raw, tmp_path):
    case = raw["theory"]["cases"][0] | {"metrics": ["magnitude"], "ratios": [0.5], "trials": 1, "steps": 100_000}
    params = with_changes(raw, **{"theory.cases": [case], "sweep.time_limit_s": 0.5, "sweep.workers": 1})
    with pytest.raises(SweepFailed, match="1 of 1 trials did not finish\n  1 x timeout"):
        theory_check.run(params, tmp_path / "theory", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "theory" / "trials.csv").exists()
