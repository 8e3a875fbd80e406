"""One reconciliation decision: a snapshot of the world in, one event and one action out.

Pure: no I/O, no clock (the snapshot carries `now`). The runner
(`colo_orch.daemon.runner`) builds the snapshot from QMP, the heartbeat listener, the
arbiter and the proxy, fires the event on the `Machine`, hands the action to
the single-slot executor, and logs the sentence. A missed observation is simply
seen again at the next cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from colo_orch.core.state import RUNNING_STATES, SERVING_STATES, TRANSITIONS, Event, State


# Observations --------------------------------------------------------------
@dataclass(frozen=True)
class VmObs:
    """What QMP says about our VM this cycle."""

    reachable: bool  # the monitor answered
    hung: bool = False  # the monitor accepted the connection but a query timed out
    running: bool = False  # query-status says running
    status: str = ""  # query-status "status" (running, inmigrate, paused, colo, ...)
    migration: str = "none"  # query-migrate status (none, active, colo, completed, failed)
    colo_mode: str = "none"  # query-colo-status mode (none, primary, secondary)
    disk_error: str = ""  # disk replication problem (colo_orch.backends.qemu.blk), "" if none
    # Created paused and never run since (Xen: `xl create -p`): the one kind of primary
    # libxl's COLO takes (Snapshot.colo_needs_fresh_primary). It serves nobody yet.
    never_ran: bool = False


@dataclass(frozen=True)
class PeerObs:
    """The peer orchestrator as its heartbeats describe it."""

    alive: bool  # a heartbeat arrived within heartbeat_timeout
    state: State | None = None
    role: str = ""
    vm_ok: bool = False
    incoming_uri: str = ""  # where the peer's VM waits when the peer is secondary
    proxy_ready: bool = True  # the peer's proxy is up (or it runs none)
    # The peer's last heartbeat echoed one of ours sent less than heartbeat_timeout / 2 ago:
    # it still hears us, so it cannot have declared us lost (docs/ORCHESTRATOR.md, F2).
    hears_us: bool = False
    # Since when (our clock) the peer has reported this state and role without a break.
    since: float = 0.0
    # The peer's arbiter store answered its last request (its heartbeat says so): a
    # secondary cut off from the store could not take the lease at a switchover.
    arbiter_ok: bool = True
    # The peer's proxy records its SVM's output for a switchover's take-over to replay
    # (colo_proxy.service.output_record).
    recording: bool = False


@dataclass(frozen=True)
class ActionResult:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Snapshot:
    now: float
    state: State
    role: str  # our current role: "primary" or "secondary"
    vm: VmObs
    peer: PeerObs
    lease_held: bool  # we hold the arbiter's lease, and our hold is certain now
    lease_available: bool  # nobody else holds a live lease (we could take it)
    busy: bool  # the single-slot executor runs an action
    finished: ActionResult | None  # the action that finished since the last cycle
    checkpoint_requests: tuple[str, ...] = ()  # reasons pending (proxy, operator)
    last_checkpoint_at: float = 0.0
    # The checkpoint budget's state (`checkpoint_wait`): the moment its bucket is full
    # again, as the previous Decision.checkpoint_tat left it; 0.0: full.
    checkpoint_tat: float = 0.0
    # How long the PVM stood still in the last checkpoint (0.0: none yet), for the
    # budget's pause-share bound (`refill_interval`).
    last_checkpoint_pause: float = 0.0
    # pending operator command: pause, resume, failover, reprotect, switchover, stop
    operator: str = ""
    operator_at: float = 0.0  # when the pending operator command was accepted (our clock)
    auto_reprotect: bool = True
    degraded_reason: str = ""
    degraded_at: float = 0.0  # when the state became DEGRADED
    lease_reachable: bool = True  # the arbiter's store answered its last request
    # The arbiter has answered (or failed) at least once since we started. Before that a
    # restarted orchestrator knows nothing of the lease its previous run held, and fencing
    # the adopted VM on that ignorance would cut its clients off for nothing.
    lease_known: bool = True
    lease_error: str = ""  # why the lease was lost or the store did not answer
    # The store renewed our lease on a request sent after the peer's last heartbeat
    # arrived: it still knew us alive after the peer could last have (S5).
    lease_renewed_since_peer: bool = True
    # The store's sync key says we serve alone (S6): the other copy is stale, so that host
    # cannot acquire the lease. We serve alone only once this is recorded.
    alone_recorded: bool = True
    # The store's sync key says the other host served alone after our last checkpoint:
    # our copy is stale and must never serve (S6).
    stale: bool = False
    # Our proxy holds every output packet of our VM (fail closed): we fenced it, or its
    # hello said so when we (re)connected, e.g. after our orchestrator restarted.
    fenced: bool = False
    # The hypervisor's COLO takes only a primary created paused that has never run
    # (VmObs.never_ran): Xen's libxl (`XEN_REPROTECT`), so the runner sets it with
    # backend = "xen".
    colo_needs_fresh_primary: bool = False
    # How long such a primary, paused, waits in WAITING for a secondary before it is
    # unpaused to serve alone (timing.paused_primary_wait).
    paused_primary_wait: float = 60.0
    state_since: float = 0.0  # when our state was last entered (our clock)


# Actions (commands to the runner) ------------------------------------------
@dataclass(frozen=True)
class StartVM:
    incoming: bool  # start as a COLO secondary waiting for migration


@dataclass(frozen=True)
class EnterColo:
    uri: str  # the peer VM's incoming address


@dataclass(frozen=True)
class Checkpoint:
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class TakeOver:
    """Leave COLO and serve alone: x-colo-lost-heartbeat, proxy failover, announce."""

    was_role: str


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class ReleaseLease:
    pass


@dataclass(frozen=True)
class StopVM:
    pass


@dataclass(frozen=True)
class Unpause:
    """Let our VM, created paused and never run (Xen), run: it serves alone."""


@dataclass(frozen=True)
class CancelMigration:
    """Cancel a migration our VM still runs from an abandoned `EnterColo`, and return
    once QEMU says it ended."""


Action = (StartVM | EnterColo | Checkpoint | TakeOver | Pause | ReleaseLease | StopVM
          | CancelMigration | Unpause)


@dataclass(frozen=True)
class Decision:
    sentence: str
    event: Event | None = None
    action: Action | None = None
    role: str | None = None  # a new role, when the decision changes it
    consumed_checkpoints: bool = False
    consumed_operator: bool = False
    degraded_reason: str = ""
    # True: hold every output packet of our VM now (fail closed), before any action;
    # False: release the fence again. Done by the loop itself, never queued behind an action.
    fence: bool | None = None
    # True: ask the arbiter to record in the store that we serve alone (S6) before we do.
    record_alone: bool = False
    # True: make the running checkpoint fail now (the peer is lost; it would hang on a
    # stream to a dead secondary until its bound), so that the failover can start.
    abort_checkpoint: bool = False
    # The budget's state after this decision's checkpoint (None: no checkpoint, unchanged).
    checkpoint_tat: float | None = None
    # A request is held by the budget: decide again in this many seconds, not at the next
    # loop cycle.
    retry_in: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


MAX_INTERVAL_REASON = "periodic"
# How long a protected secondary lets its primary's heartbeats say WAITING: at a
# re-protection we become PROTECTED as the migration completes, and the primary's next
# heartbeats may still say WAITING or SYNCING for an interval or two (0.1 s each at the
# defaults); past this the primary is not in COLO with us.
PEER_LAG_S = 3.0
# Seconds a switchover's final checkpoint waits for the secondary's proxy to record (a
# proxy without the recorder never does: the hand-over then goes on without a replay).
RECORD_WAIT = 0.5
# Seconds a failed re-protection (COLO could not start) stays DEGRADED before the next try.
REPROTECT_BACKOFF = 30.0
# Why a primary that has run cannot enter COLO on Xen. xen.git's
# tools/libs/light/libxl_colo_save.c: libxl__colo_save_setup sets `css->paused = true`
# whatever the domain's state, and colo_preresume_cb, once it has resumed the primary from
# the first checkpoint, unpauses it ("The guest should be paused before doing colo because
# there is no disk migration"): the two disks must be equal from the start, so the primary
# must not have written to its disk since the secondary's copy was made. No option or path
# of libxl's COLO takes a primary that runs; on the nested lab a running one failed that
# unpause ("cannot unpause primary vm"), and one paused after it ran never suspended
# (docs/xen.md). So a Xen primary that has served can be protected again only as a new
# domain, with the secondary's disk a fresh copy of its own.
XEN_COLO_TAKES = ("libxl's COLO takes only a primary domain created paused that has never "
                  "run (xl create -p)")
XEN_RESTART = ("protecting it needs its domain destroyed and created anew by a restarted "
               "colo-orch, with the secondary's disk a fresh copy (docs/xen.md)")
XEN_REPROTECT = f"{XEN_COLO_TAKES}, and ours has run: {XEN_RESTART}"


# The checkpoint budget ----------------------------------------------------------
# A token bucket holding `burst` checkpoints, refilled by one every `interval` seconds,
# kept in GCRA form: one number, the theoretical arrival time `tat`, the moment the
# bucket would be full again. A divergence after a quiet spell finds tokens and
# checkpoints at once, however recent the previous checkpoint; a storm drains the bucket
# and then gets one checkpoint per `interval`, so that in any window of T seconds at most
# `burst + T / interval` checkpoints run and the VM keeps running between them.
# burst = 1 is the plain minimum interval between checkpoint starts.
def refill_interval(min_interval: float, last_pause: float, max_pause_share: float) -> float:
    """The budget's refill interval: `min_interval`, or longer when the checkpoints
    themselves are long.

    A storm that spends the bucket gets one checkpoint per interval; each stops the PVM
    for about `last_pause`, so it stands still at most `last_pause / interval` of the
    time. Keeping that share at or below `max_pause_share` adapts the bound to the VM:
    a fixed interval shorter than a big guest's checkpoint would let a storm keep it
    paused for good, and one long enough for the biggest guest would make a small
    guest's back-to-back divergent requests wait for tokens (measured: 200 ms per
    request at a fixed 0.2 s, against 100 ms for QEMU's colo-compare, which has no bound
    at all: `colo_checkpoint_notify` in QEMU's migration/colo.c checkpoints on every
    miscompare).
    """
    return max(min_interval, last_pause / max_pause_share)


def checkpoint_wait(tat: float, now: float, interval: float, burst: float) -> float:
    """Seconds before the budget allows a checkpoint; 0.0: now."""
    return max(0.0, tat - (burst - 1) * interval - now)


def checkpoint_spend(tat: float, now: float, interval: float) -> float:
    """The budget's `tat` once a checkpoint starts at `now`."""
    return max(tat, now) + interval


