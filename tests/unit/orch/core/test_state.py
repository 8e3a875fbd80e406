"""Every transition of the table, and every illegal one, through `Machine.fire`."""

from __future__ import annotations

import pytest

from colo_orch.core.state import TRANSITIONS, Event, IllegalTransition, Machine, State

LEGAL = [(s, e, t) for s, row in TRANSITIONS.items() for e, t in row.items()]
ILLEGAL = [(s, e) for s in State for e in Event if e not in TRANSITIONS[s]]


def test_every_state_has_a_row_and_numbers_are_stable() -> None:
    assert set(TRANSITIONS) == set(State)
    # Dashboards and alerts use these numbers: changing one is a breaking change.
    assert [(s.name, int(s)) for s in State] == [
        ("STOPPED", 0), ("STARTING", 1), ("WAITING", 2), ("SYNCING", 3), ("PROTECTED", 4),
        ("CHECKPOINTING", 5), ("FAILING_OVER", 6), ("ALONE", 7), ("PAUSED", 8),
        ("DEGRADED", 9), ("FENCED", 10), ("HOLDING", 11),
    ]


@pytest.mark.parametrize(("src", "event", "dst"), LEGAL,
                         ids=[f"{s.name}-{e.name}" for s, e, _ in LEGAL])
def test_legal_transition(src: State, event: Event, dst: State) -> None:
    m = Machine(src)
    assert m.can(event)
    assert m.fire(event) is dst
    assert m.state is dst


@pytest.mark.parametrize(("src", "event"), ILLEGAL, ids=[f"{s.name}-{e.name}" for s, e in ILLEGAL])
def test_illegal_transition_raises_and_changes_nothing(src: State, event: Event) -> None:
    m = Machine(src)
    assert not m.can(event)
    with pytest.raises(IllegalTransition, match=f"{event.name} is not allowed in state {src.name}"):
        m.fire(event)
    assert m.state is src


def test_every_state_is_reachable_from_stopped() -> None:
    seen = {State.STOPPED}
    frontier = [State.STOPPED]
    while frontier:
        s = frontier.pop()
        for t in TRANSITIONS[s].values():
            if t not in seen:
                seen.add(t)
                frontier.append(t)
    assert seen == set(State)


def test_every_state_can_stop_or_be_reprotected() -> None:
    for s in State:
        if s is not State.STOPPED:
            assert Event.STOP in TRANSITIONS[s] or Event.REPROTECT in TRANSITIONS[s], s
