"""DLG (Zhu et al., 2019) on a batch of trials: L-BFGS over dummy images and soft labels jointly.

L-BFGS (`lbfgs`: per-trial curvature pairs, own strong-Wolfe line search per row) on ‖w ⊙ (g(x, y) − t)‖² / ‖w ⊙ t‖²,
dummy image and soft label softmax(z) optimised jointly; the recovered label is the argmax. Dividing by the constant
‖w ⊙ t‖² leaves the minimiser unchanged and makes the optimiser's steps scale-free on a target of tiny visible values.
Neither label parametrisation dominates (a soft label can find a label the last layer hides; analytic labels fix what
it shows), so `labels` lists the configurations to run, each from the same inits, the closest to the observed update
winning. `lbfgs_inversion` is the procedure, with the labels optimised (DLG), fixed to the analytic ones (iDLG,
`idlg`) or both.
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
    modes: list[str],
) -> list[AttackResult]:
    """DLG's procedure on a batch of trials, its inits seeded under `name`; one configuration per label mode of
    `modes`: "soft" optimises a soft label softmax(z) with the image, "analytic" fixes the labels read from the last
    layer."""
    with Timer() as timer:
        runs, priors = prepare_runs(
            observed, victim, cfg, threat_models, seeds, name, labels=tuple(modes), configs=len(modes)
        )
        images = labels = None
        trace: list[torch.Tensor] = []
        if runs is not None:
            rows, shape = len(runs.trial), runs.x0.shape[1:]
            matching = Matching(victim, observed[0], rows)
            dx = math.prod(shape)
            norm = (runs.weight * runs.target).square().sum(1)
            scale = torch.where(norm > 0, 1.0 / norm, torch.ones_like(norm))
            device = norm.device
            fixed = runs.labels if runs.labels is not None else torch.zeros(rows, 1, dtype=torch.long, device=device)
            soft = torch.tensor([modes[c] == "soft" for c in runs.config], device=device)
            # the fixed labels as probabilities, for rows that mix with soft ones (one_hot cannot run under vmap)
            classes = runs.z0.shape[-1] if runs.z0 is not None else 1
            hard = torch.nn.functional.one_hot(fixed, classes).to(norm.dtype) if runs.z0 is not None else fixed
            support = runs.support if bool(runs.support.any()) else None  # no support run: the plain objective

            def one(p: torch.Tensor, target, weight, s, y_fixed, is_soft, by_support, models) -> torch.Tensor:
                x = p[:dx].view(shape)
                y = y_fixed
                if runs.z0 is not None:  # soft rows optimise softmax(z); the analytic rows' z has no effect
                    y = torch.where(is_soft, p[dx:].view(runs.z0.shape[1:]).softmax(-1), y_fixed)
                return matching.l2(x, y, target, weight, s, by_support, models)

            step = matching.step(one, (0, 0, 0, 0, 0, 0, None if support is None else 0, runs.models_dim))

            objective = row_objective(step, (runs.target, runs.weight, scale, hard, soft, support, runs.models))
            start = runs.x0.reshape(rows, -1)
            if runs.z0 is not None:
                start = torch.cat([start, runs.z0.reshape(rows, -1)], 1)
            p, _, trace = lbfgs(objective, start, cfg.steps, lr=cfg.lr)
            images = p[:, :dx].view(rows, *shape)
            labels = runs.labels
            if runs.z0 is not None:
                optimised = p[:, dx:].view(runs.z0.shape).argmax(-1)
                labels = optimised if labels is None else torch.where(soft[:, None], optimised, labels)
    return collect_results(runs, priors, images, labels, trace, timer.seconds, (observed, victim, threat_models, "l2"))


def dlg_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """DLG on a batch of trials: L-BFGS over dummy images and soft labels jointly (`cfg.labels` may add the analytic
    labels as a second configuration)."""
    return lbfgs_inversion(observed, victim, cfg, threat_models, seeds, "dlg", list(cfg.labels))