def decide(s: Snapshot, min_interval: float, max_interval: float,
           burst: float = 1.0, max_pause_share: float = 1.0) -> Decision:
    """The one thing to do now, and why.

    `min_interval`, `burst` and `max_pause_share` are the checkpoint budget's
    (`checkpoint_wait`, `refill_interval`): the sustained rate is one checkpoint per
    interval, `burst` of them may run back to back. The defaults, 1 and 1.0, keep the
    plain minimum interval between checkpoint starts.
    """
    st = s.state
    # 1. Finished actions move the state on first: they are facts, not wishes.
    if s.finished is not None:
        d = _on_finished(s)
        if d is not None:
            return d
    # 2. Only the lease holder releases output: checked even while an action runs, because
    #    the fence must not wait behind a checkpoint or a take-over.
    if _must_hold(s):
        return Decision(f"{_lease_why(s)}: holding output (fail closed)", Event.LEASE_LOST,
                        role="primary", fence=True)
    if (st is State.STOPPED and s.role == "primary" and s.vm.reachable and not s.fenced
            and s.lease_known and not lease_ok(s)):
        # S1 for a VM that still runs in STOPPED: one being stopped (`coloctl stop`, its
        # StopVM still running) releases output until it is gone, and one not adopted yet
        # serves as before. The pair model found the first: a primary on the failsafe,
        # stopped as its link was cut, served beside the secondary that took over.
        return Decision(f"{_lease_why(s)}: holding the output of our VM, still running "
                        "(fail closed)", fence=True)
    if s.fenced and st in SERVING_STATES and (s.role == "primary" or st is State.FAILING_OVER):
        # Only HOLDING's rules (the peer serves, our copy is stale, the lease, S6) lift a
        # fence: a restarted orchestrator adopted PROTECTED and unfenced at the proxy's
        # first hello while its peer served alone (found by the pair model).
        return Decision("our output is fenced: holding it until we may serve",
                        Event.LEASE_LOST, role="primary", fence=True)
    if s.busy:
        if st is State.CHECKPOINTING and _peer_gone(s):
            # Measured in the lab: the control link cut just before a periodic checkpoint
            # left the primary in CHECKPOINTING for more than 11 s, its COLO stream blocked
            # on the dead link. The failed checkpoint then goes alone (_on_finished).
            return Decision(f"{_peer_why(s)} during the checkpoint: abandoning it",
                            abort_checkpoint=True)
        return Decision(f"waiting: an action is running ({st.name})")

    # 3. Operator stop wins over everything else.
    if s.operator == "stop":
        if Event.STOP not in TRANSITIONS[st]:
            # STOPPED has no STOP: firing it raised in the loop (found by the pair model,
            # tests/unit/orch/core/test_decide_model.py). A VM we have not adopted yet is
            # still stopped, as asked.
            return Decision(f"stop requested: already {st.name}",
                            action=StopVM() if s.vm.reachable else None, consumed_operator=True)
        return Decision("stopping on operator request", Event.STOP, StopVM(),
                        consumed_operator=True)

    # 4. Our VM vanished while we were part of the pair: fence ourselves, let the peer go on.
    # DEGRADED too: found by a fault campaign (`colo-lab chaos`, seed 1, its third fault),
    # the PVM's QEMU killed during a checkpoint made the checkpoint fail (DEGRADED), and
    # the primary, alive and renewing its lease, stayed DEGRADED with no VM while the
    # secondary, told by its heartbeats that the VM was lost, could not get the lease:
    # nobody served, for good.
    if st in RUNNING_STATES or st in (State.STARTING, State.DEGRADED):
        if not s.vm.reachable and not s.vm.hung:
            return Decision(
                f"our VM is gone (monitor unreachable) in {st.name}: fencing and releasing "
                "the arbiter lease so the peer can take over",
                Event.VM_LOST, ReleaseLease(),
            )
        if s.vm.hung and st not in (State.DEGRADED, State.HOLDING):
            return Decision(
                "our VM's monitor does not answer within qmp_timeout: degraded",
                Event.ERROR, degraded_reason="QEMU monitor hung",
            )

    handler = _HANDLERS.get(st)
    if handler is None:
        return Decision(f"nothing to do in {st.name}")
    interval = refill_interval(min_interval, s.last_checkpoint_pause, max_pause_share)
    d = handler(s, interval, max_interval, burst)
    if isinstance(d.action, Checkpoint):
        return replace(d, checkpoint_tat=checkpoint_spend(s.checkpoint_tat, s.now, interval))
    return d


