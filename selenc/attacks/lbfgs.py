"""L-BFGS for a batch of independent problems, vectorised: one objective call evaluates every problem at once.

Each row of the (B, d) iterate is its own problem with its own curvature pairs and its own strong-Wolfe line search
(Nocedal & Wright, Algorithms 3.5 and 3.6, with cubic interpolation, as torch's `LBFGS(line_search_fn="strong_wolfe")`):
a step is accepted when it decreases the value enough (f(x + tp) ≤ f(x) + c1·t·g·p) and flattens the slope
(|g(x + tp)·p| ≤ c2·|g·p|), so the curvature pairs L-BFGS learns from stay informative up to the last digits of the
solution; a plain decrease rule accepts steps that stop short and stalls far from them. Rows do not wait for each
other: every objective call evaluates each unfinished row at its next point, the first trial step of a new iteration,
an extrapolated step, or one inside its bracket. So no call evaluates a few searching rows alone, and a row's
arithmetic never depends on the other rows: a batch of one is the one-at-a-time optimiser. A search that finds no
lower point forgets the row's pairs (steepest descent next); a row whose steepest-descent search finds none has
converged to the precision of its objective and stops, its remaining iterations free for the rest of the batch.

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


def cubic_minimum(t1, f1, d1, t2, f2, d2, low, high) -> torch.Tensor:
    """Per row: the minimiser of the cubic through (t1, f1) with slope d1 and (t2, f2) with slope d2, clamped to
    [low, high]; the midpoint where the cubic has no minimum or the data are not finite (Nocedal & Wright, eq. 3.59)."""
    e1 = d1 + d2 - 3 * (f1 - f2) / (t1 - t2)
    square = e1 * e1 - d1 * d2
    e2 = square.clamp_min(0).sqrt()
    t = t2 - (t2 - t1) * ((d2 + e2 - e1) / (d2 - d1 + 2 * e2))
    t = torch.minimum(torch.maximum(t, low), high)
    return torch.where((square >= 0) & torch.isfinite(t), t, (low + high) / 2)


def lbfgs(
    objective: Objective,
    start: torch.Tensor,
    steps: int,
    lr: float = 1.0,
    history: int = 100,
    max_ls: int = 25,
    c1: float = 1e-4,
    c2: float = 0.9,
    record: list[dict] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise each row's objective from `start` (B, d) for `steps` iterations (fewer where a row converges).

    Returns the final points, their values (B,) and the value of every row after each iteration (steps + 1, B; a
    converged row keeps its value). `record`, when given, receives one dict per objective call's accepted steps:
    their rows, start points, directions and step lengths, and whether the strong-Wolfe conditions were met (else the
    search ran out of evaluations and kept its lowest point)."""
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
    # each row's line search: the lowest acceptable point so far (lo: step, value, slope, gradient), the other end of
    # its bracket once one is found (hi), whether it is zooming in that bracket, and its evaluations
    lo_t, lo_f, lo_d, lo_g = torch.zeros_like(f), torch.zeros_like(f), torch.zeros_like(f), torch.zeros_like(x)
    hi_t, hi_f, hi_d = torch.zeros_like(f), torch.zeros_like(f), torch.zeros_like(f)
    zoom = torch.zeros(batch, dtype=torch.bool, device=x.device)
    evals = torch.zeros_like(done)
    ages = torch.arange(m, device=x.device)
    tiny = torch.finfo(x.dtype).tiny
    while bool((done < steps).any()):
        order = (done[:, None] + ages) % m  # the slot of each time index: the oldest pair's slot is done mod m
        if bool(fresh.any()):
            new_p = direction(g, pairs, products, sy, yy, use, order, gamma)
            new_slope = (g * new_p).sum(1)
            uphill = fresh & ~(new_slope < 0)  # not a descent direction (or nan): steepest descent, pairs forgotten
            new_p = torch.where(uphill[:, None], -g, new_p)
            use[uphill], gamma[uphill] = False, 1.0
            new_slope = (g * new_p).sum(1)
            # steepest descent (no pairs yet, or forgotten) starts at a step of unit length in the l1 norm
            first = torch.clamp(1.0 / g.abs().sum(1).clamp_min(tiny), max=1.0) * lr
            new_t = torch.where(use.any(1), torch.full_like(first, lr), first)
            p = torch.where(fresh[:, None], new_p, p)
            slope, t = torch.where(fresh, new_slope, slope), torch.where(fresh, new_t, t)
            lo_t, lo_f, lo_d = (torch.where(fresh, a, b) for a, b in ((0.0, lo_t), (f, lo_f), (slope, lo_d)))
            lo_g = torch.where(fresh[:, None], g, lo_g)
            zoom, evals = zoom & ~fresh, torch.where(fresh, 0, evals)
        active = done < steps
        searching = active & (slope < 0)
        idx = searching.nonzero().flatten()
        accepted = torch.zeros_like(active)
        new_x, new_f, new_g = x.clone(), f.clone(), g.clone()
        if len(idx):
            pi, f0, d0, ti = p[idx], f[idx], slope[idx], t[idx]
            cand = x[idx] + ti[:, None] * pi
            fc, gc = objective(cand, idx)
            dc = (gc * pi).sum(1)
            lt, lf, ld, ht, hf, hd, zm = lo_t[idx], lo_f[idx], lo_d[idx], hi_t[idx], hi_f[idx], hi_d[idx], zoom[idx]
            finite = torch.isfinite(fc) & torch.isfinite(dc)
            too_high = ~finite | (fc > f0 + c1 * ti * d0) | (fc >= lf)  # the minimum lies before: cand is hi
            wolfe = ~too_high & (dc.abs() <= -c2 * d0)
            lower = ~too_high & ~wolfe  # an acceptable point, not flat enough: it becomes lo
            # the slope turned non-negative (or points away from hi): the old lo becomes hi
            flip = lower & torch.where(zm, dc * (ht - lt) >= 0, dc >= 0)
            extrapolate = lower & ~zm & ~flip  # still descending past every bracket: look further out
            ht, hf, hd = (
                torch.where(flip, a, torch.where(too_high, b, c))
                for a, b, c in ((lt, ti, ht), (lf, fc, hf), (ld, dc, hd))
            )
            further = cubic_minimum(lt, lf, ld, ti, fc, dc, ti + 0.01 * (ti - lt), 10 * ti)
            lt, lf, ld = (torch.where(lower, a, b) for a, b in ((ti, lt), (fc, lf), (dc, ld)))
            lo_g[idx] = torch.where(lower[:, None], gc, lo_g[idx])
            zm = zm | too_high | flip
            low, high = torch.minimum(lt, ht), torch.maximum(lt, ht)
            width = high - low
            inside = cubic_minimum(lt, lf, ld, ht, hf, hd, low + 0.1 * width, high - 0.1 * width)
            t[idx] = torch.where(extrapolate, further, torch.where(zm, inside, ti))
            lo_t[idx], lo_f[idx], lo_d[idx], hi_t[idx], hi_f[idx], hi_d[idx], zoom[idx] = lt, lf, ld, ht, hf, hd, zm
            evals[idx] += 1
            collapsed = zm & (width * pi.abs().amax(1) < 1e-9)
            out = ~wolfe & ((evals[idx] >= max_ls) | collapsed)
            keep_lo = out & (lt > 0)  # out of evaluations: the lowest point found, if it went down at all
            take = wolfe | keep_lo
            step_t = torch.where(wolfe, ti, lt)
            new_x[idx] = torch.where(take[:, None], x[idx] + step_t[:, None] * pi, x[idx])
            new_f[idx] = torch.where(wolfe, fc, torch.where(keep_lo, lf, f0))
            new_g[idx] = torch.where(wolfe[:, None], gc, torch.where(keep_lo[:, None], lo_g[idx], g[idx]))
            accepted[idx[take]] = True
            if record is not None and bool(take.any()):
                record.append(
                    {
                        "rows": idx[take],
                        "start": x[idx[take]],
                        "direction": pi[take],
                        "t": step_t[take],
                        "wolfe": wolfe[take],
                    }
                )
            failed_here = out & ~keep_lo
        failed = torch.zeros_like(active)
        if len(idx):
            failed[idx[failed_here]] = True
        # a steepest-descent search that found no lower point: converged to the objective's precision
        stuck = failed & ~use.any(1)
        # a row with no descent direction (zero or nan gradient) completes its iteration where it is
        finished = accepted | failed | (active & ~(slope < 0))
        # the finished rows store their new pair in the oldest pair's slot; a failed search forgets every pair
        slot = order[:, 0]
        step, change = new_x - x, new_g - g
        ys = (step * change).sum(1)
        # positive curvature, relative to the pair's size (the objective's scale must not matter)
        keep = accepted & (ys > torch.finfo(x.dtype).eps * step.norm(dim=1) * change.norm(dim=1))
        use[failed], gamma[failed] = False, 1.0
        pairs[rows, slot] = torch.where(finished[:, None], step, pairs[rows, slot])
        pairs[rows, m + slot] = torch.where(finished[:, None], change, pairs[rows, m + slot])
        gamma = torch.where(keep, ys / change.square().sum(1).clamp_min(tiny), gamma)
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
        done = torch.where(stuck, steps, done + finished.long())
        trace[done.clamp(max=steps)[finished], finished.nonzero().flatten()] = f[finished]
        fresh = finished & (done < steps)
    # a converged row keeps its value for the iterations it did not need
    for k in range(1, steps + 1):
        trace[k] = torch.where(torch.isnan(trace[k]), trace[k - 1], trace[k])
    return x, f, trace
