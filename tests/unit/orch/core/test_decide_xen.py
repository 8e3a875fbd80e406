"""Playbooks for a Xen primary: libxl's COLO takes only a domain created paused that has
never run (docs/xen.md), so such a domain counts as ready for COLO, is unpaused to serve
alone when no secondary comes in time, and one that has run is never fed to `xl remus -c`."""

from __future__ import annotations

from dataclasses import replace

from colo_orch.core.commands import refusal
from colo_orch.core.decide import (
    XEN_REPROTECT,
    ActionResult,
    EnterColo,
    PeerObs,
    Snapshot,
    StartVM,
    TakeOver,
    Unpause,
    VmObs,
    decide,
    reprotect_blocker,
)
from colo_orch.core.state import Event, Machine, State

MIN, MAX = 0.2, 10.0
WAIT = 60.0  # timing.paused_primary_wait's default
URI = "tcp:10.99.1.2:7420"
# `xl create -p`: the domain exists, paused, and has never run.
CREATED_PAUSED = VmObs(reachable=True, running=False, status="paused", never_ran=True)
RUNNING = VmObs(reachable=True, running=True, status="running")
SEC_WAITING = PeerObs(alive=True, state=State.WAITING, role="secondary", vm_ok=True,
                      incoming_uri=URI)
NOBODY = PeerObs(alive=False)


def snap(state: State, **kw: object) -> Snapshot:
    """A Xen primary that entered `state` at 50.0; now is 100.0."""
    base = Snapshot(now=100.0, state=state, role="primary", vm=CREATED_PAUSED, peer=NOBODY,
                    lease_held=True, lease_available=False, busy=False, finished=None,
                    last_checkpoint_at=0.0, colo_needs_fresh_primary=True,
                    paused_primary_wait=WAIT, state_since=50.0)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_a_primary_created_paused_enters_colo_once_a_secondary_is_ready() -> None:
    d = decide(snap(State.WAITING, peer=SEC_WAITING), MIN, MAX)
    assert (d.event, d.action) == (Event.SYNC, EnterColo(URI)), d.sentence
    assert "created paused" in d.sentence
    # A secondary whose proxy is not ready yet is not ready.
    d = decide(snap(State.WAITING, peer=replace(SEC_WAITING, proxy_ready=False)), MIN, MAX)
    assert (d.event, d.action) == (None, None)


def test_without_a_secondary_it_is_unpaused_to_serve_alone_after_the_bound() -> None:
    d = decide(snap(State.WAITING, now=50.0 + WAIT - 1), MIN, MAX)
    assert (d.event, d.action) == (None, None)
    assert "waiting 1 s more for a secondary" in d.sentence
    d = decide(snap(State.WAITING, now=50.0 + WAIT), MIN, MAX)
    assert (d.event, d.action) == (Event.SERVE_ALONE, Unpause()), d.sentence
    assert "rather than keep the service down" in d.sentence
    assert "paused_primary_wait" in d.sentence and "restarted colo-orch" in d.sentence
    # S6: the arbiter records that we serve alone before the VM runs.
    d = decide(snap(State.WAITING, now=50.0 + WAIT, alone_recorded=False), MIN, MAX)
    assert (d.event, d.action, d.record_alone) == (None, None, True)


def test_a_secondary_that_is_heard_but_not_ready_does_not_hold_the_service_down() -> None:
    starting = replace(SEC_WAITING, state=State.STARTING)
    d = decide(snap(State.WAITING, peer=starting, now=50.0 + WAIT), MIN, MAX)
    assert (d.event, d.action) == (Event.SERVE_ALONE, Unpause())


def test_a_primary_that_has_run_is_never_taken_into_colo() -> None:
    # Unpaused (or created running): libxl would fail it after the first checkpoint.
    d = decide(snap(State.WAITING, vm=RUNNING, peer=SEC_WAITING), MIN, MAX)
    assert (d.event, d.action) == (None, None)
    assert XEN_REPROTECT in d.sentence and "serving unprotected" in d.sentence
    # Paused again after it ran: still not (the backend reports never_ran False).
    paused = replace(RUNNING, running=False, status="paused")
    d = decide(snap(State.WAITING, vm=paused, peer=SEC_WAITING), MIN, MAX)
    assert (d.event, d.action) == (None, None)
    # QEMU's COLO takes a running primary, as before.
    d = decide(snap(State.WAITING, vm=RUNNING, peer=SEC_WAITING,
                    colo_needs_fresh_primary=False), MIN, MAX)
    assert (d.event, d.action) == (Event.SYNC, EnterColo(URI))


