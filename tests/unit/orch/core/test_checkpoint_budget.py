"""The checkpoint budget: an isolated divergence checkpoints at once, a storm at a bounded rate.

Each row runs a timeline of proxy requests through `decide` the way the runner does: the
loop wakes at each request, at each finished checkpoint and when a held request's
`retry_in` ends, and a checkpoint takes TOOK seconds.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

import pytest

from colo_orch.core.decide import Checkpoint, Snapshot, checkpoint_wait, decide, refill_interval
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
    took: float = TOOK  # each checkpoint stops the PVM this long
    min_interval: float = MIN
    share: float = 1.0  # max_pause_share


def run(row: Row) -> list[float]:
    """The start times of the checkpoints the timeline gets."""
    tat = 0.0
    for t in row.before:
        tat = max(tat, t) + row.min_interval
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
                           checkpoint_requests=("payload",) * pending,
                           last_checkpoint_pause=row.took if starts or row.before else 0.0)
        d = decide(s, row.min_interval, MAX, row.burst, row.share)
        if isinstance(d.action, Checkpoint):
            assert d.checkpoint_tat is not None and d.consumed_checkpoints
            tat, busy_until = d.checkpoint_tat, now + row.took
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


def test_the_refill_interval_keeps_the_pause_share() -> None:
    # The lab's 45 ms checkpoints at the defaults (0.05 s, half the time): 90 ms.
    assert refill_interval(0.05, 0.045, 0.5) == pytest.approx(0.09)
    # Short checkpoints: the floor holds.
    assert refill_interval(0.05, 0.01, 0.5) == pytest.approx(0.05)
    # A share of 1 lets checkpoints follow each other; the floor still spaces them.
    assert refill_interval(0.2, 0.3, 1.0) == pytest.approx(0.3)


@pytest.mark.parametrize("took", [0.045, 0.15, 0.5])
def test_a_storm_of_long_checkpoints_leaves_the_pvm_half_its_time(took: float) -> None:
    # A fixed 0.05 s interval would keep a VM whose checkpoints take 0.15 s paused for
    # good; the budget stretches the interval instead.
    storm = tuple(1.0 + 0.01 * i for i in range(1000))  # 10 s of divergences
    starts = run(Row("long", 3, storm, took=took, min_interval=0.05, share=0.5))
    interval = max(0.05, took / 0.5)
    # Once the bucket is empty, starts are one interval apart: the PVM runs at least
    # half of each.
    gaps = [b - a for a, b in zip(starts[-5:], starts[-4:], strict=False)]
    assert min(gaps) == pytest.approx(interval, abs=1e-6)
    assert took / min(gaps) <= 0.5 + 1e-6
    # And over any window, at most the burst plus one per interval (the first
    # checkpoint's interval is the floor's: no pause was measured before it).
    for i in range(1, len(starts)):
        for j in range(i, len(starts)):
            assert j - i + 1 <= 3 + (starts[j] - starts[i]) / interval + 1e-6, (i, j, starts)

def test_back_to_back_divergent_requests_never_wait_for_tokens() -> None:
    # bench_vms's GET /random back to back, as measured in the lab: a checkpoint of
    # 45 ms, the next request's divergence 40-60 ms after it ends. At the defaults each
    # checkpoints as its divergence arrives (at a fixed 0.2 s interval every request
    # past the burst waited up to 100 ms).
    t, arrivals = 1.0, []
    for i in range(40):
        arrivals.append(t)
        t += 0.045 + (0.040 if i % 2 else 0.060)
    starts = run(Row("random back to back", 3, tuple(arrivals), took=0.045,
                     min_interval=0.05, share=0.5))
    assert starts == [pytest.approx(a) for a in arrivals]
