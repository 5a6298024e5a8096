"""The adaptive search (`search.step`) driven by synthetic oracles: what it finds, how many samples it spends, and
how it treats a non-monotone curve."""

from collections.abc import Callable

import pytest

from selenc.search import FAILS, OPEN, PROTECTS, Rule, Search, step, verdict
from selenc.stats import wilson

RULE = Rule(n_start=5, n_step=5, n_max=20)
GRID = tuple(i / 32 for i in range(33))
CHECK = tuple(r for i, r in enumerate(GRID) if i % 4 == 0)  # every 1/8


def drive(search: Search, oracle: Callable[[float, int], bool], rule: Rule = RULE):
    """Run a search to its end, sample j at ratio r protected when oracle(r, j): (found, evidence, rounds)."""
    evidence: dict[float, list[bool]] = {}
    for rounds in range(1, 1000):
        wanted, found = step(search, evidence, rule)
        if found is not None:
            assert not wanted
            return found, evidence, rounds
        for ratio, n in wanted.items():
            have = evidence.setdefault(ratio, [])
            assert n > len(have) and n <= rule.n_max
            have += [oracle(ratio, j) for j in range(len(have), n)]
    raise AssertionError("the search never ended")


@pytest.mark.parametrize("threshold", [0.01, 0.2, 0.37, 0.5, 0.61, 0.9, 0.99])
def test_a_monotone_threshold_is_found_within_one_grid_step(threshold):
    found, evidence, _ = drive(Search(GRID, 0.5, CHECK), lambda r, j: r >= threshold)
    assert found.ratio_star - 1 / 32 < threshold <= found.ratio_star
    assert found.bracket_low == pytest.approx(found.ratio_star - 1 / 32) and found.monotone
    assert all(len(v) == RULE.n_start for v in evidence.values())  # clear verdicts at the first chunk
    assert len(evidence) <= 2 + 5 + len(CHECK)  # both ends, log2(32) bisection probes, the check grid
    assert set(found.probes) == set(evidence)


def test_sequential_sampling_stops_as_soon_as_the_interval_clears():
    assert verdict([True] * 5, 0.5, RULE) == PROTECTS and verdict([True] * 4 + [False], 0.5, RULE) == OPEN
    assert verdict([False] * 5, 0.5, RULE) == FAILS and verdict([True] * 9 + [False], 0.5, RULE) == PROTECTS
    straddling = [j % 3 != 0 for j in range(20)]  # 13 of 20: the interval still holds 0.5
    assert wilson(sum(straddling), 20)[0] < 0.5 < wilson(sum(straddling), 20)[1]
    assert verdict(straddling, 0.5, RULE) == FAILS  # n_max reached: the rule does not protect
    # one failure among the first five at the answer: 5 more samples, then 9 of 10 clear
    found, evidence, _ = drive(Search(GRID, 0.5, CHECK), lambda r, j: r >= 0.5 and not (r == 0.5 and j == 0))
    assert found.ratio_star == 0.5 and len(evidence[0.5]) == 10
    # a ratio that never clears stops at n_max and counts as failing
    found, evidence, _ = drive(Search(GRID, 0.5, CHECK), lambda r, j: r > 0.5 or (r == 0.5 and j % 3 != 0))
    assert len(evidence[0.5]) == RULE.n_max and found.ratio_star == 0.5 + 1 / 32
    assert max(map(len, evidence.values())) <= RULE.n_max


def test_a_probe_that_can_no_longer_clear_at_n_max_is_curtailed():
    # 3 of 10 protected: even 10 more protected samples give 13 of 20, whose Wilson interval still holds 0.5
    assert wilson(13, 20)[0] < 0.5 and wilson(14, 20)[0] < 0.5 < wilson(15, 20)[0]
    assert verdict([True] * 3 + [False] * 7, 0.5, RULE) == FAILS
    assert verdict([True] * 5 + [False] * 5, 0.5, RULE) == OPEN  # 15 of 20 would still clear
    # at 0.5, 2 of every 5 samples protected: the probe stops at 10 samples instead of running to n_max
    found, evidence, _ = drive(Search(GRID, 0.5, CHECK), lambda r, j: r > 0.5 or (r == 0.5 and j % 5 < 2))
    assert len(evidence[0.5]) == 10 and found.ratio_star == 0.5 + 1 / 32


def test_a_non_monotone_curve_is_flagged_and_the_answer_moved_above_the_violation():
    def oracle(r, j):  # protects from 0.25 on, except a window where a support-matching attacker gets back in
        return r >= 0.25 and not 0.6 <= r < 0.7

    found, _, _ = drive(Search(GRID, 0.5, CHECK), oracle)
    assert not found.monotone and 0.6 <= found.violating_ratio < 0.7
    assert found.ratio_star == pytest.approx(0.71875) and found.bracket_low == pytest.approx(0.6875)
    monotone, _, _ = drive(Search(GRID, 0.5, ()), lambda r, j: r >= 0.25)
    assert monotone.monotone and monotone.violating_ratio is None


def test_the_ends_decide_when_nothing_protects_or_the_baseline_is_not_broken():
    never, _, _ = drive(Search(GRID, 0.5, CHECK), lambda r, j: False)
    assert never.ratio_star is None and never.bracket_low == 1.0
    always, _, _ = drive(Search(GRID, 0.5, CHECK), lambda r, j: True)
    assert always.ratio_star == 0.0 and always.bracket_low is None


def test_a_finer_grid_reuses_the_coarser_probes():
    fine = tuple(i / 64 for i in range(65))
    _, coarse_ev, _ = drive(Search(GRID, 0.5, CHECK), lambda r, j: r >= 0.4)
    found, fine_ev, _ = drive(Search(fine, 0.5, CHECK), lambda r, j: r >= 0.4)
    assert set(coarse_ev) <= set(fine_ev)  # every coarse probe is a fine grid ratio the fine search reads too
    assert found.ratio_star - 1 / 64 < 0.4 <= found.ratio_star