# Peer states in which a secondary follows us: it may receive our checkpoints and never
# serves; FAILING_OVER is missing on purpose (a secondary there is taking over).
_FOLLOWING = frozenset({State.STOPPED, State.STARTING, State.WAITING, State.PROTECTED,
                        State.FENCED})


def follows_us(p: PeerObs) -> bool:
    """The peer is our secondary and still hears us: it will not take over before our
    failsafe ends (docs/ORCHESTRATOR.md, F2)."""
    return p.alive and p.hears_us and p.role == "secondary" and p.state in _FOLLOWING


def failsafe(s: Snapshot) -> bool:
    """Patroni's failsafe mode: the store does not answer, but the secondary confirms that
    it follows us, so serving on cannot split the brain. Never when the store answers and
    says the lease is not ours (a key deleted or taken by hand)."""
    return not s.lease_reachable and follows_us(s.peer)


def lease_ok(s: Snapshot) -> bool:
    return s.lease_held or failsafe(s)


def _must_hold(s: Snapshot) -> bool:
    st = s.state
    return (s.lease_known and st in SERVING_STATES
            and (s.role == "primary" or st is State.FAILING_OVER) and not lease_ok(s))


def _lease_why(s: Snapshot) -> str:
    if not s.lease_known:
        return "the arbiter has not answered yet"
    if s.lease_error:
        return f"no arbiter lease ({s.lease_error})"
    if not s.lease_reachable:
        return "the arbiter does not answer and the secondary does not confirm it follows us"
    return "we do not hold the arbiter lease"


