"""The adaptive search for a protecting ratio: bisection along a grid of ratios, sequential sampling at every probe,
and a monotonicity check above the answer.

A search (`Search`) is one privacy level of one group of cells that differ only in their ratio (the frontier's
metric, victim and tie rule). It keeps no state: `step(search, evidence, rule)` replays it from the evidence gathered
so far (per probed ratio, whether each sample was protected at the search's level, in sample order) and returns the
samples it still wants per ratio, or, when it wants none, what it found (`Found`). Evidence only grows, so a driver
runs rounds: every open search says what it wants, the driver runs all of it at once, every search replays. The
decisions are then a pure function of the evidence: the same trial results give the same answers.

A probe's verdict (k of its n samples protected) follows the guidelines' rule: it *protects* when the Wilson lower
end of k/n reaches `min_protected`, it *fails* when the upper end is below it or when n reached `n_max` with the
interval still straddling (the rule then says it does not protect); otherwise it is *open* and wants `n_step` more
samples (a new probe starts with `n_start`). An open probe is curtailed, failing at once, when it could no longer
protect at `n_max` even if every remaining sample were protected: the lower end only rises with protected samples, so
its verdict at `n_max` is already the one it would end with.

The search: the lowest ratio of the grid (nothing encrypted) must fail and the highest must protect; between them a
bisection over grid indices, optimistic about the two ends until their verdicts arrive, which is why all three are
asked for in the first round. Then every ratio above the answer that any search of the group probed, and every
`check` ratio above it, must protect; where one fails, the curve is not monotone: the violating ratio is recorded and
the bisection resumes above it (the guidelines' rule: every larger ratio protects), until nothing above fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from selenc.stats import wilson

PROTECTS, FAILS, OPEN = "protects", "fails", "open"


@dataclass(frozen=True)
class Rule:
    """Sequential sampling: samples at a new probe, samples added while its verdict is open, and the most per probe."""

    n_start: int
    n_step: int
    n_max: int

    def next_n(self, n: int) -> int:
        """The sample count a probe with `n` samples asks for next."""
        return self.n_start if n == 0 else min(n + self.n_step, self.n_max)


@dataclass(frozen=True)
class Search:
    """One search: its ratio grid (ascending), its level's `min_protected`, and the check ratios (a subset of grid)."""

    grid: tuple[float, ...]
    min_protected: float
    check: tuple[float, ...] = ()


@dataclass(frozen=True)
class Found:
    """What a search found. `ratio_star` is None when even the highest ratio fails; `bracket_low` is the highest
    failing ratio below it (None when the lowest ratio already protects: the attack did not break the baseline)."""

    ratio_star: float | None
    bracket_low: float | None
    monotone: bool
    violating_ratio: float | None  # the highest failing ratio found above the bisection's first answer
    probes: tuple[float, ...]  # every ratio whose verdict the search read


def verdict(flags: Sequence[bool], min_protected: float, rule: Rule) -> str:
    """PROTECTS, FAILS or OPEN for a probe whose samples were protected as `flags` say (see the module doc)."""
    n = len(flags)
    if n == 0:
        return OPEN
    low, high = wilson(sum(flags), n)
    if low >= min_protected - 1e-12:
        return PROTECTS
    if high < min_protected - 1e-12 or n >= rule.n_max:
        return FAILS
    if wilson(sum(flags) + rule.n_max - n, rule.n_max)[0] < min_protected - 1e-12:
        return FAILS  # curtailed: not even all remaining samples protected would clear it at n_max
    return OPEN


def step(search: Search, evidence: Mapping[float, Sequence[bool]], rule: Rule) -> tuple[dict[float, int], Found | None]:
    """Replay `search` on `evidence`; return (samples wanted per ratio, None) while it is open, else ({}, Found)."""
    grid = search.grid
    read: set[float] = set()
    wanted: dict[float, int] = {}

    def judge(i: int) -> str:
        read.add(grid[i])
        v = verdict(evidence.get(grid[i], ()), search.min_protected, rule)
        if v == OPEN:
            wanted[grid[i]] = rule.next_n(len(evidence.get(grid[i], ())))
        return v

    def bisect(lo: int, hi: int) -> tuple[int, int] | None:
        """Narrow (lo fails, hi protects) to adjacent indices; None when a probe on the way is open."""
        while hi - lo > 1:
            mid = (lo + hi) // 2
            v = judge(mid)
            if v == OPEN:
                return None
            lo, hi = (mid, hi) if v == FAILS else (lo, mid)
        return lo, hi

    top = len(grid) - 1
    low_end, high_end = judge(0), judge(top)
    if low_end == PROTECTS:
        bracket: tuple[int | None, int] | None = (None, 0)
    else:
        bracket = bisect(0, top)
    if wanted or bracket is None:
        return wanted, None
    if high_end == FAILS:
        return {}, Found(None, grid[top], True, None, tuple(sorted(read)))
    lo, hi = bracket
    violating = None
    while True:
        above = [i for i in range(hi + 1, top + 1) if grid[i] in evidence or grid[i] in search.check]
        verdicts = {i: judge(i) for i in above}
        if wanted:
            return wanted, None
        bad = [i for i, v in verdicts.items() if v == FAILS]
        if not bad:
            low = None if lo is None else grid[lo]
            return {}, Found(grid[hi], low, violating is None, violating, tuple(sorted(read)))
        lo = max(bad)
        violating = grid[lo] if violating is None else max(violating, grid[lo])
        hi = min(i for i, v in verdicts.items() if v == PROTECTS and i > lo)  # the top protects: one exists
        bracket = bisect(lo, hi)
        if bracket is None:
            return wanted, None
        lo, hi = bracket
