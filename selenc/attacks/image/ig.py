"""Inverting Gradients (Geiping et al., 2020) on a batch of trials.

1 − cos(w ⊙ g(x, y), t) + tv · total variation, IG's optimiser (`adam.signed_adam`: Adam on the sign of the input
gradient, step decay x0.1 at 3/8, 5/8 and 7/8 of the steps, box constraint [0, 1]), analytic labels. Each weight of
`tv` is a configuration: its own runs from the same inits, the winner picked by the cosine distance to the observed
update (`matching.observed_distance`).
"""

from __future__ import annotations

import torch

from selenc.attacks.base import AttackResult, Timer
from selenc.attacks.image.adam import signed_adam
from selenc.attacks.image.matching import Matching, collect_results, prepare_runs


def ig_batch(observed, victim, cfg, threat_models, seeds) -> list[AttackResult]:
    """Inverting Gradients on a batch of trials: cosine + tv·TV, signed Adam with step decay, box [0, 1]."""
    with Timer() as timer:
        runs, priors = prepare_runs(observed, victim, cfg, threat_models, seeds, "ig", cosine=True, configs=len(cfg.tv))
        x = None
        trace: list[torch.Tensor] = []
        if runs is not None:
            matching = Matching(victim, observed[0], len(runs.trial))
            norms = runs.target.norm(dim=1)
            support = runs.support if bool(runs.support.any()) else None  # no support run: the plain objective
            tv = torch.tensor([cfg.tv[c] for c in runs.config], dtype=norms.dtype, device=norms.device)
            dims = (0, 0, 0, 0, 0, 0, None if support is None else 0, runs.models_dim)
            step = matching.step(matching.cosine, dims)
            args = (runs.labels, runs.target, runs.weight, norms, tv, support, runs.models)
            x, _, trace = signed_adam(step, runs.x0, args, cfg.steps, cfg.lr)
    labels = None if runs is None else runs.labels
    return collect_results(runs, priors, x, labels, trace, timer.seconds, (observed, victim, threat_models, "cosine"))
