"""The checkpoint budget: an isolated divergence checkpoints at once, a storm at a bounded rate.

Each row runs a timeline of proxy requests through `decide` the way the runner does: the
loop wakes at each request, at each finished checkpoint and when a held request's
`retry_in` ends, and a checkpoint takes TOOK seconds.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

import pytest

from colo_orch.core.decide import Checkpoint, Snapshot, checkpoint_wait, decide
from colo_orch.core.state import Event, State
from tests.unit.orch.core.test_decide import MAX, MIN, snap

TOOK = 0.05


@dataclass(frozen=True)
class Row:
    name: str
    burst: float
    requests: tuple[float, ...]  # arrival times of the proxy's requests
    # Spent before the timeline: checkpoints started at these times.
    before: tuple[float, ...] = ()


def run(row: Row) -> list[float]:
    """The start times of the checkpoints the timeline gets."""
    tat = 0.0
    for t in row.before:
        tat = max(tat, t) + MIN
    wakes = list(row.requests)
    heapq.heapify(wakes)
    arrived = 0
    busy_until = -1.0
    starts: list[float] = []
    while wakes:
        now = heapq.heappop(wakes)
        while arrived < len(row.requests) and row.requests[arrived] <= now:
            arrived += 1
        pending = arrived  # those before the last checkpoint are dropped from row
        if now < busy_until or not pending:
            continue
        s: Snapshot = snap(State.PROTECTED, now=now, checkpoint_tat=tat,
                           last_checkpoint_at=max(busy_until, 0.0),
                           checkpoint_requests=("payload",) * pending)
        d = decide(s, MIN, MAX, row.burst)
        if isinstance(d.action, Checkpoint):
            assert d.checkpoint_tat is not None and d.consumed_checkpoints
            tat, busy_until = d.checkpoint_tat, now + TOOK
            starts.append(now)
            row = replace(row, requests=row.requests[arrived:])
            arrived = 0
            heapq.heappush(wakes, busy_until)
        else:
            assert d.retry_in is not None and d.retry_in > 0, d.sentence
            heapq.heappush(wakes, now + d.retry_in + 1e-9)
    return starts


STORM = tuple(1.0 + 0.01 * i for i in range(200))  # a divergence every 10 ms for 2 s

IMMEDIATE = [
    Row("isolated, 10 ms after a checkpoint", 3, (1.01,), before=(1.0,)),
    Row("isolated, after two back-to-back checkpoints", 3, (1.11,), before=(1.0, 1.06)),
    Row("isolated, 1 s after a storm", 3, (STORM[-1] + 1.0,),
        before=tuple(1.0 + 0.2 * i for i in range(10))),
    Row("the first of a storm", 3, STORM[:1], before=(0.99,)),
]


@pytest.mark.parametrize("row", IMMEDIATE, ids=lambda r: r.name)
def test_an_isolated_divergence_checkpoints_at_once(row: Row) -> None:
    assert run(row)[0] == row.requests[0]


def test_burst_1_is_the_old_minimum_interval() -> None:
    # The behaviour this budget replaces: a divergence 10 ms after a checkpoint waited
    # out the rest of checkpoint_min_interval.
    starts = run(Row("min interval", 1, (1.01,), before=(1.0,)))
    assert starts == [pytest.approx(1.0 + MIN, abs=1e-6)]


@pytest.mark.parametrize("burst", [1, 3, 8])
def test_a_storm_gets_a_bounded_rate(burst: float) -> None:
    starts = run(Row("storm", burst, STORM))
    span = STORM[-1] - STORM[0]
    # Unbounded, a checkpoint would start each time the previous one ends (~40).
    assert len(starts) <= burst + span / MIN + 1
    # In every window, at most the burst plus one per interval elapsed.
    for i in range(len(starts)):
        for j in range(i, len(starts)):
            assert j - i + 1 <= burst + (starts[j] - starts[i]) / MIN + 1e-6, (i, j, starts)
    # Once the bucket is empty, starts are one interval apart.
    gaps = [b - a for a, b in zip(starts[-5:], starts[-4:], strict=False)]
    assert min(gaps) == pytest.approx(MIN, abs=1e-6)
    # And the budget is used: the storm is not starved either.
    assert len(starts) >= span / MIN


def test_a_held_request_says_when_to_decide_again() -> None:
    s = snap(State.PROTECTED, checkpoint_requests=("payload",), checkpoint_tat=100.3)
    d = decide(s, MIN, MAX, 2)
    assert (d.event, d.action) == (None, None) and "rate limit" in d.sentence
    assert d.retry_in == pytest.approx(0.1)
    d = decide(replace(s, now=100.1), MIN, MAX, 2)
    assert d.event is Event.CHECKPOINT and d.checkpoint_tat == pytest.approx(100.5)


def test_the_wait_formula() -> None:
    # A full bucket (tat in the past) never waits; each spent token adds one interval.
    assert checkpoint_wait(0.0, 100.0, 0.2, 3) == 0.0
    assert checkpoint_wait(100.6, 100.0, 0.2, 3) == pytest.approx(0.2)
    assert checkpoint_wait(100.4, 100.0, 0.2, 3) == 0.0
