"""L-BFGS for a batch of independent problems, vectorised: one objective call evaluates every problem at once.

Each row of the (B, d) iterate is its own problem with its own curvature pairs, two-loop recursion and backtracking
line search (Armijo's sufficient decrease, the step halved until it holds, at most `max_ls` times; a row whose search
fails stays where it is and forgets its pairs). The rows advance in lockstep, so iteration i stores every row's pair
(s, y) in the same slot i mod `history` of a (history, B, d) ring; a row whose pair has no positive curvature yᵀs
stores ρ = 0 there, which makes the recursion skip it. The recursion then runs over contiguous slices with no
per-row gathers. During a line search only the rows still searching are evaluated, through the `rows` argument of
the objective. Row by row the arithmetic does not depend on the other rows: a batch of one is the one-at-a-time
optimiser.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# objective(points (r, d), rows (r,) indices into the batch) -> (values (r,), gradients (r, d))
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _direction(g: torch.Tensor, s: torch.Tensor, y: torch.Tensor, rho: torch.Tensor, order: list[int], gamma):
    """-H·g by the two-loop recursion over the slots `order` (newest first), H₀ = γ I per row."""
    q = g.clone()
    alphas = {}
    for j in order:
        a = rho[j] * (s[j] * q).sum(1)
        q.sub_(a[:, None] * y[j])
        alphas[j] = a
    r = q * gamma[:, None]
    for j in reversed(order):
        b = rho[j] * (y[j] * r).sum(1)
        r.add_((alphas[j] - b)[:, None] * s[j])
    return r.neg_()


def lbfgs(
    objective: Objective,
    start: torch.Tensor,
    steps: int,
    lr: float = 1.0,
    history: int = 100,
    max_ls: int = 25,
    c1: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Minimise each row's objective from `start` (B, d) for `steps` iterations.

    Returns the final points, their values (B,) and the value of every row after each iteration (the trace)."""
    x = start.detach().clone()
    batch, d = x.shape
    everyone = torch.arange(batch, device=x.device)
    f, g = objective(x, everyone)
    s_hist = x.new_zeros(history, batch, d)
    y_hist = x.new_zeros(history, batch, d)
    rho = x.new_zeros(history, batch)
    gamma = torch.ones_like(f)
    trace = [f.detach().clone()]
    for it in range(steps):
        order = [(it - 1 - j) % history for j in range(min(it, history))]
        p = _direction(g, s_hist, y_hist, rho, order, gamma)
        slope = (g * p).sum(1)
        uphill = ~(slope < 0)  # not a descent direction (or nan): that row restarts from steepest descent
        if bool(uphill.any()):
            p = torch.where(uphill[:, None], -g, p)
            rho[:, uphill], gamma[uphill] = 0.0, 1.0
            slope = (g * p).sum(1)
        first = torch.clamp(1.0 / g.abs().sum(1).clamp_min(torch.finfo(g.dtype).tiny), max=1.0) * lr
        t = first if it == 0 else torch.full_like(slope, lr)
        new_x, new_f, new_g = x.clone(), f.clone(), g.clone()
        searching = slope < 0
        for _ in range(max_ls):
            rows = searching.nonzero().flatten()
            if not len(rows):
                break
            cand = x[rows] + t[rows, None] * p[rows]
            fc, gc = objective(cand, rows)
            ok = torch.isfinite(fc) & (fc <= f[rows] + c1 * t[rows] * slope[rows])
            done = rows[ok]
            new_x[done], new_f[done], new_g[done] = cand[ok], fc[ok], gc[ok]
            searching[done] = False
            t = torch.where(searching, t * 0.5, t)
        if bool(searching.any()):  # a failed search: the row stays and forgets its curvature
            rho[:, searching], gamma[searching] = 0.0, 1.0
        step, change = new_x - x, new_g - g
        ys = (step * change).sum(1)
        keep = (slope < 0) & ~searching & (ys > 1e-10)
        slot = it % history
        s_hist[slot], y_hist[slot] = step, change
        rho[slot] = torch.where(keep, 1.0 / torch.where(keep, ys, torch.ones_like(ys)), torch.zeros_like(ys))
        gamma = torch.where(keep, ys / change.square().sum(1).clamp_min(torch.finfo(g.dtype).tiny), gamma)
        x, f, g = new_x, new_f, new_g
        trace.append(f.detach().clone())
    return x, f, trace
