"""colo_orch.core.commands: which operator command applies where, and the ledger of
accepted ones."""

from __future__ import annotations

import pytest

from colo_orch.core.commands import COMMANDS, RECENT, Ledger, refusal, switchover_phase
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
    assert set(COMMANDS) == {"checkpoint", "failover", "pause", "resume", "reprotect",
                             "switchover"}


def test_switchover_applies_to_a_protected_primary_ready_to_hand_over() -> None:
    for state in State:
        for role in ("primary", "secondary"):
            why = refusal("switchover", state, role, False, None)
            assert (why is None) == (role == "primary" and state in RUNNING), (state, role)
    assert refusal("switchover", State.PROTECTED, "secondary", False, None) == (
        "switchover applies to the primary of a protected pair; this host is the "
        "secondary in PROTECTED; run it on the primary")
    assert refusal("switchover", State.ALONE, "primary", True, None) == (
        "switchover applies to the primary of a protected pair; this host is the "
        "primary in ALONE")
    # The primary could not hand over: the reason is decide.handover_blocker's.
    assert refusal("switchover", State.PROTECTED, "primary", False, "the secondary cannot "
                   "reach the arbiter") == ("switchover needs a secondary ready to take "
                                            "over: the secondary cannot reach the arbiter")
    # Not known yet (no cycle has run): refused, never guessed.
    assert refusal("switchover", State.PROTECTED, "primary", False) is not None


def test_a_switchover_stays_pending_until_the_pair_has_swapped() -> None:
    led = Ledger()
    sw = led.accept("switchover", 1.0)
    # The final checkpoint is no consumption: it stays an ordinary pending command.
    assert led.recheck(State.CHECKPOINTING, "primary", False, 1.5, None) == []
    led.decided(operator=True, checkpoints=False, sentence="switchover: handing over",
                now=2.0)
    assert led.pending[0].phase == "switchover: handing over"
    assert led.under_way() and led.outcome(sw.id) is None
    # Once handed over, FENCED no longer admits a switchover: followed, not dropped.
    assert led.recheck(State.FENCED, "primary", False, 2.5, "x") == []
    # A newer command does not replace it.
    pause = led.accept("pause", 2.6)
    assert [e.id for e in led.pending] == [sw.id, pause.id]
    led.recheck(State.FENCED, "primary", False, 2.7, "x")
    outcome, phase = switchover_phase(State.FENCED, "primary", State.PROTECTED, "secondary")
    assert outcome == "" and "waiting for it to take over" in phase
    assert led.follow(outcome, phase, 3.0) == []
    assert led.view(3.0)["pending"] == [{"id": sw.id, "command": "switchover", "age_s": 2.0,
                                         "phase": phase}]
    outcome, phase = switchover_phase(State.PROTECTED, "secondary", State.PROTECTED,
                                      "primary")
    ended = led.follow(outcome, phase, 9.0)
    assert [(e.id, e.outcome) for e in ended] == [(sw.id, "done")]
    assert not led.under_way()


def test_switchover_phases() -> None:
    ph = switchover_phase
    assert ph(State.FENCED, "primary", State.FAILING_OVER, "secondary")[1].startswith(
        "handed over; the peer is secondary in FAILING_OVER: waiting to re-join")
    assert ph(State.FENCED, "primary", None, "") == (
        "", "handed over, our VM stopped; the peer is ? in ?: waiting for it to take over")
    assert ph(State.WAITING, "secondary", State.ALONE, "primary")[0] == ""
    # Protected as the secondary, but the new primary does not say PROTECTED yet.
    assert ph(State.PROTECTED, "secondary", State.SYNCING, "primary")[0] == ""
    assert ph(State.PROTECTED, "secondary", State.CHECKPOINTING, "primary")[0] == "done"
    # Our VM serves as the primary again: the swap did not happen.
    assert ph(State.ALONE, "primary", None, "")[0] == "failed"


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