def test_re_protection_of_a_xen_primary_that_has_run_is_refused_with_its_reason() -> None:
    alone = snap(State.ALONE, vm=RUNNING, peer=SEC_WAITING)
    d = decide(alone, MIN, MAX)
    assert (d.event, d.action) == (None, None)
    assert d.sentence == f"a new secondary is waiting, but {XEN_REPROTECT}: serving alone"
    assert reprotect_blocker(alone) == XEN_REPROTECT
    # The API refuses an operator's reprotect with the same reason (409), and the loop
    # does not act on one either.
    why = refusal("reprotect", State.ALONE, "primary", False, reprotect=XEN_REPROTECT)
    assert why == f"reprotect cannot apply: {XEN_REPROTECT}"
    d = decide(replace(alone, auto_reprotect=False, operator="reprotect"), MIN, MAX)
    assert (d.event, d.action, d.consumed_operator) == (None, None, False)
    # QEMU: re-protected as before.
    d = decide(replace(alone, colo_needs_fresh_primary=False), MIN, MAX)
    assert d.event is Event.REPROTECT and reprotect_blocker(
        replace(alone, colo_needs_fresh_primary=False)) is None


def test_alone_with_a_domain_still_paused_unpauses_it_or_protects_it() -> None:
    # HOLDING regained the lease into ALONE before the VM ran: it serves only once it runs.
    d = decide(snap(State.ALONE), MIN, MAX)
    assert (d.event, d.action) == (None, Unpause()), d.sentence
    # ... unless a secondary waits: never run, it can still be protected.
    d = decide(snap(State.ALONE, peer=SEC_WAITING), MIN, MAX)
    assert d.event is Event.REPROTECT and reprotect_blocker(snap(State.ALONE)) is None


def test_a_failed_colo_entry_with_the_domain_still_paused_serves_alone_at_once() -> None:
    d = decide(snap(State.SYNCING, busy=False, vm=replace(CREATED_PAUSED, migration="failed"),
                    finished=ActionResult("enter_colo", False, "xl remus ended")), MIN, MAX)
    assert d.event is Event.ERROR
    s = snap(State.DEGRADED, degraded_reason="enter_colo failed: xl remus ended",
             degraded_at=99.0)
    d = decide(s, MIN, MAX)
    # No 30 s back-off: nobody is served meanwhile. The take-over unpauses the domain.
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("primary")), d.sentence
    assert "rather than keep the service down" in d.sentence


def test_a_restarted_orchestrator_adopts_its_paused_domain_and_waits_again() -> None:
    """colo-orch restarted before COLO began: the domain its previous run created paused is
    adopted (never created twice) and waits anew for a secondary, its bound from WAITING."""
    d = decide(snap(State.STOPPED), MIN, MAX)
    assert (d.event, d.action) == (Event.START, None)
    assert d.sentence == "adopting our VM, created paused and not run yet, as primary"
    d = decide(snap(State.STARTING), MIN, MAX)
    assert d.event is Event.VM_RUNNING
    d = decide(snap(State.WAITING, state_since=100.0), MIN, MAX)
    assert (d.event, d.action) == (None, None) and f"waiting {WAIT:.0f} s more" in d.sentence


def test_a_created_paused_primary_walks_the_table_to_colo_or_to_serving_alone() -> None:
    """STOPPED -> STARTING -> WAITING, then SYNCING with a secondary, ALONE without."""
    m = Machine()
    d = decide(snap(State.STOPPED, vm=VmObs(reachable=False)), MIN, MAX)
    assert d.action == StartVM(incoming=False)
    m.fire(d.event)  # type: ignore[arg-type]
    d = decide(snap(m.state, finished=ActionResult("start_vm", True, "web created paused")),
               MIN, MAX)
    m.fire(d.event)  # type: ignore[arg-type]
    assert m.state is State.WAITING
    for peer, now, state in ((SEC_WAITING, 51.0, State.SYNCING),
                             (NOBODY, 50.0 + WAIT, State.ALONE)):
        branch = Machine(m.state)
        d = decide(snap(branch.state, peer=peer, now=now), MIN, MAX)
        branch.fire(d.event)  # type: ignore[arg-type]
        assert branch.state is state, d.sentence
