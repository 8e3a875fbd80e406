"""colo_orch.core.commands: which operator command applies where, and the ledger of
accepted ones."""

from __future__ import annotations

import pytest

from colo_orch.core.commands import COMMANDS, RECENT, Ledger, refusal
from colo_orch.core.state import State

RUNNING = {State.PROTECTED, State.CHECKPOINTING}
# (command, role, peer lost) -> the states where it applies.
APPLIES = {
    ("checkpoint", "primary", False): RUNNING,
    ("checkpoint", "secondary", False): set(),
    ("pause", "primary", False): RUNNING,
    ("pause", "secondary", True): set(),
    ("resume", "primary", False): {State.PAUSED},
    ("failover", "primary", False): RUNNING,
    ("failover", "primary", True): RUNNING,
    ("failover", "secondary", True): RUNNING,
    ("failover", "secondary", False): set(),  # the primary is heard: split-brain guard
    ("reprotect", "primary", False): {State.STOPPED, State.ALONE, State.FENCED},
    ("reprotect", "secondary", True): {State.STOPPED, State.ALONE, State.FENCED},
}


@pytest.mark.parametrize(("command", "role", "lost"), sorted(APPLIES))
def test_where_each_command_applies(command: str, role: str, lost: bool) -> None:
    for state in State:
        why = refusal(command, state, role, lost)
        assert (why is None) == (state in APPLIES[command, role, lost]), (state, why)
        if why is not None:
            # The reason names the command's rule or the host's state: what to do instead.
            assert command in why or state.name in why or "primary" in why, why


def test_reasons_say_what_to_do() -> None:
    assert refusal("pause", State.PAUSED, "primary", False) == (
        "already paused; `resume` ends the pause")
    assert "run failover on the primary" in (
        refusal("failover", State.PROTECTED, "secondary", False) or "")
    assert refusal("pause", State.PROTECTED, "secondary", False) == (
        "pause applies to a protected primary; this host is the secondary in PROTECTED")
    assert "unknown command 'stopp'" in (refusal("stopp", State.ALONE, "primary", False) or "")
    assert set(COMMANDS) == {"checkpoint", "failover", "pause", "resume", "reprotect"}


def test_the_ledger_ends_each_command_once() -> None:
    led = Ledger()
    a = led.accept("checkpoint", 1.0)
    b = led.accept("pause", 1.5)
    c = led.accept("failover", 2.0)  # replaces the pause: the loop keeps one command
    assert [e.id for e in led.pending] == [a.id, c.id]
    assert led.outcome(b.id) is not None and led.outcome(b.id).outcome == "superseded"
    led.decided(operator=False, checkpoints=True, sentence="checkpoint for manual", now=3.0)
    assert [e.id for e in led.pending] == [c.id]
    done = led.outcome(a.id)
    assert done is not None and (done.outcome, done.detail) == ("done", "checkpoint for manual")
    # The pair was no longer protected when the loop came to the failover.
    dropped = led.recheck(State.ALONE, "primary", True, 4.0)
    assert [e.id for e in dropped] == [c.id] and led.pending == []
    assert led.view(5.0) == {"pending": [], "recent": [
        {"id": 3, "command": "failover", "age_s": 3.0, "outcome": "dropped",
         "detail": "no longer applies: failover applies to a protected pair; this host is "
                   "the primary in ALONE"},
        {"id": 1, "command": "checkpoint", "age_s": 4.0, "outcome": "done",
         "detail": "checkpoint for manual"},
        {"id": 2, "command": "pause", "age_s": 3.5, "outcome": "superseded",
         "detail": "replaced by failover (id 3)"}]}


def test_the_ledger_keeps_a_bounded_history() -> None:
    led = Ledger()
    for i in range(3 * RECENT):
        led.accept("checkpoint", float(i))
        led.decided(operator=False, checkpoints=True, sentence="ok", now=float(i))
    assert len(led.view(0.0)["recent"]) == RECENT and led.pending == []  # type: ignore[arg-type]