def _go_alone(s: Snapshot, sentence: str, consumed_operator: bool = False) -> Decision:
    """Leave COLO and serve alone (S1: only with the lease; without it the general rule has
    fenced us already, or the arbiter has not answered yet and we wait for it)."""
    if not s.lease_held:
        return Decision(f"{sentence}, but {_lease_why(s)}: waiting for the lease")
    if s.role == "primary" and not s.peer.alive and not s.lease_renewed_since_peer:
        # S5: a silent peer may be cut off from us only, or we from everything. Output
        # released alone now, uncompared, would be lost if the secondary took over from
        # its last checkpoint once our lease expired; so only after the store has renewed
        # our lease since the peer was last heard. Until then the proxy holds output.
        return Decision(f"{sentence}, but the arbiter has not renewed our lease since the "
                        "peer was last heard: waiting for a renewal before serving alone")
    if not s.alone_recorded:
        # S6: the store must say that the other copy is stale before we release anything
        # it does not have; were we cut off from the store afterwards, that host would
        # then refuse the lease. A secondary taking over records it too: its old primary,
        # cut off and holding output, must not serve again once our lease lapses.
        # Unreachable store: never recorded, and S1 fences.
        return Decision(f"{sentence}, but recording in the arbiter that we serve alone first",
                        record_alone=True)
    # A secondary's proxy may still be fenced from its host's last time as primary (a
    # fence held through STARTING, WAITING and PROTECTED, where the SVM's output never
    # reaches the LAN anyway). Seen in `colo-lab chaos` (seed 1, fault 31 of both
    # 100-fault runs; seed 10 --kinds stop-qemu, fault 2): the proxy refused the
    # take-over's `failover` (illegal in FENCED), so no handover of the connections'
    # offsets was written for the role swap, and the take-over went ALONE, HOLDING and
    # ALONE again to lift the fence. Lifted here, with
    # the checks HOLDING makes (the lease, `alone` recorded; a stale copy fenced its VM
    # in _protected), before the take-over's failover.
    lift = False if s.role == "secondary" and s.fenced else None
    return Decision(sentence, Event.PEER_LOST, TakeOver(s.role),
                    consumed_operator=consumed_operator, fence=lift)


def _peer_serves(p: PeerObs) -> bool:
    """The peer is (or is becoming) the primary that serves clients."""
    return p.alive and (p.state in (State.FAILING_OVER, State.ALONE) or (
        p.role == "primary" and p.state in SERVING_STATES))


def wants_lease(state: State, role: str, s: Snapshot) -> bool:
    """Whether this host should hold (acquire and renew) the arbiter lease now.

    A primary wants it in every state where its VM may serve, and before it starts one; a
    secondary only once its primary is lost (it must hold the lease before it takes over).
    The runner passes the state after this cycle's decision.
    """
    if state is State.FAILING_OVER:
        return True
    if s.vm.hung:
        # A VM whose monitor does not answer cannot be relied on, nor fenced cleanly: let
        # the lease go, so that we fence our output (S1) and the secondary can take over.
        return False
    if role == "primary":
        return state in SERVING_STATES or state in (State.HOLDING, State.STOPPED,
                                                    State.STARTING)
    return state is State.PROTECTED and _peer_gone(s)


def _on_finished(s: Snapshot) -> Decision | None:
    f = s.finished
    assert f is not None
    st = s.state
    if not f.ok:
        if st is State.CHECKPOINTING and _peer_gone(s):
            return _go_alone(s, f"checkpoint failed ({f.detail}) and the peer is lost: failing "
                             "over")
        if Event.ERROR in TRANSITIONS[st]:
            return Decision(f"{f.name} failed: {f.detail}", Event.ERROR,
                            degraded_reason=f"{f.name} failed: {f.detail}")
        return Decision(f"{f.name} failed in {st.name}: {f.detail}")
    if f.name == "checkpoint" and st is State.CHECKPOINTING:
        # A switchover's final checkpoint: the hand-over is decided at once, not a loop
        # cycle later (50 ms in a trace, while the PVM ran on and its output was held only
        # to be dropped at the fence).
        return Decision(f"checkpoint done ({f.detail})", Event.CHECKPOINT_DONE,
                        retry_in=0.0 if s.operator == "switchover" else None)
    if f.name == "take_over" and st is State.FAILING_OVER:
        return Decision(f"took over: now serving alone as primary ({f.detail})",
                        Event.TOOK_OVER, role="primary")
    if f.name == "start_vm" and st is State.STARTING:
        return Decision(f"VM started ({f.detail})", Event.VM_RUNNING)
    return None


# query-migrate states of a migration under way (QEMU's MigrationStatus).
_MIGRATING = frozenset({"setup", "active", "device", "pre-switchover"})


def _stray_migration(s: Snapshot) -> Decision | None:
    """A primary outside SYNCING whose VM still migrates: cancel it and wait for its end.

    Found by `colo-lab chaos` (seed 13, fault 6, docs/RELIABILITY.md): the PVM's QEMU
    stopped (SIGSTOP) while SYNCING; the primary let the lease go and went HOLDING with
    the migration still registered in QEMU. At SIGCONT it regained the lease, served
    alone, re-protected, and its new `migrate` failed with "duplicate yank instance";
    QEMU then closed its monitor and both hosts ended FENCED. Only the action that
    started a migration owns it; any other state cancels it (`migrate_cancel`) and starts
    none until query-migrate shows it ended ("cancelling" is still under way).
    """
    m = s.vm.migration
    if s.role != "primary" or not s.vm.reachable or s.vm.hung:
        return None
    if m == "cancelling":
        return Decision("waiting for the cancelled migration to end (cancelling)")
    if m in _MIGRATING:
        return Decision(f"our VM still runs a migration that no action owns ({m}): cancelling "
                        "it before anything else", action=CancelMigration())
    return None


def adopted_role(vm: VmObs, configured: str) -> str:
    """The role in which a restarted orchestrator adopts the VM it finds: the VM's word
    wherever it says one, else the config's. Failovers and re-protections swap the roles,
    so the config only says where each host began.

    In COLO, the COLO mode; in its initial COLO sync, primary (only a primary migrates);
    `inmigrate`, secondary (it waits for a primary's migration); running outside COLO,
    primary: it is the serving copy, as no secondary's VM runs outside COLO. Found by
    `colo-lab chaos` (seed 1, 32 faults, fault 28): colo-orch killed on the host that
    served as primary, configured secondary, during a re-protection; adopted in the
    config's role it went WAITING as a secondary beside the other host's new SVM, and
    nobody served for the 124 s the campaign waited.
    """
    if vm.colo_mode in ("primary", "secondary"):
        return vm.colo_mode
    if vm.migration in _MIGRATING:
        return "primary"
    return {"inmigrate": "secondary", "running": "primary"}.get(vm.status, configured)


