"""The orchestrator daemon's reconciliation loop: observe, decide, act, report.

Each cycle reads a snapshot, takes one decision (`colo_orch.core.decide`), fires
its event on the state machine, hands its action to the single-slot executor
and reports. The other parts of `Orchestrator` live beside this module:
`actions` (what each action does, on the action thread), `proxy_supervision`
(the local colo-proxy process and its mode) and `watchers` (the observer and
SVM-watch threads).

Threads: the loop (this module), the observer (QMP queries, so a slow monitor
never stalls the loop), the SVM watcher, the heartbeat sender and receiver, the
proxy link reader, the HTTP API, and one action executor (a single slot: at most
one hypervisor action at a time, and the loop never waits for it).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import Any

from prometheus_client import CollectorRegistry

from colo_orch.backends.base import Backend
from colo_orch.core.commands import CommandRefused, Ledger, refusal, switchover_phase
from colo_orch.core.config import Config
from colo_orch.core.decide import (
    ActionResult,
    Checkpoint,
    Decision,
    PeerObs,
    Snapshot,
    VmObs,
    decide,
    failsafe,
    follows_us,
    handover_blocker,
    peer_gone,
    reprotect_blocker,
    wants_lease,
)
from colo_orch.core.disks import DiskStatus
from colo_orch.core.permit import permit_seconds
from colo_orch.core.state import Machine, State
from colo_orch.daemon.actions import Actions
from colo_orch.daemon.arbiter import Arbiter
from colo_orch.daemon.heartbeat import Heartbeat
from colo_orch.daemon.metrics import OrchMetrics
from colo_orch.daemon.proxy_link import ProxyLink
from colo_orch.daemon.proxy_supervision import ProxyMode
from colo_orch.daemon.watchers import Watchers
from colo_proxy.service.metrics import identified

log = logging.getLogger("colo_orch")


class Orchestrator(Actions, Watchers):
    """One host's orchestrator: the loop here, the action, proxy and watcher parts mixed in.

    Public: `run`, `stop`, `cycle`, `snapshot`, `request`, `status` and the counters.
    """

    def __init__(self, cfg: Config, backend: Backend, arbiter: Arbiter,
                 heartbeat: Heartbeat, proxy: ProxyLink | None, host_id: str,
                 metrics: OrchMetrics | None = None) -> None:
        self.registry = CollectorRegistry()
        self.metrics = metrics or OrchMetrics(self.registry)
        self.metrics.identify(cfg.name, host_id)
        # What /metrics serves: every series labelled with the pair and this host, so that
        # a scrape configuration needs no relabelling (docs/metrics.md).
        self.exposed = identified(self.registry, cfg.name, host_id)
        self.cfg = cfg
        self.backend = backend
        self.arbiter = arbiter
        self.heartbeat = heartbeat
        self.proxy = proxy
        self.host_id = host_id
        self.machine = Machine()
        self.role = cfg.role
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="action")
        # The fence hooks, one at a time in the order decided (actions._set_fence).
        self._fence_hooks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fence-hook")
        self._future: Future[str] | None = None
        self._action_name = ""
        self._finished: ActionResult | None = None
        self._requests: list[str] = []
        self._operator = ""
        self._operator_at = 0.0
        # Why we could not hand over to the secondary, as of the last cycle (a switchover
        # applies only when None).
        self._hand_over: str | None = "the orchestrator has not looked at the pair yet"
        self._reprotect: str | None = None  # decide.reprotect_blocker, as of the last cycle
        # systemd's sd_notify (daemon.sd_notify.Notifier), set by the CLI: READY=1 once
        # the loop runs, STATUS= each transition, STOPPING=1.
        self.notify: Callable[[str], object] = lambda message: None
        self.commands = Ledger()  # accepted operator commands: pending, and their outcomes
        self._peer_gone = False  # as of the last cycle: whether a command applies
        self._vm = VmObs(reachable=False)
        self._vm_at = 0.0
        self._vm_began = 0.0  # when the observation in _vm began
        self._action_done_at = 0.0  # when the last action ended (actions._act)
        self._stop = threading.Event()
        # Set by whatever the loop must act on at once: a proxy's checkpoint request, an
        # operator command, a finished action. Waiting out loop_wait instead cost a
        # divergence up to 50 ms before its checkpoint (docs/BENCHMARKS.md).
        self._wake = threading.Event()
        self.checkpoint_tat = 0.0  # the checkpoint budget's state (core.decide)
        self._retry_in: float | None = None
        if proxy is not None:
            proxy.on_request = self._wake.set
        arbiter.on_change = self._wake.set
        heartbeat.on_state = self._on_peer_state
        self._recording: bool | None = None  # _record_output: None until asked
        # Timing marks of the oldest pending proxy request, and of the last checkpoint's
        # steps (colo_orch.core.timeline), for the log and the API.
        self._request_marks: dict[str, float] | None = None
        self.last_checkpoint_steps: dict[str, float] = {}
        self.last_checkpoint_marks: dict[str, float] = {}
        self._checkpoint_marks: dict[str, float] = {}
        self.last_checkpoint_at = time.monotonic()
        self.colo_entered = False
        self.degraded_reason = ""
        # The backend's disk replication status, read once per loop cycle.
        self.disk_status: tuple[DiskStatus | None, int] = (None, 0)
        self.degraded_at = 0.0
        self.state_since = time.monotonic()  # when machine.state was entered
        # The last decision's sentence, logged or not: why nothing happens is news too
        # (a Xen primary that has run refuses a waiting secondary without an event).
        self.last_decision = ""
        self.history: deque[tuple[float, str]] = deque(maxlen=200)
        # Counters for the API and metrics.
        self.checkpoints: Counter[str] = Counter()
        self.failovers = 0
        self.reprotections = 0
        self.last_takeover_s: float | None = None
        self.last_checkpoint_s: float | None = None
        self.last_checkpoint_pause_s = 0.0
        self._peer_lost_at: float | None = None
        self._proxy_lock = threading.Lock()
        self._proxy_proc: subprocess.Popen[bytes] | None = None
        self._proxy_role = ""
        self._proxy_mode = ProxyMode.UNKNOWN
        self._proxy_pid: int | None = None
        self._proxy_gen = 0
        self._proxy_start_gen = 0
        self._proxy_hello_pid: int | None = None
        self._proxy_restart_after = 0.0
        self._proxy_restarter: threading.Thread | None = None
        self._peer_proxy_pid: int | None = None
        self._listening_since = time.monotonic()  # when the heartbeat receiver started
        # The peer's last reported (state, role), and since when it has said so.
        self._peer_said: tuple[tuple[State | None, str], float] = ((None, ""), 0.0)
        self.protection_verified = False
        self.secondary_checkpoints = 0
        self._fenced = False
        self._fence_told = True  # nothing to tell a proxy before we first fence
        # When we sent the heartbeat that the peer's latest counted one echoes (F2).
        self._echo_sent_at: float | None = None

    # Inputs from other threads ---------------------------------------------
    def request(self, command: str) -> dict[str, Any]:
        """An operator command from the API (colo_orch.core.commands.COMMANDS): accepted
        as pending, or CommandRefused when it does not apply to this host now."""
        with self._lock:
            why = refusal(command, self.machine.state, self.role, self._peer_gone,
                          self._hand_over, self._reprotect)
            if why is None and self.commands.under_way() and command != "checkpoint":
                # A switchover under way ends as the pair says, not by a newer command.
                why = "a switchover is under way (GET /state shows its phase)"
            if why is not None:
                raise CommandRefused(why)
            entry = self.commands.accept(command, time.monotonic())
            if command == "checkpoint":
                self._requests.append("manual")
                self.metrics.checkpoint_requests.labels("manual").inc()
            else:
                self._operator = command
                self._operator_at = entry.accepted_at
        self._wake.set()
        return {"accepted": f"{command} requested", "id": entry.id}

    def _recheck_commands(self, snap: Snapshot, now: float) -> Snapshot:
        """Drop pending commands that stopped applying (the state moved on since they were
        accepted) before decide() sees them: a `pause` accepted by a protected primary must
        not fire after a failover and re-protection made it one again."""
        gone = peer_gone(snap)
        hand_over = handover_blocker(snap)
        reprotect = reprotect_blocker(snap)
        with self._lock:
            self._peer_gone = gone
            self._hand_over = hand_over
            self._reprotect = reprotect
            if self.commands.under_way():
                p = snap.peer
                outcome, phase = switchover_phase(snap.state, snap.role,
                                                  p.state if p.alive else None,
                                                  p.role if p.alive else "")
                for e in self.commands.follow(outcome, phase, now):
                    log.info("operator command %s (id %d) %s: %s", e.command, e.id,
                             e.outcome, e.detail)
            dropped = self.commands.recheck(snap.state, snap.role, gone, now, hand_over,
                                            reprotect)
            if not dropped:
                return snap
            for e in dropped:
                log.warning("dropped operator command %s (id %d): %s", e.command, e.id,
                            e.detail)
                if e.command == "checkpoint" and "manual" in self._requests:
                    self._requests.remove("manual")
                elif e.command == self._operator:
                    self._operator = ""
            return replace(snap, operator=self._operator,
                           checkpoint_requests=tuple(self._requests))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # The loop ------------------------------------------------------------------
    def run(self) -> None:
        observer = threading.Thread(target=self._observe_loop, name="observer", daemon=True)
        observer.start()
        if self.cfg.proxy_primary_command:
            self._executor.submit(self._start_proxy_at_boot, self._first_observation)
        threading.Thread(target=self._watch_secondary, name="svm-events", daemon=True).start()
        self._listening_since = time.monotonic()
        self.heartbeat.start()
        self.arbiter.start()
        if self.proxy is not None:
            self.proxy.start()
        self.notify(f"READY=1\nSTATUS={self.machine.state.name} ({self.role}): started")
        try:
            while not self._stop.is_set():
                self._wake.clear()  # before the cycle: what arrives during it wakes the next
                self.cycle()
                wait = self.cfg.timing.loop_wait
                if self._retry_in is not None:
                    wait = min(wait, self._retry_in)
                self._wake.wait(wait)
        finally:
            self.notify("STOPPING=1")
            self.heartbeat.stop()
            self.arbiter.stop()
            if self.proxy is not None:
                self.proxy.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._fence_hooks.shutdown(wait=False)
            self.backend.close()
            self._stop_proxy()

    def _first_observation(self) -> VmObs | None:
        with self._lock:
            return self._vm if self._vm_at else None

    def snapshot(self, now: float) -> Snapshot:
        t = self.cfg.timing
        rep = self.heartbeat.last()
        # The peer counts only while it echoes a heartbeat this run of ours sent within
        # heartbeat_timeout: a datagram of an earlier run of the peer (or of ours) proves
        # nothing about now, and a peer that no longer hears us may be taking over.
        if (rep is not None and now - rep.received_at <= t.heartbeat_timeout
                and rep.echo_sent_at is not None
                and now - rep.echo_sent_at <= t.heartbeat_timeout):
            p = rep.payload
            try:
                pstate: State | None = State(int(p.get("state", -1)))
            except ValueError:
                pstate = None
            peer = PeerObs(alive=True, state=pstate, role=str(p.get("role", "")),
                           vm_ok=bool(p.get("vm_ok")),
                           # Our config's, not the heartbeat's "incoming": nothing read from
                           # the wire chooses where the VM's memory goes.
                           incoming_uri=self.cfg.peer_incoming_uri,
                           proxy_ready=bool(p.get("proxy_ready", True)),
                           hears_us=now - rep.echo_sent_at <= t.heartbeat_timeout / 2,
                           arbiter_ok=bool(p.get("arbiter_ok", True)),
                           recording=bool(p.get("recording")))
            self._echo_sent_at = rep.echo_sent_at
            said = (peer.state, peer.role)
            if self._peer_said[0] != said:
                self._peer_said = (said, now)
            peer = replace(peer, since=self._peer_said[1])
        elif now - self._listening_since < t.heartbeat_timeout:
            # Not heard (or not echoing this run's heartbeats) yet, but not listened to for
            # heartbeat_timeout either: a restarted orchestrator that adopted a protected VM
            # took that for a lost peer and failed over on its first cycle (measured in the
            # lab, 2 restarts in 4). Alive with nothing known, not even that it hears us:
            # no rule acts on such a peer, and none declares it lost.
            peer = PeerObs(alive=True)
        else:
            peer = PeerObs(alive=False)
        if self.proxy is not None:
            for reason in self.proxy.take_requests():
                self.metrics.checkpoint_requests.labels(self.metrics.reason(reason)).inc()
                self._requests.append(reason)
            marks = self.proxy.take_marks()
            if marks is not None and self._request_marks is None:
                self._request_marks = marks
        lease = self.arbiter.view()
        with self._lock:
            busy = self._future is not None and not self._future.done()
            finished = self._collect_finished()
            return Snapshot(
                now=now, state=self.machine.state, role=self.role, vm=self._vm, peer=peer,
                # Held only while certain: past safe_until, etcd may already have let
                # the peer acquire.
                lease_held=lease.held and now < lease.safe_until,
                lease_available=lease.reachable and lease.holder is None,
                lease_reachable=lease.reachable, lease_known=lease.checked_at > 0.0,
                lease_error=lease.error,
                lease_renewed_since_peer=rep is None or lease.renewed_at > rep.received_at,
                alone_recorded=lease.alone_recorded, stale=lease.stale, fenced=self._fenced,
                busy=busy, finished=finished, checkpoint_requests=tuple(self._requests),
                last_checkpoint_at=self.last_checkpoint_at,
                checkpoint_tat=self.checkpoint_tat,
                last_checkpoint_pause=self.last_checkpoint_pause_s, operator=self._operator,
                operator_at=self._operator_at,
                auto_reprotect=self.cfg.auto_reprotect, degraded_reason=self.degraded_reason,
                degraded_at=self.degraded_at,
                # libxl's COLO (XenBackend._check_paused_for_colo)
                colo_needs_fresh_primary=self.cfg.backend == "xen",
                paused_primary_wait=t.paused_primary_wait, state_since=self.state_since,
            )

    def _record_output(self, snap: Snapshot) -> bool:
        """Secondary: whether our proxy records the SVM's output for a switchover that our
        primary's heartbeat announces; asked once per switchover."""
        rep = self.heartbeat.last()
        coming = (snap.peer.alive and rep is not None and bool(rep.payload.get("switchover"))
                  and self.role == "secondary" and self.machine.state is State.PROTECTED)
        if not coming:
            self._recording = None
            return False
        if self._recording is None:
            self._recording = self.proxy is not None and self.proxy.send({"type": "record"})
        return self._recording

    def _on_peer_state(self, payload: dict[str, Any]) -> None:
        """The heartbeat thread saw the peer's state change: a fence is acted on now."""
        if payload.get("state") == int(State.FENCED):
            self._wake.set()

    def _collect_finished(self) -> ActionResult | None:
        f = self._future
        if f is None or not f.done():
            return None
        self._future = None
        exc = f.exception()
        if exc is not None:
            return ActionResult(self._action_name, False, str(exc) or type(exc).__name__)
        return ActionResult(self._action_name, True, f.result())

    def _stale_look(self) -> bool:
        """An "unreachable" from a look begun before the last action ended may be from
        before that action started the VM: the nested Xen lab's secondary fenced itself
        0.3 s after starting its receiver ("our VM is gone"), on an `xl list` begun
        before. Decisions wait for a look that began after it."""
        with self._lock:
            return not self._vm.reachable and self._vm_began < self._action_done_at

    def cycle(self) -> Decision:
        now = time.monotonic()
        if not self._vm_at:
            # Decide nothing before the first look at the VM: "unreachable" is only
            # the initial value, and acting on it would start a second VM.
            return Decision("waiting for the first observation of our VM")
        if self._stale_look():
            return Decision("looking at our VM again: the last look began before the last "
                            "action ended")
        snap = self._recheck_commands(self.snapshot(now), now)
        t = self.cfg.timing
        d = decide(snap, t.checkpoint_min_interval, t.checkpoint_max_interval,
                   t.checkpoint_burst, t.checkpoint_max_pause_share)
        self._retry_in = d.retry_in
        if d.checkpoint_tat is not None:
            self.checkpoint_tat = d.checkpoint_tat
        before = self.machine.state
        if d.event is not None:
            self.machine.fire(d.event)
        if self.machine.state is not before:
            self.state_since = now
        self.last_decision = d.sentence
        with self._lock:
            if d.consumed_checkpoints:
                self._requests.clear()
            if isinstance(d.action, Checkpoint):
                self._checkpoint_marks = dict(self._request_marks or {}, decided=now)
                self._request_marks = None
            if d.consumed_operator or d.consumed_checkpoints:
                self.commands.decided(operator=d.consumed_operator,
                                      checkpoints=d.consumed_checkpoints,
                                      sentence=d.sentence, now=now)
            if d.consumed_operator:
                self._operator = ""
            elif snap.operator and snap.operator not in ("pause", "resume", "failover",
                                                          "reprotect", "switchover", "stop"):
                self._operator = ""
        if d.role is not None:
            self.role = d.role
        if d.degraded_reason:
            self.degraded_reason = d.degraded_reason
            self.degraded_at = now
        self._bookkeeping(before, snap, d, now)
        if d.fence is not None:
            self._set_fence(d.fence)
        if d.abort_checkpoint:
            self.backend.abort_checkpoint()
        if d.action is not None:
            self._act(d.action)
        # S6: "alone" before a primary serves alone (decide waits for it); "protected" once
        # the pair is protected again. Late "protected" only delays a take-over; so the
        # secondary's copy counts as current only while it follows us.
        protected = (self.role == "primary" and self.machine.state is State.PROTECTED
                     and follows_us(snap.peer) and snap.peer.state is State.PROTECTED)
        self.arbiter.want_sync("alone" if d.record_alone else
                               "protected" if protected else "")
        self.arbiter.want(wants_lease(self.machine.state, self.role, snap), now)
        self.heartbeat.set_payload({
            "state": int(self.machine.state), "role": self.role,
            "vm_ok": snap.vm.reachable and not snap.vm.hung,
            "incoming": self.cfg.incoming_uri,
            # A secondary is ready for COLO only once its proxy steers the SVM's output,
            # or, where the tap comes with the VM (Xen), once its proxy runs, waiting
            # for the tap that the COLO migration makes.
            "proxy_ready": self.proxy is None or self.proxy.connected or (
                self.backend.tap_comes_with_vm and self._proxy_awaits_tap()),
            # Whether we could take the lease, were our primary to hand over to us.
            "arbiter_ok": snap.lease_reachable,
            # What our proxy said or was last told: the peer's protection_verified.
            "proxy_role": (view := self.proxy_view())["role"], "proxy_mode": view["mode"],
            "proxy_pid": view["pid"],
            # For the peer's `coloctl status` table only (decide() reads none of these).
            # An age, not a time: the hosts share no clock.
            "host": self.host_id,
            "checkpoint_age_s": (round(now - self.last_checkpoint_at, 1)
                                 if self._synced() else None),
            "disk": self.disk_status[0].state if self.disk_status[0] is not None else "",
            # A switchover is coming: the secondary's proxy records its SVM's output.
            "switchover": (snap.operator == "switchover" and self.role == "primary"
                           and self.machine.state in (State.PROTECTED, State.CHECKPOINTING)),
            "recording": self._record_output(snap),
        })
        # A peer that fenced has stopped serving, and its peer takes over only once it hears
        # of it: a switchover's hand-over waited up to a heartbeat interval (87 ms in a
        # trace) plus a loop cycle, all of it a pause the client sees. Only this news goes
        # out at once (every state change did in f1fd156, and take-overs then raced the
        # system tests' polls for ALONE).
        self.heartbeat.beat(now, urgent=self.machine.state is State.FENCED
                            and before is not State.FENCED)
        self._tell_fence()
        self._renew_permit(snap)
        self._sync_proxy_mode()
        self._supervise_proxy()
        peer_rep = self.heartbeat.last()
        peer_payload = peer_rep.payload if peer_rep is not None and snap.peer.alive else None
        self._note_peer_proxy(peer_payload)
        self.protection_verified = self._protection_verified(peer_payload)
        m = self.metrics
        m.state.state(self.machine.state.name)
        m.state_code.set(int(self.machine.state))
        m.role.state(self.role)
        m.peer_up.set(1 if snap.peer.alive else 0)
        m.lease_held.set(1 if snap.lease_held else 0)
        rep = self.heartbeat.last()
        if rep is not None and rep.rtt is not None:
            m.heartbeat_rtt.set(rep.rtt)
        if self.proxy is not None:
            m.proxy_up.set(1 if self.proxy.connected else 0)
        m.protection_verified.set(1 if self.protection_verified else 0)
        hb = self.heartbeat
        m.observe_heartbeats(hb.received, hb.rejected, hb.replayed)
        self.disk_status = self.backend.disk_status()
        m.observe_disks(*self.disk_status)
        m.observe_progress(self.backend.progress())
        if d.event is not None or d.action is not None:
            self.history.append((time.time(), d.sentence))
            log.info("%s -> %s: %s", before.name, self.machine.state.name, d.sentence)
            self.notify(f"STATUS={self.machine.state.name} ({self.role}): {d.sentence}")
        return d

    def _renew_permit(self, snap: Snapshot) -> None:
        """Our proxy's release permit, every cycle: until our right to serve ends, 0 s when
        we have none (colo_orch.core.permit). Nothing before the arbiter has answered: a
        restarted orchestrator does not know yet, and the permit its predecessor gave
        runs out by itself."""
        link = self.proxy
        if link is None or not snap.lease_known:
            return
        token = link.permit_token  # before the clock is read: the proxy counts from it
        if token is None:
            return  # not connected, or a proxy that takes no permits
        lease = self.arbiter.view()
        now = time.monotonic()
        link.permit(permit_seconds(
            now, fenced=self._fenced, lease_held=lease.held and now < lease.safe_until,
            safe_until=lease.safe_until, failsafe=failsafe(snap),
            echo_sent_at=self._echo_sent_at,
            heartbeat_timeout=self.cfg.timing.heartbeat_timeout), token)

    def _bookkeeping(self, before: State, snap: Snapshot, d: Decision, now: float) -> None:
        after = self.machine.state
        if not snap.peer.alive and self._peer_lost_at is None:
            self._peer_lost_at = now
        if snap.peer.alive:
            self._peer_lost_at = None
        if before is State.CHECKPOINTING and after is State.PROTECTED:
            self.last_checkpoint_at = now
        if before is State.FAILING_OVER and after is State.ALONE:
            self.failovers += 1
            self.metrics.failovers.inc()
            if self.last_takeover_s is not None:
                self.metrics.takeover_hist.observe(self.last_takeover_s)
        if before is State.ALONE and after is State.WAITING:
            self.reprotections += 1
            self.metrics.reprotections.inc()
        # A checkpoint runs on the action thread while this loop keeps cycling: a cycle
        # that ends still CHECKPOINTING is one in progress, not a failure. It failed when
        # CHECKPOINTING ends anywhere but PROTECTED (the action raised: ERROR; or the
        # peer, the VM or the lease was lost under it); an operator's stop is not one.
        if before is State.CHECKPOINTING and after not in (
                State.PROTECTED, State.CHECKPOINTING, State.STOPPED):
            self.metrics.checkpoint_failures.inc()

    # Reporting --------------------------------------------------------------------
    def _disk_view(self) -> dict[str, Any] | None:
        """The replicated disks: their state, and `degraded` while they are not replicated
        to a secondary: replication broke (a write reached only one side, or the link to
        the secondary's disk is cut; `problem` says which) or the primary runs alone."""
        st, count = self.disk_status
        if st is None:
            return None
        return {"count": count, "degraded": st.state in ("broken", "alone"), **asdict(st)}

    def _commands_view(self) -> dict[str, object]:
        with self._lock:
            return self.commands.view(time.monotonic())

    def _synced(self) -> bool:
        """Whether last_checkpoint_at is a sync: a checkpoint, or our COLO entry."""
        return bool(self.checkpoints) or self.colo_entered

    def status(self) -> dict[str, Any]:
        with self._lock:
            vm = asdict(self._vm)
        rep = self.heartbeat.last()
        lease = self.arbiter.view()
        return {
            "name": self.cfg.name,
            "host": self.host_id,
            "state": self.machine.state.name,
            "state_code": int(self.machine.state),
            "role": self.role,
            "vm": vm,
            "peer": rep.payload if rep else None,
            "peer_seen_s_ago": round(time.monotonic() - rep.received_at, 3) if rep else None,
            "heartbeats": {"sent": self.heartbeat.sent, "received": self.heartbeat.received,
                           "rejected": self.heartbeat.rejected,
                           "replayed": self.heartbeat.replayed},
            "lease_holder": lease.holder,
            "lease_reachable": lease.reachable,
            "lease_error": lease.error,
            "checkpoints": dict(self.checkpoints),
            "failovers": self.failovers,
            "reprotections": self.reprotections,
            "last_takeover_s": self.last_takeover_s,
            "last_checkpoint_s": self.last_checkpoint_s,
            "last_checkpoint_steps_ms": dict(self.last_checkpoint_steps),
            # CLOCK_MONOTONIC seconds, to join the steps with packet captures of this host.
            "last_checkpoint_marks": dict(self.last_checkpoint_marks),
            "last_checkpoint_age_s": (round(time.monotonic() - self.last_checkpoint_at, 3)
                                      if self._synced() else None),
            "degraded_reason": self.degraded_reason,
            "disk": self._disk_view(),
            "fenced": self._fenced,
            "proxy_connected": self.proxy.connected if self.proxy else None,
            "proxy": self.proxy_view() if self.proxy else None,
            "protection_verified": self.protection_verified,
            "recent": [s for _, s in list(self.history)[-10:]],
            "decision": self.last_decision,
            "commands": self._commands_view(),
            # The resync or first memory copy of an enter_colo under way, else None.
            "sync": (p.view() | {"text": p.describe()}
                     if (p := self.backend.progress()) is not None else None),
        }
