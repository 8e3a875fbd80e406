"""The proxy's modes: one transition table, and the names its replies have always shown."""

from __future__ import annotations

from typing import Any

import pytest

from colo_proxy.service.metrics import MODES
from colo_proxy.service.modes import (
    EVENTS,
    TRANSITIONS,
    Event,
    IllegalTransition,
    Machine,
    Mode,
    initial,
)
from colo_proxy.service.primary import PrimaryProxy
from colo_proxy.service.secondary import SecondaryProxy
from colo_proxy.service.settings import ProxySettings
from colo_proxy.wire.control import REQUESTS

LEGAL = [(m, e, nxt) for m, row in TRANSITIONS.items() for e, nxt in row.items()]
ILLEGAL = [(m, e) for m in Mode for e in Event if e not in TRANSITIONS[m]]


@pytest.mark.parametrize(("mode", "event", "nxt"), LEGAL)
def test_every_transition_in_the_table_works(mode: Mode, event: Event, nxt: Mode) -> None:
    m = Machine(mode)
    assert m.can(event)
    assert m.fire(event) is nxt and m.mode is nxt


@pytest.mark.parametrize(("mode", "event"), ILLEGAL)
def test_an_illegal_transition_raises_and_leaves_the_mode(mode: Mode, event: Event) -> None:
    m = Machine(mode)
    assert not m.can(event)
    with pytest.raises(IllegalTransition) as err:
        m.fire(event)
    assert m.mode is mode and (err.value.mode, err.value.event) == (mode, event)


def test_the_table_has_illegal_pairs_and_every_mode_a_row() -> None:
    assert set(TRANSITIONS) == set(Mode)
    assert (Mode.BARRIER, Event.CHECKPOINT_BARRIER) in ILLEGAL


def test_numbers_are_stable_and_events_are_control_messages() -> None:
    assert {m.name: int(m) for m in Mode} == {"PROTECTED": 0, "PASSTHROUGH": 1, "BARRIER": 2,
                                              "FENCED": 3, "BUFFERED": 4,
                                              "BUFFERED_BARRIER": 5}
    assert set(EVENTS) <= set(REQUESTS) and set(EVENTS.values()) == set(Event)


def test_mode_names_are_those_the_status_always_reported() -> None:
    assert {m: m.label for m in Mode} == {Mode.PROTECTED: "protected",
                                          Mode.PASSTHROUGH: "passthrough",
                                          Mode.BARRIER: "protected",
                                          Mode.FENCED: "fenced",
                                          Mode.BUFFERED: "protected",
                                          Mode.BUFFERED_BARRIER: "protected"}
    assert MODES == ("protected", "passthrough", "fenced")


def test_a_proxy_starts_protected_or_fenced_and_unfence_goes_to_protected() -> None:
    assert initial().mode is Mode.PROTECTED
    m = initial(fenced=True)  # colo-proxy --fenced: nothing passes before unfence
    assert m.mode is Mode.FENCED
    assert not any(m.can(e) for e in (Event.PAUSE, Event.FAILOVER, Event.RESUME))
    assert m.fire(Event.UNFENCE) is Mode.PROTECTED


BUFFERING = {Mode.BUFFERED, Mode.BUFFERED_BARRIER}


def _walk(m: Machine, depth: int) -> set[Mode]:
    """Every mode reachable from m's state in up to depth events."""
    seen = {m.mode}
    if depth:
        for e in Event:
            if m.can(e):
                n = Machine(m.mode, m.fenced_from, m.home)
                n.fire(e)
                seen |= _walk(n, depth - 1)
    return seen


def test_a_buffering_machine_never_compares_and_a_comparing_one_never_buffers() -> None:
    # Remus and COLO are two ways to protect output: a resume or an unfence returns to the
    # machine's own, whatever happened in between.
    assert _walk(Machine.buffering(), 6) == BUFFERING | {Mode.PASSTHROUGH, Mode.FENCED}
    assert _walk(Machine(), 6) == {Mode.PROTECTED, Mode.BARRIER, Mode.PASSTHROUGH,
                                   Mode.FENCED}


@pytest.mark.parametrize(("events", "end"), [
    ([Event.CHECKPOINT_BARRIER, Event.CHECKPOINT_DONE], Mode.BUFFERED),
    ([Event.CHECKPOINT_DONE], Mode.BUFFERED),
    ([Event.CHECKPOINT_BARRIER, Event.FAILOVER, Event.RESUME], Mode.BUFFERED),
    ([Event.PAUSE, Event.RESUME], Mode.BUFFERED),
    ([Event.CHECKPOINT_BARRIER, Event.FENCE, Event.UNFENCE], Mode.BUFFERED),
    ([Event.PAUSE, Event.FENCE, Event.UNFENCE], Mode.PASSTHROUGH),
    ([Event.CHECKPOINT_BARRIER, Event.UNFENCE], Mode.BUFFERED_BARRIER),
])
def test_remus_playbook(events: list[Event], end: Mode) -> None:
    m = Machine.buffering()
    for e in events:
        m.fire(e)
    assert m.mode is end and m.mode.label in ("protected", "passthrough")


