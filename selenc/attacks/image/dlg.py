"""DLG (Zhu et al., 2019) on a batch of trials: L-BFGS over dummy images and soft labels jointly.

L-BFGS (`lbfgs`: per-trial curvature pairs, own backtracking line search per row) on ‖w ⊙ (g(x, y) − t)‖² / ‖w ⊙ t‖²,
dummy image and soft label softmax(z) optimised jointly; the recovered label is the argmax. Dividing by the constant
‖w ⊙ t‖² leaves the minimiser unchanged and makes the optimiser's steps scale-free on a target of tiny visible values.
`lbfgs_inversion` is the procedure, with the labels optimised (DLG) or fixed to the analytic ones (iDLG, `idlg`).
"""

from __future__ import annotations

import math

import torch

from selenc.attacks.base import AttackResult, Timer
from selenc.attacks.image.matching import Matching, collect_results, prepare_runs, row_objective
from selenc.attacks.lbfgs import lbfgs
from selenc.models import Victim
from selenc.observed import ObservedUpdate


def lbfgs_inversion(
    observed: list[ObservedUpdate],
    victim: Victim,
    cfg,
    threat_models: list[str],
    seeds: list[int],
    name: str,
    optimise_labels: bool,
) -> list[AttackResult]:
    """DLG's procedure on a batch of trials, its inits seeded under `name`; labels optimised as soft labels
    (`optimise_labels`) or fixed to the analytic ones."""
    with Timer() as timer:
        runs, priors = prepare_runs(observed, victim, cfg, threat_models, seeds, name, optimise_labels=optimise_labels)
        finals = images = labels = None
        trace: list[torch.Tensor] = []
        if runs is not None:
            matching = Matching(victim, observed[0])
            rows, shape = len(runs.trial), runs.x0.shape[1:]
            dx = math.prod(shape)
            norm = (runs.weight * runs.target).square().sum(1)
            scale = torch.where(norm > 0, 1.0 / norm, torch.ones_like(norm))
            fixed = runs.labels if runs.labels is not None else torch.zeros(rows, dtype=torch.long, device=norm.device)
            support = runs.support if bool(runs.support.any()) else None  # no support run: the plain objective

            def one(p: torch.Tensor, target, weight, s, y_fixed, by_support) -> torch.Tensor:
                x = p[:dx].view(shape)
                y = p[dx:].view(runs.z0.shape[1:]).softmax(-1) if runs.z0 is not None else y_fixed
                return matching.l2(x, y, target, weight, s, by_support)

            step = torch.func.vmap(
                torch.func.grad_and_value(one), in_dims=(0, 0, 0, 0, 0, None if support is None else 0)
            )

            objective = row_objective(step, (runs.target, runs.weight, scale, fixed, support))
            start = runs.x0.reshape(rows, -1)
            if runs.z0 is not None:
                start = torch.cat([start, runs.z0.reshape(rows, -1)], 1)
            p, finals, trace = lbfgs(objective, start, cfg.steps, lr=cfg.lr)
            images = p[:, :dx].view(rows, *shape)
            labels = p[:, dx:].view(runs.z0.shape).argmax(-1) if runs.z0 is not None else runs.labels
    return collect_results(runs, priors, finals, images, labels, trace, timer.seconds)


def dlg_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """DLG on a batch of trials: L-BFGS over dummy images and soft labels jointly."""
    return lbfgs_inversion(observed, victim, cfg, threat_models, seeds, "dlg", optimise_labels=True)
