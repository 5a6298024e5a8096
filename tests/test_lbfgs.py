"""The vectorised L-BFGS: its compact-form direction against the textbook two-loop recursion, the optimiser on
problems with known minimisers, row by row independent of the batch, the strong-Wolfe conditions at every accepted
step, and rows that stop once converged."""

import torch

from selenc.attacks.lbfgs import direction, lbfgs


def _two_loop(g: torch.Tensor, s: list[torch.Tensor], y: list[torch.Tensor], gamma: float) -> torch.Tensor:
    """−H·g of Nocedal & Wright's Algorithm 7.4 over the pairs (oldest first)."""
    q, alphas = g.clone(), []
    for si, yi in zip(reversed(s), reversed(y), strict=True):
        a = (si @ q) / (yi @ si)
        q -= a * yi
        alphas.append(a)
    r = gamma * q
    for si, yi, a in zip(s, y, reversed(alphas), strict=True):
        r += (a - (yi @ r) / (yi @ si)) * si
    return -r


def test_compact_direction_equals_two_loop():
    """Per row: a ring with its oldest slot anywhere, some slots unused; the direction uses exactly the used pairs in
    time order."""
    gen = torch.Generator().manual_seed(0)
    batch, m, d = 3, 5, 8
    pairs = torch.zeros(batch, 2 * m, d, dtype=torch.float64)
    sy = torch.zeros(batch, m, m, dtype=torch.float64)
    yy = torch.zeros_like(sy)
    use = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    order = torch.stack([(torch.arange(m) + k) % m for k in (0, 2, 4)])  # slot of each time index
    g = torch.randn(batch, d, generator=gen, dtype=torch.float64)
    gamma = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    expected = []
    for b in range(batch):
        s_list, y_list = [], []
        for k in range(m):
            slot = int(order[b, k])
            s = torch.randn(d, generator=gen, dtype=torch.float64)
            y = s + 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)  # positive curvature
            pairs[b, slot], pairs[b, m + slot] = s, y
            if use[b, k]:
                s_list.append(s)
                y_list.append(y)
        for i in range(m):
            for j in range(m):
                si, yj = pairs[b, int(order[b, i])], pairs[b, m + int(order[b, j])]
                sy[b, i, j] = si @ yj
                yy[b, i, j] = pairs[b, m + int(order[b, i])] @ yj
        expected.append(_two_loop(g[b], s_list, y_list, float(gamma[b])))
    products = pairs.bmm(g[:, :, None]).squeeze(-1)
    got = direction(g, pairs, products, sy, yy, use, order, gamma)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got[2], -g[2])  # no pairs: steepest descent


def test_lbfgs_minimises_each_row_independently():
    """A batch of ill-conditioned quadratics and a Rosenbrock row: every row reaches its minimiser, and a row's
    iterates do not depend on what else is in the batch (up to round-off)."""
    gen = torch.Generator().manual_seed(1)
    d = 6
    scales = torch.logspace(0, 3, d, dtype=torch.float64)
    centres = torch.randn(3, d, generator=gen, dtype=torch.float64)

    def objective(points: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, grads = [], []
        for point, row in zip(points, rows.tolist(), strict=True):
            if row == 3:  # Rosenbrock in the first two coordinates, a bowl in the rest
                a, b = point[0], point[1]
                value = (1 - a) ** 2 + 100 * (b - a * a) ** 2 + point[2:].square().sum()
                grad = torch.cat(
                    [
                        torch.stack([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)]),
                        2 * point[2:],
                    ]
                )
            else:
                diff = point - centres[row]
                value, grad = 0.5 * (scales * diff.square()).sum(), scales * diff
            values.append(value)
            grads.append(grad)
        return torch.stack(values), torch.stack(grads)

    start = torch.zeros(4, d, dtype=torch.float64)
    start[3, 0] = -1.2
    x, f, trace = lbfgs(objective, start, steps=200)
    torch.testing.assert_close(x[:3], centres, rtol=0, atol=1e-6)
    rosen = torch.zeros(d, dtype=torch.float64)
    rosen[:2] = 1.0
    torch.testing.assert_close(x[3], rosen, rtol=0, atol=1e-5)
    assert trace.shape == (201, 4) and bool((trace[1:] <= trace[:-1] + 1e-12).all())  # monotone descent
    torch.testing.assert_close(trace[-1], f)
    alone, _, alone_trace = lbfgs(lambda p, r: objective(p, r + 3), start[3:], steps=200)
    # up to round-off: batched matrix products may sum in another order
    torch.testing.assert_close(alone[0], x[3], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(alone_trace[:, 0], trace[:, 3], rtol=1e-8, atol=1e-12)


def test_accepted_steps_satisfy_strong_wolfe():
    """Every step the line search accepts on a smooth nonconvex objective (an extended Rosenbrock, rows from different
    starts) meets both strong-Wolfe conditions, re-checked here by evaluating the objective at the step's ends."""
    c1, c2 = 1e-4, 0.9

    def rosenbrock(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = points.detach().requires_grad_()
        value = (100 * (x[:, 1::2] - x[:, ::2] ** 2) ** 2 + (1 - x[:, ::2]) ** 2).sum(1)
        (grad,) = torch.autograd.grad(value.sum(), x)
        return value.detach(), grad

    start = torch.randn(5, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 1.5
    record: list[dict] = []
    x, _, _ = lbfgs(lambda p, rows: rosenbrock(p), start, steps=150, c1=c1, c2=c2, record=record)
    torch.testing.assert_close(x, torch.ones_like(x), rtol=0, atol=1e-6)
    accepted = 0
    for step in record:
        assert bool(step["wolfe"].all())  # no search ran out of evaluations on this objective
        f0, g0 = rosenbrock(step["start"])
        f1, g1 = rosenbrock(step["start"] + step["t"][:, None] * step["direction"])
        slope0, slope1 = (g0 * step["direction"]).sum(1), (g1 * step["direction"]).sum(1)
        assert bool((slope0 < 0).all())
        assert bool((f1 <= f0 + c1 * step["t"] * slope0 + 1e-12).all())
        assert bool((slope1.abs() <= c2 * slope0.abs() + 1e-12).all())
        accepted += len(step["rows"])
    assert accepted >= 5 * 20  # the record saw the iterations, not a handful


def test_converged_rows_stop_early():
    """A row at its objective's precision floor (the value no longer changes along the gradient) ends its iterations
    after one failed steepest-descent search; the other row runs on to its minimum, and the trace keeps the value."""
    centre = torch.tensor([3.0, -2.0], dtype=torch.float64)
    evaluated: list[int] = []

    def objective(points, rows):
        evaluated.extend(rows.tolist())
        diff = points - centre
        values = torch.where(rows == 0, 1.0, diff.square().sum(1))
        grads = torch.where((rows == 0)[:, None], torch.ones_like(points), 2 * diff)
        return values, grads

    start = torch.tensor([[0.0, 0.0], [-5.0, 7.0]], dtype=torch.float64)
    x, _, trace = lbfgs(objective, start, steps=50, max_ls=10)
    torch.testing.assert_close(x[1], centre, rtol=0, atol=1e-10)
    torch.testing.assert_close(x[0], start[0])
    assert evaluated.count(0) <= 1 + 10  # the start and one search, not 50 of them
    assert bool((trace[:, 0] == 1).all())