def serves_outside_colo(vm: VmObs) -> bool:
    """The VM runs on its own: not in COLO, not in a migration, not waiting for one."""
    return (vm.colo_mode not in ("primary", "secondary") and vm.migration not in _MIGRATING
            and vm.status == "running")


def _stopped(s: Snapshot, _mn: float, _mx: float, _b: float) -> Decision:
    mode = s.vm.colo_mode
    seen = s.vm.reachable and not s.vm.hung
    role = adopted_role(s.vm, s.role) if seen else s.role
    why = "" if role == s.role else f" (the config says {s.role}; the VM wins)"
    if seen and mode in ("primary", "secondary"):
        # A restarted orchestrator: COLO runs, so the pair is protected now. Going through
        # WAITING would have paused the primary's proxy (output uncompared) and left the
        # pair unprotected until an operator noticed.
        return Decision(f"adopting our VM, in COLO as {mode}{why}", Event.ADOPT, role=mode)
    if seen and s.vm.migration in _MIGRATING:
        # A restarted primary during the initial sync: QEMU carries on with the migration
        # that our previous run started. Starting COLO again would fail ("already in
        # progress") and leave us DEGRADED with COLO running underneath.
        return Decision(f"adopting our VM in its initial COLO sync ({s.vm.migration}){why}",
                        Event.SYNC, role="primary")
    if s.vm.reachable:
        # Xen: a domain our previous run created paused, still waiting for COLO.
        vm = "our VM, created paused and not run yet," if s.vm.never_ran else "the running VM"
        if role == "primary" and (s.role != "primary" or not s.alone_recorded):
            # S6, as on every other path to serving uncompared: a primary adopted outside
            # COLO serves from WAITING, but the store may still say "protected" (COLO left
            # on an error while our orchestrator was down), and a secondary following an
            # older copy could then take over. Hold its output from now: WAITING, fenced,
            # moves to HOLDING, whose rules record `alone` before they lift the fence (and
            # fence our VM for good if the peer serves or our copy is stale). Always so
            # when the roles were swapped: that copy's standing is HOLDING's to judge.
            return Decision(f"adopting {vm} as primary{why}, holding its output "
                            "until the arbiter records that we serve alone", Event.START,
                            role="primary", fence=True)
        return Decision(f"adopting {vm} as {role}{why}", Event.START,
                        role=None if role == s.role else role)
    if s.operator == "reprotect":
        return Decision("starting a new secondary VM on operator request", Event.REPROTECT,
                        StartVM(incoming=True), role="secondary", consumed_operator=True)
    if s.role == "primary" and _peer_serves(s.peer):
        # Our config says primary, but the peer took over while we were away: a second
        # primary would split the brain. Come back as its secondary.
        state = s.peer.state.name if s.peer.state else "?"
        return Decision(f"the peer serves as primary ({state}): starting our VM as its "
                        "new secondary", Event.REPROTECT, StartVM(incoming=True),
                        role="secondary")
    if s.role == "primary" and not s.lease_held:
        return Decision(f"not starting our VM as primary: {_lease_why(s)}; waiting for it")
    if s.role == "primary" and not s.alone_recorded:
        # S6: a primary starting its VM serves alone (WAITING passes output uncompared):
        # a secondary still following an earlier VM of ours must not take over from it
        # (the pair model's shrunk example: stop the primary, which starts again).
        return Decision("starting our VM as primary, but recording in the arbiter that we "
                        "serve alone first", record_alone=True)
    return Decision(f"starting our VM as {s.role}", Event.START,
                    StartVM(incoming=s.role == "secondary"))


def _starting(s: Snapshot, _mn: float, _mx: float, _b: float) -> Decision:
    if s.vm.reachable:
        return Decision(f"VM is up ({s.vm.status})", Event.VM_RUNNING)
    return Decision("waiting for our VM's monitor")


def _waiting(s: Snapshot, _mn: float, _mx: float, _b: float) -> Decision:
    if s.role == "secondary":
        if s.vm.colo_mode == "secondary":
            return Decision("the primary's COLO migration arrived: protected", Event.COLO_ENTERED)
        return Decision("waiting for the primary to start COLO")
    stray = _stray_migration(s)
    if stray is not None:
        return stray
    p = s.peer
    ready = (p.alive and p.role == "secondary" and p.state is State.WAITING
             and bool(p.incoming_uri) and p.proxy_ready)
    if s.vm.never_ran:
        return _waiting_paused(s, ready)
    if ready and s.vm.running:
        if s.colo_needs_fresh_primary:
            # Never `xl remus -c` a domain that has run: libxl fails it after the first
            # checkpoint, and its disk is no longer the secondary's copy.
            return Decision(f"secondary is ready, but {XEN_REPROTECT}: serving unprotected")
        return Decision(f"secondary is ready: starting COLO to {p.incoming_uri}", Event.SYNC,
                        EnterColo(p.incoming_uri))
    return Decision("serving; waiting for a secondary")


def _waiting_paused(s: Snapshot, ready: bool) -> Decision:
    """A primary created paused (Xen): COLO with a secondary that is ready, else, after
    paused_primary_wait, the service alone: a peer that does not come must not keep it
    down. libxl runs the domain from COLO's first checkpoint, so it stays dark during
    the initial sync too (104 s for 256 MiB on the nested lab, docs/xen.md)."""
    if ready:
        return Decision(f"secondary is ready: starting COLO to {s.peer.incoming_uri} "
                        "(our VM, created paused, runs from the first checkpoint)",
                        Event.SYNC, EnterColo(s.peer.incoming_uri))
    waited = s.now - s.state_since
    if waited < s.paused_primary_wait:
        return Decision(f"our VM was created paused and serves nobody yet: waiting "
                        f"{s.paused_primary_wait - waited:.0f} s more for a secondary "
                        "before it serves alone")
    why = (f"no secondary ready within {s.paused_primary_wait:g} s (paused_primary_wait): "
           "unpausing our VM to serve alone, unprotected, rather than keep the service down")
    if not s.alone_recorded:
        # S6, as on every other path to serving uncompared.
        return Decision(f"{why}, but recording in the arbiter that we serve alone first",
                        record_alone=True)
    if s.colo_needs_fresh_primary:
        why += f"; {XEN_COLO_TAKES}: once it has run, {XEN_RESTART}"
    return Decision(why, Event.SERVE_ALONE, Unpause())


