"""Operator commands without I/O: whether one applies now, and what became of it.

A command the loop would never act on used to be accepted (202) and kept pending,
unlogged: a `pause` sent to a secondary fired much later, once that host had become a
protected primary. Now the API refuses a command that does not apply in the host's state
and role (409, with the reason), and the loop drops a pending one that stops applying
before it acts (the state moved on), so a command either happens soon or visibly not at
all. What applies where follows `colo_orch.core.decide`, which consumes each command:

| command | applies in | does |
|---|---|---|
| checkpoint | a primary, PROTECTED or CHECKPOINTING | one more checkpoint (rate-limited) |
| pause | a primary, PROTECTED or CHECKPOINTING | output released uncompared |
| resume | PAUSED | a checkpoint, then PROTECTED |
| failover | PROTECTED or CHECKPOINTING; a secondary only once the primary is lost | primary: continue alone; secondary: take over |
| reprotect | STOPPED, ALONE or FENCED; on Xen not a primary whose domain has run | start a new secondary (or wait for one) |
| switchover | a primary, PROTECTED or CHECKPOINTING, whose secondary follows it in COLO | a final checkpoint, then a hand-over: the peer takes over, we re-join as its secondary |

A switchover outlives its decision: once the primary has handed over, its entry stays
pending with a `phase` (what the swap waits for) until this host is the protected
secondary of a protected primary (`done`), or serves as primary again (`failed`).
Like Patroni's switchover it is a failover that the primary starts on purpose, with its
VM stopped first, so it is never a second way to split the brain (docs/ORCHESTRATOR.md).

`Ledger` keeps the accepted commands: pending ones, and the outcome of the last few
(`done`, `dropped`, `superseded`) for `GET /state` and `coloctl --wait`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from colo_orch.core.state import SERVING_STATES, State


class CommandRefused(Exception):
    """The command does not apply now: str() says why (the API answers 409 with it)."""


COMMANDS = ("checkpoint", "failover", "pause", "resume", "reprotect", "switchover")
_RUNNING = (State.PROTECTED, State.CHECKPOINTING)
RECENT = 16  # outcomes kept for GET /state


def refusal(command: str, state: State, role: str, peer_gone: bool,
            hand_over: str | None = "", reprotect: str | None = None) -> str | None:
    """Why `command` cannot apply to a host in `state` with `role` (its peer lost or not),
    or None when it applies. `hand_over`: why this primary could not hand over now
    (`colo_orch.core.decide.handover_blocker`), None when it could; "" when unknown.
    `reprotect`: why this host could not be protected again (`decide.reprotect_blocker`:
    a Xen primary that has run), None when it could."""
    where = f"this host is the {role or 'unassigned'} in {state.name}"
    if command not in COMMANDS:
        return f"unknown command {command!r}; one of {', '.join(COMMANDS)}"
    if command == "switchover":
        if role != "primary" or state not in _RUNNING:
            hint = "; run it on the primary" if role == "secondary" else ""
            return f"switchover applies to the primary of a protected pair; {where}{hint}"
        if hand_over is None:
            return None
        return f"switchover needs a secondary ready to take over: {hand_over or 'unknown'}"
    if command in ("checkpoint", "pause"):
        if state is State.PAUSED and command == "pause":
            return "already paused; `resume` ends the pause"
        if role != "primary" or state not in _RUNNING:
            return f"{command} applies to a protected primary; {where}"
        return None
    if command == "resume":
        return None if state is State.PAUSED else f"resume applies while paused; {where}"
    if command == "failover":
        if state not in _RUNNING:
            return f"failover applies to a protected pair; {where}"
        if role == "secondary" and not peer_gone:
            # decide(), F2: a primary cut off from the arbiter may still serve on the
            # failsafe; taking over beside it would split the brain.
            return ("the primary is heard and may serve: a secondary takes over only once "
                    "the primary is lost; run failover on the primary (it continues alone) "
                    "or stop it")
        return None
    if state not in (State.STOPPED, State.ALONE, State.FENCED):
        return f"reprotect applies to a host serving alone, fenced or stopped; {where}"
    if reprotect is not None and state is State.ALONE:
        return f"reprotect cannot apply: {reprotect}"
    return None


# Commands whose work goes on after the decision that acts on them.
LASTING = ("switchover",)


def switchover_phase(state: State, role: str, peer_state: State | None,
                     peer_role: str) -> tuple[str, str]:
    """(outcome, phase) of a switchover this host has handed over: outcome "" while under
    way, "done" once we are the protected secondary of a protected primary, "failed" if
    we serve as primary again."""
    peer = f"the peer is {peer_role or '?'} in {peer_state.name if peer_state else '?'}"
    if (role == "secondary" and state is State.PROTECTED and peer_role == "primary"
            and peer_state in _RUNNING):
        return "done", f"roles swapped: {peer}, this host its protected secondary"
    if role == "primary" and state in SERVING_STATES:
        return "failed", f"this host serves as primary again ({state.name}); {peer}"
    if state is State.FENCED:
        if peer_role == "primary" or peer_state in (State.FAILING_OVER, State.ALONE):
            return "", f"handed over; {peer}: waiting to re-join as its secondary"
        return "", f"handed over, our VM stopped; {peer}: waiting for it to take over"
    return "", f"re-joining as the new secondary ({role} in {state.name}); {peer}"


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    command: str
    accepted_at: float  # the caller's clock
    outcome: str = ""  # "" while pending; done, dropped, superseded, failed
    detail: str = ""
    ended_at: float | None = None
    phase: str = ""  # a lasting command acted on and still under way: what it waits for

    def view(self, now: float) -> dict[str, object]:
        out: dict[str, object] = {"id": self.id, "command": self.command,
                                  "age_s": round(now - self.accepted_at, 3)}
        if self.phase and not self.outcome:
            out["phase"] = self.phase
        if self.outcome:
            out.update(outcome=self.outcome, detail=self.detail)
        return out


class Ledger:
    """Accepted commands by id. Not thread-safe: the runner holds its lock around it."""

    def __init__(self) -> None:
        self._next = 1
        self.pending: list[Entry] = []
        self.recent: deque[Entry] = deque(maxlen=RECENT)

    def accept(self, command: str, now: float) -> Entry:
        """Record `command` as pending. An operator command (anything but checkpoint)
        replaces one still pending: the loop keeps one."""
        if command != "checkpoint":
            # A lasting command already acted on is no longer the loop's to replace.
            for e in [e for e in self.pending if e.command != "checkpoint" and not e.phase]:
                self._end(e, "superseded", f"replaced by {command} (id {self._next})", now)
        entry = Entry(self._next, command, now)
        self._next += 1
        self.pending.append(entry)
        return entry

    def _end(self, e: Entry, outcome: str, detail: str, now: float) -> None:
        self.pending.remove(e)
        self.recent.append(Entry(e.id, e.command, e.accepted_at, outcome, detail, now))

    def decided(self, *, operator: bool, checkpoints: bool, sentence: str,
                now: float) -> None:
        """The loop acted on the pending operator command, or on the checkpoint requests.
        A lasting command stays pending, its phase the decision's sentence."""
        for e in list(self.pending):
            if e.phase or not (checkpoints if e.command == "checkpoint" else operator):
                continue
            if e.command in LASTING:
                self.pending[self.pending.index(e)] = replace(e, phase=sentence)
            else:
                self._end(e, "done", sentence, now)

    def under_way(self) -> bool:
        """A lasting command (a switchover) was acted on and has not ended yet."""
        return any(e.phase for e in self.pending)

    def follow(self, outcome: str, phase: str, now: float) -> list[Entry]:
        """The lasting commands under way moved to `phase`, or ended with `outcome`;
        return those that ended (to be logged)."""
        ended = []
        for e in [e for e in self.pending if e.phase]:
            if outcome:
                self._end(e, outcome, phase, now)
                ended.append(self.recent[-1])
            else:
                self.pending[self.pending.index(e)] = replace(e, phase=phase)
        return ended

    def recheck(self, state: State, role: str, peer_gone: bool, now: float,
                hand_over: str | None = "", reprotect: str | None = None) -> list[Entry]:
        """Drop the pending commands that no longer apply; return them (to be logged).
        A lasting command under way is followed instead (`follow`)."""
        dropped = []
        for e in [e for e in self.pending if not e.phase]:
            why = refusal(e.command, state, role, peer_gone, hand_over, reprotect)
            if why is not None:
                self._end(e, "dropped", f"no longer applies: {why}", now)
                dropped.append(self.recent[-1])
        return dropped

    def outcome(self, id_: int) -> Entry | None:
        for e in self.recent:
            if e.id == id_:
                return e
        return None

    def view(self, now: float) -> dict[str, object]:
        return {"pending": [e.view(now) for e in self.pending],
                "recent": [e.view(now) for e in reversed(self.recent)]}
