"""The region vote and the lone-agent rule: the two pure functions under every region verdict."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probenet.collector.classify import down_stands_alone, region_vote
from probenet.collector.model import RegionVerdict

UP, DOWN, UNKNOWN = RegionVerdict.UP, RegionVerdict.DOWN, RegionVerdict.UNKNOWN
MAX_AGENTS = 12
counts = st.integers(0, 10_000)


@pytest.mark.parametrize(("up", "down", "expected"), [
    (0, 0, UNKNOWN),  # no fresh, unimpaired agent
    (1, 0, UP),
    (0, 1, DOWN),
    (1, 1, UP),       # a tie is up: someone in the region reaches the target
    (2, 1, UP),
    (1, 2, DOWN),
    (2, 2, UP),
    (2, 3, DOWN),
    (5, 0, UP),
    (0, 5, DOWN),
])
def test_region_vote_table(up: int, down: int, expected: RegionVerdict) -> None:
    assert region_vote(up, down) is expected


def by_design(verdicts: tuple[RegionVerdict, ...]) -> RegionVerdict:
    """DESIGN.md's wording, over the agents' verdicts one by one."""
    if not verdicts:
        return UNKNOWN
    says_down = sum(v is DOWN for v in verdicts)
    return DOWN if says_down > len(verdicts) / 2 else UP


def test_region_vote_matches_the_design_for_every_region_of_up_to_12_agents() -> None:
    checked = 0
    for size in range(MAX_AGENTS + 1):
        for verdicts in itertools.product((UP, DOWN), repeat=size):
            up, down = verdicts.count(UP), verdicts.count(DOWN)
            assert region_vote(up, down) is by_design(verdicts), verdicts
            checked += 1
    assert checked == 2 ** (MAX_AGENTS + 1) - 1


@given(counts, counts)
def test_another_down_vote_never_turns_a_region_up(up: int, down: int) -> None:
    before, after = region_vote(up, down), region_vote(up, down + 1)
    assert after is not UNKNOWN
    if before is DOWN:
        assert after is DOWN


@given(counts, counts)
def test_another_up_vote_never_turns_a_region_down(up: int, down: int) -> None:
    before, after = region_vote(up, down), region_vote(up + 1, down)
    assert after is not UNKNOWN
    if before is UP:
        assert after is UP


@given(counts)
def test_a_tie_is_up_and_one_more_down_vote_is_down(n: int) -> None:
    assert region_vote(n, n) is (UP if n else UNKNOWN)
    assert region_vote(n, n + 1) is DOWN


# `strong`: firm down votes with regional_confirmations (2) confirmed failures in a row.
@pytest.mark.parametrize(("up", "down", "strong", "stands"), [
    (0, 1, 0, False),  # a lone agent's single confirmed failure needs another region
    (0, 1, 1, True),   # ... or a second confirmed failure in a row
    (0, 2, 0, False),  # two agents' first confirmed failures: random loss, p^4 of the time
    (0, 2, 1, False),  # one agent's second failure does not carry the other's first
    (0, 2, 2, True),   # both confirmed twice: the region fails
    (1, 2, 2, True),   # a strict majority of the firm votes are strong downs
    (1, 2, 1, False),
    (1, 1, 1, False),  # a tie is up, whatever the streaks
    (2, 1, 1, False),  # a minority never stands
    (0, 0, 0, False),  # no firm vote at all (only suspects, or carried-over downs)
    (3, 0, 0, False),
])
def test_down_stands_alone_table(up: int, down: int, strong: int, stands: bool) -> None:
    assert down_stands_alone(up, down, strong) is stands


def test_down_stands_alone_exhaustively() -> None:
    for up, down in itertools.product(range(MAX_AGENTS), range(MAX_AGENTS)):
        for strong in range(down + 1):
            expected = region_vote(up, down) is DOWN and strong > (up + down) / 2
            assert down_stands_alone(up, down, strong) is expected, (up, down, strong)