def _syncing(s: Snapshot, _mn: float, _mx: float, _b: float) -> Decision:
    if s.vm.migration == "colo":
        return Decision("COLO state reached: protected", Event.COLO_ENTERED)
    if s.vm.migration in ("failed", "cancelled"):
        return Decision(f"COLO migration {s.vm.migration}", Event.ERROR,
                        degraded_reason=f"COLO migration {s.vm.migration}")
    if _peer_gone(s):
        return _go_alone(s, "peer lost during the initial sync: continuing alone")
    return Decision(f"initial sync in progress ({s.vm.migration})")


def peer_gone(s: Snapshot) -> bool:
    """The peer is lost: unheard, fenced, or its VM gone (whether a secondary may take
    over, and whether a pending operator command still applies)."""
    return _peer_gone(s)


def _peer_gone(s: Snapshot) -> bool:
    return not s.peer.alive or s.peer.state is State.FENCED or (
        s.peer.state is not None and not s.peer.vm_ok)


def _protected(s: Snapshot, min_interval: float, max_interval: float,
               burst: float) -> Decision:
    p = s.peer
    # Only ALONE: during a re-protection the new primary is in WAITING/SYNCING while we
    # become PROTECTED, and heartbeats may lag by an interval.
    if s.role == "secondary" and p.alive and p.role == "primary" and p.state is State.ALONE:
        # The primary went on without us (it lost us, e.g. a cut link): our VM is a stale
        # copy that must never take over. Fence it; re-protection starts a fresh one.
        return Decision(f"the primary serves without us ({p.state.name}): fencing our stale VM",
                        Event.VM_LOST, StopVM())
    if (s.role == "secondary" and p.alive and p.role == "primary" and p.state is State.WAITING
            and s.now - p.since >= PEER_LAG_S):
        # Found by `colo-lab chaos` (seed 13, fault 6): the PVM's QEMU stopped during a
        # re-protection's migration; its orchestrator lost the lease, regained it and left
        # COLO to serve alone, and then went on to wait for a new secondary, just as the
        # resumed migration completed into our VM. We said PROTECTED, the primary WAITING
        # for a secondary that waits, and both waited for good. A primary that stays in
        # WAITING is not in COLO with us: our VM is no copy it keeps; fence it, and the
        # re-protection starts a fresh one.
        return Decision(f"the primary has waited for a secondary for "
                        f"{s.now - p.since:.1f} s while we are protected: our VM is in no "
                        "COLO with it; fencing our VM", Event.VM_LOST, StopVM())
    if s.role == "secondary" and s.stale:
        return Decision("the arbiter says the primary served alone after our last checkpoint: "
                        "our copy is stale; fencing our VM", Event.VM_LOST, StopVM())
    if s.role == "secondary" and s.operator == "failover" and not _peer_gone(s):
        # F2: a primary cut off from the store serves on while we follow it; going for its
        # lapsed lease while we still do let both serve (the pair model's shrunk example:
        # the primary's etcd link cut, then `coloctl failover` on the secondary).
        return Decision("operator requested failover, but the primary is heard and may serve "
                        "on the failsafe: we take over only once it is lost (request the "
                        "failover on the primary)", consumed_operator=True)
    if _peer_gone(s) or s.operator == "failover":
        why = "operator requested failover" if s.operator == "failover" else _peer_why(s)
        if s.role == "secondary" and not s.lease_held:
            if s.lease_available:
                return Decision(f"{why}: acquiring the arbiter lease before taking over")
            return Decision(f"{why}, but {_lease_why(s)}: not taking over (split-brain guard)")
        return _go_alone(s, f"{why}: {'taking over' if s.role == 'secondary' else 'continuing alone'}",
                         consumed_operator=bool(s.operator))
    if s.role != "primary":
        return Decision("protected (secondary)")
    if s.vm.disk_error:
        # The secondary's disk stopped being a copy of ours: a failover now would lose
        # writes, so protection is over until a re-protection resyncs it.
        return _go_alone(s, f"disk replication broken ({s.vm.disk_error}): continuing alone")
    if s.operator == "switchover" and handover_blocker(s) is None:
        # Blocked, it waits here no longer than a cycle: the runner drops it (refusal).
        return _switchover(s)
    if s.operator == "pause":
        if not s.alone_recorded:
            # S6: paused output reaches clients uncompared and is in no checkpoint of the
            # secondary's; were we lost while paused, its takeover would lose it (the pair
            # model's shrunk example: pause, our VM dies, the secondary serves its stale copy).
            return Decision("pausing protection on operator request, but recording in the "
                            "arbiter that we serve alone first", record_alone=True)
        return Decision("pausing protection on operator request: output is released uncompared",
                        Event.PAUSE, Pause(), consumed_operator=True)
    since = s.now - s.last_checkpoint_at
    wait = checkpoint_wait(s.checkpoint_tat, s.now, min_interval, burst)
    if s.checkpoint_requests and wait == 0.0:
        reasons = tuple(sorted(set(s.checkpoint_requests)))
        return Decision(f"checkpoint for {', '.join(reasons)} "
                        f"({len(s.checkpoint_requests)} request(s) coalesced)",
                        Event.CHECKPOINT, Checkpoint(reasons), consumed_checkpoints=True)
    if since >= max_interval:
        return Decision(f"periodic checkpoint ({since:.1f} s since the last)", Event.CHECKPOINT,
                        Checkpoint((MAX_INTERVAL_REASON,)))
    if s.checkpoint_requests:
        return Decision(f"checkpoint request held by the rate limit for {wait:.3f} s "
                        f"(burst {burst:g} spent, one per {min_interval:g} s)", retry_in=wait)
    return Decision("protected")


