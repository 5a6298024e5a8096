"""L-BFGS for a batch of independent problems, vectorised: one objective call evaluates every problem at once.

Each row of the (B, d) iterate is its own problem with its own curvature pairs and backtracking line search
(Armijo's sufficient decrease, the step halved until it holds, at most `max_ls` times; a row whose search fails stays
where it is and forgets its pairs). Rows do not wait for each other: every objective call evaluates each unfinished
row at its next point, the first trial step of a new iteration for a row whose last step was accepted and a halved
step for a row still searching. So no call evaluates a few searching rows alone, and a row's arithmetic never depends
on the other rows: a batch of one is the one-at-a-time optimiser.

The direction −H·g uses the compact representation of the L-BFGS matrix (Byrd, Nocedal and Schnabel, 1994),
H = γI + [S γY] M [S γY]ᵀ with M built from the small matrices SᵀY and YᵀY, instead of the two-loop recursion: the
same matrix, computed with two batched matrix products over the stored pairs and two small triangular solves rather
than hundreds of vector operations. Each row keeps its pairs in a ring of `history` slots; a pair without positive
curvature (or a forgotten one) is marked invalid and acts as absent, exactly as ρ = 0 does in the two-loop recursion.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# objective(points (r, d), rows (r,) indices into the batch) -> (values (r,), gradients (r, d))
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def direction(
    g: torch.Tensor,
    pairs: torch.Tensor,
    products: torch.Tensor,
    sy: torch.Tensor,
    yy: torch.Tensor,
    use: torch.Tensor,
    order: torch.Tensor,
    gamma: torch.Tensor,
) -> torch.Tensor:
    """−H·g per row from the compact L-BFGS representation.

    g (B, d); pairs (B, 2m, d): the ring's s vectors in slots 0..m−1, then its y vectors; products (B, 2m):
    pairs·g by slot; sy (B, m, m) with sy[i, j] = s_i·y_j and yy (B, m, m) = y_i·y_j, both in time order (oldest
    first); use (B, m) which of them hold a pair, in time order; order (B, m) the slot of each time index; gamma (B,)
    the initial scaling H₀ = γI.
    """
    batch, m = use.shape
    use = use.double()
    a = products[:, :m].gather(1, order).double() * use
    b = products[:, m:].gather(1, order).double() * use
    both = use[:, :, None] * use[:, None, :]
    # an unused pair gets R_jj = 1 and zero elsewhere: its coefficients come out 0, as if it were absent
    r = torch.triu(sy.double()) * both + torch.diag_embed(1.0 - use)
    gam = gamma.double()[:, None]
    u = torch.linalg.solve_triangular(r, a[:, :, None], upper=True).squeeze(-1)
    w = r.diagonal(dim1=1, dim2=2) * use * u + gam * (yy.double() * both).bmm(u[:, :, None]).squeeze(-1) - gam * b
    top = torch.linalg.solve_triangular(r.mT, w[:, :, None], upper=False).squeeze(-1)
    coeffs = torch.zeros(batch, 2 * m, dtype=torch.float64, device=g.device)
    coeffs[:, :m].scatter_(1, order, top)
    coeffs[:, m:].scatter_(1, order, -gam * u)
    hg = gamma[:, None] * g + coeffs.to(g.dtype)[:, None, :].bmm(pairs).squeeze(1)
    return hg.neg_()


def lbfgs(
    objective: Objective,
    start: torch.Tensor,
    steps: int,
    lr: float = 1.0,
    history: int = 100,
    max_ls: int = 25,
    c1: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise each row's objective from `start` (B, d) for `steps` iterations.

    Returns the final points, their values (B,) and the value of every row after each iteration (steps + 1, B)."""
    x = start.detach().clone()
    batch, d = x.shape
    m = history
    rows = torch.arange(batch, device=x.device)
    f, g = objective(x, rows)
    pairs = x.new_zeros(batch, 2 * m, d)  # by slot: s vectors, then y vectors
    products = x.new_zeros(batch, 2 * m)  # pairs·g by slot
    # by time (oldest first, newest last): the pairs' s·y and y·y, and which pairs to use
    sy, yy = x.new_zeros(batch, m, m), x.new_zeros(batch, m, m)
    use = torch.zeros(batch, m, dtype=torch.bool, device=x.device)
    gamma = torch.ones_like(f)
    done = torch.zeros(batch, dtype=torch.long, device=x.device)  # iterations completed per row
    trace = f.new_full((steps + 1, batch), float("nan"))
    trace[0] = f
    fresh = torch.ones(batch, dtype=torch.bool, device=x.device)  # rows starting a new iteration
    p, slope, t = torch.zeros_like(x), torch.zeros_like(f), torch.zeros_like(f)
    tries = torch.zeros_like(done)
    ages = torch.arange(m, device=x.device)
    while bool((done < steps).any()):
        order = (done[:, None] + ages) % m  # the slot of each time index: the oldest pair's slot is done mod m
        if bool(fresh.any()):
            new_p = direction(g, pairs, products, sy, yy, use, order, gamma)
            new_slope = (g * new_p).sum(1)
            uphill = fresh & ~(new_slope < 0)  # not a descent direction (or nan): steepest descent, pairs forgotten
            new_p = torch.where(uphill[:, None], -g, new_p)
            use[uphill], gamma[uphill] = False, 1.0
            new_slope = (g * new_p).sum(1)
            first = torch.clamp(1.0 / g.abs().sum(1).clamp_min(torch.finfo(g.dtype).tiny), max=1.0) * lr
            new_t = torch.where(done == 0, first, torch.full_like(first, lr))
            p = torch.where(fresh[:, None], new_p, p)
            slope, t = torch.where(fresh, new_slope, slope), torch.where(fresh, new_t, t)
            tries = torch.where(fresh, 0, tries)
        active = done < steps
        searching = active & (slope < 0)
        idx = searching.nonzero().flatten()
        accepted = torch.zeros_like(active)
        new_x, new_f, new_g = x.clone(), f.clone(), g.clone()
        if len(idx):
            cand = x[idx] + t[idx, None] * p[idx]
            fc, gc = objective(cand, idx)
            ok = torch.isfinite(fc) & (fc <= f[idx] + c1 * t[idx] * slope[idx])
            accepted[idx[ok]] = True
            new_x[idx[ok]], new_f[idx[ok]], new_g[idx[ok]] = cand[ok], fc[ok], gc[ok]
        tries = tries + searching.long()
        failed = searching & ~accepted & (tries >= max_ls)
        # a row with no descent direction (zero or nan gradient) completes its iteration where it is
        finished = accepted | failed | (active & ~(slope < 0))
        t = torch.where(searching & ~accepted, t * 0.5, t)
        # the finished rows store their new pair in the oldest pair's slot; a failed search forgets every pair
        slot = order[:, 0]
        step, change = new_x - x, new_g - g
        ys = (step * change).sum(1)
        keep = accepted & (ys > 1e-10)
        use[failed], gamma[failed] = False, 1.0
        pairs[rows, slot] = torch.where(finished[:, None], step, pairs[rows, slot])
        pairs[rows, m + slot] = torch.where(finished[:, None], change, pairs[rows, m + slot])
        gamma = torch.where(keep, ys / change.square().sum(1).clamp_min(torch.finfo(g.dtype).tiny), gamma)
        x, f, g = new_x, new_f, new_g
        # one pass over the stored pairs: the new pair's products with every pair, and pairs·g for the next direction
        prods = torch.stack([step, change, g], 1).bmm(pairs.mT)  # (B, 3, 2m) by slot
        products = torch.where(finished[:, None], prods[:, 2], products)
        # finished rows move their time window on by one: the oldest pair drops out, the new one comes last
        shifted = (order + 1) % m
        fin = finished[:, None, None]
        sy = torch.where(fin, sy.roll((-1, -1), (1, 2)), sy)
        yy = torch.where(fin, yy.roll((-1, -1), (1, 2)), yy)
        use = torch.where(finished[:, None], use.roll(-1, 1), use)
        sy[:, -1] = torch.where(finished[:, None], prods[:, 0, m:].gather(1, shifted), sy[:, -1])  # s_new·y_j
        sy[:, :, -1] = torch.where(finished[:, None], prods[:, 1, :m].gather(1, shifted), sy[:, :, -1])  # s_i·y_new
        yy_new = prods[:, 1, m:].gather(1, shifted)
        yy[:, -1] = torch.where(finished[:, None], yy_new, yy[:, -1])
        yy[:, :, -1] = torch.where(finished[:, None], yy_new, yy[:, :, -1])
        use[:, -1] = torch.where(finished, keep, use[:, -1])
        done = done + finished.long()
        trace[done.clamp(max=steps)[finished], finished.nonzero().flatten()] = f[finished]
        fresh = finished & (done < steps)
    return x, f, trace
