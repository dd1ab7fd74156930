"""The options' conflicts found through an index equal the pairwise test (problem.conflicts)."""

import itertools
import random

import pytest
from memcompile.passes.planner.problem import ModeOption, any_conflict, conflict_partners, conflicts


def _options(seed, n=60):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        whole = rng.random() < 0.4
        storage = rng.randrange(-1, 12)
        serves = tuple(rng.sample(range(30), rng.randrange(0, 4)))
        out.append(ModeOption(mode="quantize" if whole else "inplace", candidate=rng.randrange(30), storage=storage,
                              whole_storage=whole, serves=serves, packed_bytes=1, expanded_bytes=0, seconds=0.0,
                              fw_from=0, bw_first=0, bw_last=0))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_conflict_partners_are_the_pairwise_conflicts_in_order(seed):
    options = _options(seed)
    expected = tuple(tuple(p for p in range(o + 1, len(options)) if conflicts(options[o], options[p]))
                     for o in range(len(options)))
    assert conflict_partners(options) == expected
    assert any(expected)  # the random options do conflict somewhere


@pytest.mark.parametrize("seed", range(20))
def test_any_conflict_is_the_pairwise_test_on_every_subset_drawn(seed):
    options = _options(seed, n=12)
    rng = random.Random(seed)
    seen = set()
    for _ in range(200):
        chosen = [options[o] for o in sorted(rng.sample(range(len(options)), rng.randrange(0, 6)))]
        expected = any(conflicts(a, b) for a, b in itertools.combinations(chosen, 2))
        seen.add(expected)
        assert any_conflict(chosen) == expected
    assert seen == {True, False}