def test_a_buffering_proxy_started_fenced_unfences_to_buffering() -> None:
    m = initial(fenced=True, buffer=True)
    assert m.mode is Mode.FENCED and m.fire(Event.UNFENCE) is Mode.BUFFERED
    assert initial(buffer=True).mode is Mode.BUFFERED


def test_remus_refuses_a_second_barrier() -> None:
    m = Machine.buffering()
    m.fire(Event.CHECKPOINT_BARRIER)
    with pytest.raises(IllegalTransition):
        m.fire(Event.CHECKPOINT_BARRIER)
    assert m.mode is Mode.BUFFERED_BARRIER


class Idle:
    """Queue, SVM source and datapath at once, with nothing ever arriving."""

    def receive(self, limit: int = 64) -> list[Any]:
        return []

    def decide(self, accept: Any, drop: Any = ()) -> None:
        pass

    def accept_all(self) -> None:
        pass

    def drop_all(self) -> None:
        pass

    def set_mode(self, mode: int) -> None:
        pass

    def reset_offsets(self) -> int:
        return 0

    def offsets(self) -> list[Any]:
        return []

    def carried(self) -> int:
        return 0

    def counters(self) -> dict[str, int]:
        return {}


def _reported(proxy: PrimaryProxy | SecondaryProxy) -> tuple[str, str]:
    return (proxy.on_control({"type": "hello"})["mode"],
            proxy.on_control({"type": "status"})["mode"])


def test_the_primary_reports_each_mode_by_its_old_name() -> None:
    proxy = PrimaryProxy(ProxySettings(), Idle(), Idle(), notify=lambda m: 0)
    assert proxy.mode is Mode.PROTECTED and _reported(proxy) == ("protected",) * 2
    proxy.on_control({"type": "checkpoint_barrier"})
    assert proxy.mode is Mode.BARRIER and _reported(proxy) == ("protected",) * 2
    proxy.on_control({"type": "pause"})
    assert proxy.mode is Mode.PASSTHROUGH and _reported(proxy) == ("passthrough",) * 2
    # A barrier the table does not allow is ignored, as before the table: ok, no change.
    assert proxy.on_control({"type": "checkpoint_barrier"}) == {"type": "ok",
                                                                "for": "checkpoint_barrier"}
    assert proxy.mode is Mode.PASSTHROUGH
    proxy.on_control({"type": "resume"})
    assert proxy.mode is Mode.PROTECTED


def test_the_secondary_reports_each_mode_by_its_old_name() -> None:
    sec = SecondaryProxy(Idle())
    assert _reported(sec) == ("protected",) * 2
    sec.on_control({"type": "failover"})
    assert sec.mode is Mode.PASSTHROUGH and _reported(sec) == ("passthrough",) * 2


@pytest.mark.parametrize(("start", "back"), [(Mode.PROTECTED, Mode.PROTECTED),
                                             (Mode.BARRIER, Mode.PROTECTED),
                                             (Mode.PASSTHROUGH, Mode.PASSTHROUGH)])
def test_unfence_returns_to_the_mode_the_fence_came_in(start: Mode, back: Mode) -> None:
    m = Machine(start)
    assert m.fire(Event.FENCE) is Mode.FENCED
    assert m.fire(Event.FENCE) is Mode.FENCED  # repeated: still where it came from
    assert m.fire(Event.UNFENCE) is back and m.mode is back


@pytest.mark.parametrize("event", [Event.PAUSE, Event.FAILOVER, Event.RESUME])
def test_nothing_but_unfence_releases_a_fenced_proxy(event: Event) -> None:
    m = Machine(Mode.FENCED)
    with pytest.raises(IllegalTransition):
        m.fire(event)
    assert m.mode is Mode.FENCED


def test_both_proxies_report_fenced_and_refuse_to_pass() -> None:
    pri = PrimaryProxy(ProxySettings(), Idle(), Idle(), notify=lambda m: 0)
    sec = SecondaryProxy(Idle())
    for proxy in (pri, sec):
        assert proxy.on_control({"type": "fence"}) == {"type": "ok", "for": "fence"}
        assert _reported(proxy) == ("fenced",) * 2
        with pytest.raises(IllegalTransition):
            proxy.on_control({"type": "pause"})
        proxy.on_control({"type": "unfence"})
        assert _reported(proxy) == ("protected",) * 2
