"""IG's optimiser, vectorised: Adam on the sign of the input gradient, step decay, box [0, 1] (Geiping et al. 2020).

Adam is elementwise, so one Adam over the stacked inputs of a batch's runs is every run's own Adam. Used by IG and by
the linear-layer inversion's `adam` optimiser.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def signed_adam(
    step: Callable[..., tuple[torch.Tensor, torch.Tensor]], x0: torch.Tensor, args: tuple, steps: int, lr: float
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """IG's optimiser on stacked runs: Adam on the sign of `step(x, *args)`'s input gradient, lr x0.1 at 3/8, 5/8
    and 7/8 of the steps, box [0, 1] after each step. Returns the final inputs, their objective and the trace."""
    x = x0.clone().requires_grad_()
    opt = torch.optim.Adam([x], lr=lr)
    milestones = [round(steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    trace = []
    for _ in range(steps):
        grad, value = step(x.detach(), *args)
        x.grad = grad.sign()
        opt.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        trace.append(value.detach())
    _, finals = step(x.detach(), *args)
    return x.detach(), finals.detach(), trace