def handover_blocker(s: Snapshot) -> str | None:
    """Why this protected primary could not hand over to its secondary now; None: it could.

    A switchover stops our VM and lets the secondary take over as on a failover, which
    it does only with the arbiter's lease (S1). So the secondary must be in COLO with
    us, its VM and proxy ready, and both of us must reach the store: a hand-over to a
    secondary that cannot take the lease would leave nobody serving.
    """
    p = s.peer
    if not follows_us(p) or p.state is not State.PROTECTED:
        state = p.state.name if p.state else "?"
        heard = ("not heard" if not p.alive else "heard" if p.hears_us
                 else "heard, but not hearing us")
        return f"the secondary does not follow us in COLO ({heard}, {p.role or '?'} in {state})"
    if not p.vm_ok or not p.proxy_ready:
        return "the secondary reports its VM or its proxy not ready"
    if not p.arbiter_ok:
        return "the secondary cannot reach the arbiter: it could not take the lease"
    if not s.lease_held or not s.lease_reachable:
        return f"{_lease_why(s)}: the lease could not pass to the secondary"
    if s.vm.disk_error:
        return f"disk replication is broken ({s.vm.disk_error}): the secondary's disk is stale"
    return None


def _switchover(s: Snapshot) -> Decision:
    """The primary's half of a switchover (commands.switchover_phase follows the rest).

    1. A final checkpoint: every output packet still held is released by it, and the
       secondary's memory, disk and TCP state become ours, so that nothing is left for its
       take-over to recreate by retransmission.
    2. The hand-over: fence our output and stop our VM (VM_LOST: FENCED). `_fenced` then
       releases the lease; the secondary sees us FENCED, takes the lease and takes over
       as on a failover (S1, S6 unchanged), and we re-join as its new secondary by the
       re-protection that follows every failover.
    """
    if s.last_checkpoint_at < s.operator_at:
        waited = s.now - s.operator_at
        if not s.peer.recording and waited < RECORD_WAIT:
            # What the SVM sends between the final checkpoint and its take-over goes to
            # our comparator, fenced by then: dropped, and the client waited for the
            # guest's retransmission (200 ms at least). The secondary's proxy records it
            # from the next checkpoint on, for the take-over to replay; so the final
            # checkpoint waits until it records (asked by our heartbeat), or RECORD_WAIT.
            return Decision(f"switchover: waiting for the secondary to record its VM's output "
                            f"({waited:.2f} of at most {RECORD_WAIT:g} s)",
                            retry_in=min(0.05, RECORD_WAIT - waited))
        return Decision("switchover: a final checkpoint before the hand-over", Event.CHECKPOINT,
                        Checkpoint(("switchover",)))
    return Decision("switchover: handing over to the secondary (our output held, our VM "
                    "stopped, the lease released next)", Event.VM_LOST, StopVM(), fence=True,
                    consumed_operator=True)


def _peer_why(s: Snapshot) -> str:
    if not s.peer.alive:
        return "peer heartbeat lost"
    return f"peer reports its VM lost ({s.peer.state.name if s.peer.state else '?'})"


def _checkpointing(s: Snapshot, _mn: float, _mx: float, _b: float) -> Decision:
    if not s.busy and _peer_gone(s):
        # The checkpoint failed with the peer lost, and _go_alone first had S6's record
        # written: the failed result was seen once, so go on from here (measured: without
        # this, the primary sat in CHECKPOINTING with "alone" recorded).
        return _go_alone(s, f"checkpoint failed and {_peer_why(s)}: failing over")
    return Decision("checkpoint in flight")


def _failing_over(s: Snapshot, _mn: float, _mx: float, _b: float) -> Decision:
    return Decision("failover in flight")


def _alone(s: Snapshot, _mn: float, _mx: float, _b: float) -> Decision:
    stray = _stray_migration(s)
    if stray is not None:
        return stray
    p = s.peer
    if (p.alive and p.role == "secondary" and p.state is State.WAITING and p.incoming_uri
            and p.proxy_ready):
        blocker = reprotect_blocker(s)
        if blocker is not None and s.auto_reprotect:
            # No event: WAITING would only refuse the same again (`_waiting`). An operator's
            # reprotect is refused by the API with the same words (commands.refusal).
            return Decision(f"a new secondary is waiting, but {blocker}: serving alone")
        if blocker is None and (s.auto_reprotect or s.operator == "reprotect"):
            return Decision("a new secondary is waiting: re-protecting", Event.REPROTECT,
                            consumed_operator=s.operator == "reprotect")
    if s.role == "primary" and s.vm.never_ran and s.vm.reachable and not s.vm.hung:
        # Our VM was created paused and is still: HOLDING regained the lease into ALONE
        # before it ran, or its Unpause was decided on a stale look. It serves only once
        # it runs (the backend's unpause leaves a running VM as it is).
        return Decision("serving alone, but our VM, created paused, has not run yet: "
                        "unpausing it", action=Unpause())
    return Decision("serving alone (unprotected)")


def reprotect_blocker(s: Snapshot) -> str | None:
    """Why this host, a primary serving alone, cannot be protected again now; None: it
    can, as far as its VM goes (the API refuses `reprotect` with this reason)."""
    if (s.role == "primary" and s.colo_needs_fresh_primary and s.vm.reachable
            and not s.vm.never_ran):
        return XEN_REPROTECT
    return None


def _paused(s: Snapshot, _mn: float, _mx: float, _b: float) -> Decision:
    if _peer_gone(s):
        return _go_alone(s, f"{_peer_why(s)} while paused: continuing alone")
    if s.operator == "resume":
        return Decision("resuming protection: a checkpoint resynchronises the secondary first",
                        Event.RESUME, Checkpoint(("resume",)), consumed_operator=True)
    return Decision("protection paused")


