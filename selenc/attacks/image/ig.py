"""Inverting Gradients (Geiping et al., 2020) on a batch of trials.

1 − cos(w ⊙ g(x, y), t) + tv · total variation, IG's optimiser (`adam.signed_adam`: Adam on the sign of the input
gradient, step decay x0.1 at 3/8, 5/8 and 7/8 of the steps, box constraint [0, 1]), analytic labels.
"""

from __future__ import annotations

import torch

from selenc.attacks.base import AttackResult, Timer
from selenc.attacks.image.adam import signed_adam
from selenc.attacks.image.matching import Matching, collect_results, prepare_runs


def ig_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """Inverting Gradients on a batch of trials: cosine + tv·TV, signed Adam with step decay, box [0, 1]."""
    with Timer() as timer:
        runs, priors = prepare_runs(observed, victim, cfg, threat_models, seeds, "ig", cosine=True)
        finals = x = None
        trace: list[torch.Tensor] = []
        if runs is not None:
            matching = Matching(victim, observed[0])
            norms = runs.target.norm(dim=1)
            support = runs.support if bool(runs.support.any()) else None  # no support run: the plain objective
            step = torch.func.vmap(
                torch.func.grad_and_value(lambda x, y, t, w, n, s: matching.cosine(x, y, t, w, n, cfg.tv, s)),
                in_dims=(0, 0, 0, 0, 0, None if support is None else 0),
            )
            x, finals, trace = signed_adam(
                step, runs.x0, (runs.labels, runs.target, runs.weight, norms, support), cfg.steps, cfg.lr
            )
    return collect_results(runs, priors, finals, x, None if runs is None else runs.labels, trace, timer.seconds)