def _degraded(s: Snapshot, _mn: float, _mx: float, _b: float) -> Decision:
    p = s.peer
    if p.alive and p.role == "primary" and p.state in (State.FAILING_OVER, State.ALONE,
                                                       State.WAITING, State.SYNCING,
                                                       State.PROTECTED):
        # The peer has taken over while we were stuck: our VM must never run again
        # beside it (split brain), so fence it for good.
        return Decision(f"peer took over while we were degraded ({s.degraded_reason}): "
                        "fencing our VM", Event.VM_LOST, StopVM())
    stray = _stray_migration(s)
    if stray is not None:
        # An enter_colo that failed on a monitor timeout leaves its migration in QEMU.
        return stray
    if s.vm.reachable and not s.vm.hung and s.vm.never_ran and s.role == "primary":
        # Our VM, created paused, serves nobody: no backoff then, the take-over unpauses it.
        # Whether libxl would take it again after a failed `xl remus -c` is unverified.
        return _go_alone(s, f"'{s.degraded_reason}' with our VM created paused and not run: "
                         "serving alone rather than keep the service down")
    # "colo": QEMU's runstate for a VM that COLO stopped. A checkpoint that fails before the
    # PVM resumes (its secondary killed mid-transaction) leaves it so, and QEMU's COLO
    # thread, after COLO_EXIT with reason error, waits for a failover (x-colo-lost-heartbeat)
    # before it starts the VM again (migration/colo.c, colo_process_checkpoint). Found by
    # `colo-lab chaos` (seed 3, fault 82: kill-qemu of the SVM during a checkpoint): the
    # primary sat DEGRADED with its VM stopped for 124 s and no client was served.
    stopped_by_colo = s.vm.status == "colo" and not s.vm.running
    if (s.vm.reachable and not s.vm.hung and (s.vm.running or stopped_by_colo)
            and s.role == "primary"):
        wait = s.degraded_at + REPROTECT_BACKOFF - s.now
        if (s.degraded_reason.startswith("enter_colo failed") and wait > 0
                and not stopped_by_colo):
            # Stay visibly degraded, and do not hammer a broken secondary: retry later.
            return Decision(f"degraded: {s.degraded_reason}; re-protection retried in "
                            f"{wait:.0f} s")
        # Serving alone from here is a take-over like any other: measured in the lab, a
        # checkpoint that failed on a secondary VM killed mid-transaction (COLO_EXIT, reason
        # error) went DEGRADED, then straight to ALONE with the proxy still holding output for
        # comparison with a VM that no longer ran: the client timed out for good. The
        # take-over records `alone` first (S6), leaves COLO, and tells the proxy to pass.
        if stopped_by_colo:
            return _go_alone(s, f"'{s.degraded_reason}' left our VM stopped by COLO, "
                             "waiting for a failover: serving alone")
        return _go_alone(s, f"VM answers again after '{s.degraded_reason}': serving alone")
    return Decision(f"degraded: {s.degraded_reason}")


def _holding(s: Snapshot, _mn: float, _mx: float, _b: float) -> Decision:
    p = s.peer
    if _peer_serves(p):
        state = p.state.name if p.state else "?"
        return Decision(f"the peer serves ({state}) while we hold no lease: fencing our stale "
                        "VM", Event.VM_LOST, StopVM())
    if s.stale:
        # S6: our secondary took over while we were cut off, and may have lost the store
        # since; our VM is behind what clients were told, whoever holds the lease now.
        return Decision("the arbiter says the peer served alone after our last checkpoint: "
                        "our copy is stale; fencing our VM", Event.VM_LOST, StopVM())
    stray = _stray_migration(s)
    if stray is not None:
        # Output stays held meanwhile: the sentence says why we still hold it.
        return replace(stray, sentence=f"holding output; {stray.sentence}")
    if not lease_ok(s):
        return Decision(f"holding output: {_lease_why(s)}")
    how = "the arbiter lease is ours again" if s.lease_held else "failsafe: the secondary follows"
    in_colo = s.vm.colo_mode == "primary" or s.vm.migration == "colo"
    if in_colo and follows_us(p) and p.state is State.PROTECTED:
        return Decision(f"{how}: resuming protection (a checkpoint resynchronises the "
                        "secondary first)", Event.RESUME, Checkpoint(("resume",)), fence=False)
    if not s.alone_recorded:
        # S6, as on every other path to serving alone: the pair model found this one (a
        # restarted primary held output, then regained the lease and left COLO while the
        # sync key said "protected"). Under the failsafe the store cannot record it: hold.
        return Decision(f"{how}, but recording in the arbiter that we serve alone first",
                        record_alone=True)
    if in_colo:
        return Decision(f"{how}, without a secondary: leaving COLO to serve alone",
                        Event.PEER_LOST, TakeOver("primary"), fence=False)
    return Decision(f"{how}: serving alone", Event.LEASE_REGAINED, fence=False)


def _fenced(s: Snapshot, _mn: float, _mx: float, _b: float) -> Decision:
    p = s.peer
    if s.lease_held:
        return Decision("fenced: releasing the arbiter lease", action=ReleaseLease())
    # ALONE, or WAITING: a primary whose orchestrator restarted while it served alone
    # adopts its VM as WAITING, and waits for a secondary just the same.
    alone = p.alive and p.role == "primary" and p.state in (State.ALONE, State.WAITING)
    if s.operator == "reprotect" or (s.auto_reprotect and alone):
        return Decision("peer serves alone: starting a new secondary VM here", Event.REPROTECT,
                        StartVM(incoming=True), role="secondary",
                        consumed_operator=s.operator == "reprotect")
    return Decision("fenced: our VM is gone; the peer serves")


_HANDLERS = {
    State.STOPPED: _stopped,
    State.STARTING: _starting,
    State.WAITING: _waiting,
    State.SYNCING: _syncing,
    State.PROTECTED: _protected,
    State.CHECKPOINTING: _checkpointing,
    State.FAILING_OVER: _failing_over,
    State.ALONE: _alone,
    State.PAUSED: _paused,
    State.DEGRADED: _degraded,
    State.FENCED: _fenced,
    State.HOLDING: _holding,
}

