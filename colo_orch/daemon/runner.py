"""The orchestrator daemon: observe, decide, act, report, in a loop.

Threads: the loop (this module), the observer (QMP queries, so a slow monitor
never stalls the loop), the heartbeat sender and receiver, the proxy link
reader, the HTTP API, and one action executor (a single slot: at most one
hypervisor action at a time, and the loop never waits for it).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from prometheus_client import CollectorRegistry

from colo_orch.backends.base import Backend
from colo_orch.core.config import Config
from colo_orch.core.decide import (
    Action,
    ActionResult,
    Checkpoint,
    Decision,
    EnterColo,
    Pause,
    PeerObs,
    ReleaseLease,
    Snapshot,
    StartVM,
    StopVM,
    TakeOver,
    VmObs,
    decide,
)
from colo_orch.core.state import RUNNING_STATES, Machine, State
from colo_orch.daemon.arbiter import Arbiter
from colo_orch.daemon.heartbeat import Heartbeat
from colo_orch.daemon.metrics import OrchMetrics
from colo_orch.daemon.proxy_link import ProxyLink

log = logging.getLogger("colo_orch")


class Orchestrator:
    def __init__(self, cfg: Config, backend: Backend, arbiter: Arbiter,
                 heartbeat: Heartbeat, proxy: ProxyLink | None, host_id: str,
                 metrics: OrchMetrics | None = None) -> None:
        self.registry = CollectorRegistry()
        self.metrics = metrics or OrchMetrics(self.registry)
        self.metrics.identify(cfg.name, host_id)
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
        self._future: Future[str] | None = None
        self._action_name = ""
        self._finished: ActionResult | None = None
        self._requests: list[str] = []
        self._operator = ""
        self._vm = VmObs(reachable=False)
        self._vm_at = 0.0
        self._stop = threading.Event()
        self.last_checkpoint_at = time.monotonic()
        self.degraded_reason = ""
        self.degraded_at = 0.0
        self.history: deque[tuple[float, str]] = deque(maxlen=200)
        # Counters for the API and metrics.
        self.checkpoints: Counter[str] = Counter()
        self.failovers = 0
        self.reprotections = 0
        self.last_takeover_s: float | None = None
        self.last_checkpoint_s: float | None = None
        self._peer_lost_at: float | None = None
        self._proxy_lock = threading.Lock()
        self._proxy_proc: subprocess.Popen[bytes] | None = None
        self._proxy_role = ""
        self._proxy_mode = ""  # "pass" once told to pause; "" = unknown or comparing
        self.secondary_checkpoints = 0

    # The local proxy process (when the orchestrator runs it) -------------------
    def _ensure_proxy(self, role: str) -> str:
        """Run colo-proxy in `role`; restart it if it runs in the other role."""
        argv = (self.cfg.proxy_primary_command if role == "primary"
                else self.cfg.proxy_secondary_command)
        if not argv:
            return ""
        with self._proxy_lock:
            proc = self._proxy_proc
            if proc is not None and proc.poll() is None and self._proxy_role == role:
                return ""
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            self._proxy_proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
            self._proxy_role = role
            self._proxy_mode = ""
        # The proxy must hold output before the pair is protected: wait for its socket.
        deadline = time.monotonic() + 20
        while self.proxy is not None and time.monotonic() < deadline:
            if self.proxy.connected and self.proxy.send({"type": "status"}):
                return f"; proxy started as {role}"
            if self._proxy_proc.poll() is not None:
                raise RuntimeError(f"colo-proxy ({role}) exited with {self._proxy_proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError(f"colo-proxy ({role}) did not answer on {self.cfg.proxy_socket}")

    def _sync_proxy_mode(self) -> None:
        """A primary's proxy compares only while the pair is protected; otherwise there is
        no SVM output to wait for, and held output would never be released."""
        if self.proxy is None or self.role != "primary" or not self.proxy.connected:
            return
        # Only in states where no action owns the proxy: during SYNCING the action thread
        # switches it to comparing (resume) the moment COLO starts, before this loop sees
        # the state change; a pause sent then would let output pass uncompared.
        if self.machine.state not in (State.WAITING, State.ALONE, State.DEGRADED):
            return
        with self._lock:
            busy = self._future is not None and not self._future.done()
        if busy:
            return
        if self._proxy_mode != "pass" and self.proxy.send({"type": "pause"}):
            self._proxy_mode = "pass"

    def _start_proxy_at_boot(self) -> None:
        try:
            self._ensure_proxy(self.role)
        except Exception as exc:  # reported, and retried by the next start/enter action
            log.error("could not start colo-proxy: %s", exc)

    def _watch_secondary(self) -> None:
        """Secondary: tell our proxy each time the SVM resumed with a new checkpoint."""
        while not self._stop.is_set():
            if (self.role != "secondary" or self.machine.state is not State.PROTECTED
                    or self.proxy is None):
                self._stop.wait(self.cfg.timing.loop_wait)
                continue
            if self.backend.wait_resume(0.2) and self.role == "secondary":
                # Offsets reset now: the SVM runs the PVM's TCP state.
                self.proxy.send({"type": "checkpoint_done"})
                with self._lock:
                    self.secondary_checkpoints += 1

    # Inputs from other threads ---------------------------------------------
    def request(self, command: str) -> str:
        """An operator command from the API: checkpoint, pause, resume, failover, reprotect, stop."""
        with self._lock:
            if command == "checkpoint":
                self._requests.append("manual")
                self.metrics.checkpoint_requests.labels("manual").inc()
            else:
                self._operator = command
        return f"{command} requested"

    def stop(self) -> None:
        self._stop.set()

    # The loop ------------------------------------------------------------------
    def run(self) -> None:
        observer = threading.Thread(target=self._observe_loop, name="observer", daemon=True)
        observer.start()
        if self.cfg.proxy_primary_command:
            self._executor.submit(self._start_proxy_at_boot)
        threading.Thread(target=self._watch_secondary, name="svm-events", daemon=True).start()
        self.heartbeat.start()
        if self.proxy is not None:
            self.proxy.start()
        try:
            while not self._stop.is_set():
                self.cycle()
                self._stop.wait(self.cfg.timing.loop_wait)
        finally:
            self.heartbeat.stop()
            if self.proxy is not None:
                self.proxy.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.backend.close()
            if self._proxy_proc is not None and self._proxy_proc.poll() is None:
                self._proxy_proc.terminate()

    def _observe_loop(self) -> None:
        while not self._stop.is_set():
            obs = self.backend.observe()
            with self._lock:
                self._vm, self._vm_at = obs, time.monotonic()
            self._stop.wait(self.cfg.timing.loop_wait)

    def snapshot(self, now: float) -> Snapshot:
        t = self.cfg.timing
        rep = self.heartbeat.last()
        if rep is not None and now - rep.received_at <= t.heartbeat_timeout:
            p = rep.payload
            try:
                pstate: State | None = State(int(p.get("state", -1)))
            except ValueError:
                pstate = None
            peer = PeerObs(alive=True, state=pstate, role=str(p.get("role", "")),
                           vm_ok=bool(p.get("vm_ok")), incoming_uri=str(p.get("incoming", "")),
                           proxy_ready=bool(p.get("proxy_ready", True)))
        else:
            peer = PeerObs(alive=False)
        if self.proxy is not None:
            for reason in self.proxy.take_requests():
                self.metrics.checkpoint_requests.labels(self.metrics.reason(reason)).inc()
                self._requests.append(reason)
        holder = self.arbiter.holder()
        with self._lock:
            busy = self._future is not None and not self._future.done()
            finished = self._collect_finished()
            return Snapshot(
                now=now, state=self.machine.state, role=self.role, vm=self._vm, peer=peer,
                lease_held=holder == self.host_id, lease_available=holder is None,
                busy=busy, finished=finished, checkpoint_requests=tuple(self._requests),
                last_checkpoint_at=self.last_checkpoint_at, operator=self._operator,
                auto_reprotect=self.cfg.auto_reprotect, degraded_reason=self.degraded_reason,
                degraded_at=self.degraded_at,
            )

    def _collect_finished(self) -> ActionResult | None:
        f = self._future
        if f is None or not f.done():
            return None
        self._future = None
        exc = f.exception()
        if exc is not None:
            return ActionResult(self._action_name, False, str(exc) or type(exc).__name__)
        return ActionResult(self._action_name, True, f.result())

    def cycle(self) -> Decision:
        now = time.monotonic()
        if not self._vm_at:
            # Decide nothing before the first look at the VM: "unreachable" is only
            # the initial value, and acting on it would start a second VM.
            return Decision("waiting for the first observation of our VM")
        snap = self.snapshot(now)
        d = decide(snap, self.cfg.timing.checkpoint_min_interval,
                   self.cfg.timing.checkpoint_max_interval)
        before = self.machine.state
        if d.event is not None:
            self.machine.fire(d.event)
        with self._lock:
            if d.consumed_checkpoints:
                self._requests.clear()
            if d.consumed_operator:
                self._operator = ""
            elif snap.operator and snap.operator not in ("pause", "resume", "failover",
                                                          "reprotect", "stop"):
                self._operator = ""
        if d.role is not None:
            self.role = d.role
        if d.degraded_reason:
            self.degraded_reason = d.degraded_reason
            self.degraded_at = now
        self._bookkeeping(before, snap, d, now)
        if d.action is not None:
            self._act(d.action)
        self._renew_lease()
        self.heartbeat.set_payload({
            "state": int(self.machine.state), "role": self.role,
            "vm_ok": snap.vm.reachable and not snap.vm.hung,
            "incoming": self.cfg.incoming_uri,
            # A secondary is ready for COLO only once its proxy steers the SVM's output.
            "proxy_ready": self.proxy is None or self.proxy.connected,
        })
        self._sync_proxy_mode()
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
        m.observe_disks(*self.backend.disk_status())
        if d.event is not None or d.action is not None:
            self.history.append((time.time(), d.sentence))
            log.info("%s -> %s: %s", before.name, self.machine.state.name, d.sentence)
        return d

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
                self.metrics.takeover.set(self.last_takeover_s)
        if before is State.ALONE and after is State.WAITING:
            self.reprotections += 1
            self.metrics.reprotections.inc()
        if before is State.CHECKPOINTING and after is not State.PROTECTED:
            self.metrics.checkpoint_failures.inc()

    def _renew_lease(self) -> None:
        st = self.machine.state
        if self.role == "primary" and st in RUNNING_STATES and st is not State.FAILING_OVER:
            self.arbiter.acquire(self.host_id)

    # Actions --------------------------------------------------------------------
    def _act(self, action: Action) -> None:
        name, fn = self._action_fn(action)
        if fn is None:
            return
        self._action_name = name
        self._future = self._executor.submit(fn)

    def _action_fn(self, action: Action) -> tuple[str, Any]:
        b = self.backend
        if isinstance(action, StartVM):
            uri = self.cfg.incoming_uri if action.incoming else None
            return "start_vm", lambda: self._start_vm(uri)
        if isinstance(action, EnterColo):
            return "enter_colo", lambda: self._enter_colo(action.uri)
        if isinstance(action, Checkpoint):
            return "checkpoint", lambda: self._checkpoint(action.reasons)
        if isinstance(action, TakeOver):
            return "take_over", lambda: self._take_over(action.was_role)
        if isinstance(action, Pause):
            if self.proxy is not None:
                self.proxy.send({"type": "pause"})
            return "pause", None
        if isinstance(action, ReleaseLease):
            self.arbiter.release(self.host_id)
            return "release_lease", None
        if isinstance(action, StopVM):
            return "stop_vm", b.stop_vm
        raise RuntimeError(f"Unexpected command: {action}")

    def _hook(self, name: str, argv: list[str]) -> str:
        if not argv:
            return ""
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("%s hook %s failed: %s", name, argv, exc)
            return f"; {name} hook failed: {exc}"
        if proc.returncode != 0:
            log.warning("%s hook exited %d: %s", name, proc.returncode, proc.stderr[-200:])
            return f"; {name} hook exited {proc.returncode}"
        return f"; {name} hook ran"

    def _start_vm(self, uri: str | None) -> str:
        hooked = self._hook("on_secondary", self.cfg.on_secondary) if uri else ""
        proxied = self._ensure_proxy("secondary" if uri else "primary")
        return self.backend.start_vm(uri) + hooked + proxied

    def _enter_colo(self, uri: str) -> str:
        proxied = self._ensure_proxy("primary")
        self._proxy_mode = ""  # set to "compare" only by what happens in this action
        if self._tell_proxy_checkpoints():
            assert self.proxy is not None
            proxy = self.proxy

            def at_stop() -> None:
                # The PVM is stopped to start COLO: compare (and mirror) from here on;
                # what it sent before is covered by the state the SVM is receiving.
                proxy.send({"type": "resume"})
                proxy.send({"type": "checkpoint_barrier"})
                self._proxy_mode = "compare"

            self.backend.on_checkpoint_stop = at_stop
        out = self.backend.enter_colo(uri) + proxied
        self.last_checkpoint_at = time.monotonic()
        if self.proxy is not None and self._proxy_mode != "compare":
            self.proxy.send({"type": "resume"})
            self._proxy_mode = "compare"
        if self._tell_proxy_checkpoints():
            assert self.proxy is not None
            self.proxy.send({"type": "checkpoint_done"})
        return out

    def _tell_proxy_checkpoints(self) -> bool:
        return self.proxy is not None and not self.backend.notifies_proxy_of_checkpoints

    def _checkpoint(self, reasons: tuple[str, ...]) -> str:
        if self._tell_proxy_checkpoints():
            assert self.proxy is not None
            proxy = self.proxy
            proxy.send({"type": "checkpoint_started", "reasons": list(reasons)})
            self.backend.on_checkpoint_stop = lambda: proxy.send({"type": "checkpoint_barrier"})
        else:
            self.backend.on_checkpoint_stop = None
        start = time.monotonic()
        try:
            out = self.backend.checkpoint()
        except Exception:
            self.metrics.checkpoint_failures.inc()
            raise
        if self._tell_proxy_checkpoints():
            # Both VMs run the same state again: release held output at once (not at the
            # next loop cycle: output the PVM makes after RESUME must not join it).
            assert self.proxy is not None
            self.proxy.send({"type": "checkpoint_done"})
        self.last_checkpoint_s = time.monotonic() - start
        m = self.metrics
        m.checkpoint_duration.observe(self.last_checkpoint_s)
        pause = getattr(self.backend, "checkpoint_pause_s", None)
        if isinstance(pause, float) and pause > 0:
            m.pvm_pause.observe(pause)
        m.last_checkpoint.set(time.time())
        for r in reasons:
            self.checkpoints[r] += 1
            m.checkpoints.labels(m.reason(r)).inc()
        if "resume" in reasons and self.proxy is not None:
            self.proxy.send({"type": "resume"})
            self._proxy_mode = "compare"
        return f"{', '.join(reasons)}: {out}"

    def _take_over(self, was_role: str) -> str:
        start = time.monotonic()
        if was_role == "secondary" and not self.arbiter.acquire(self.host_id):
            raise RuntimeError("arbiter lease is held by the peer: refusing to take over")
        if self.proxy is not None:
            self.proxy.send({"type": "failover"})
        out = self.backend.take_over(was_role)
        out += self._hook("on_takeover", self.cfg.on_takeover)
        took = time.monotonic() - start
        if self._peer_lost_at is not None:
            took = time.monotonic() - self._peer_lost_at
        self.last_takeover_s = took
        return f"{out}; {took * 1000:.0f} ms after the peer was lost"

    # Reporting --------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            vm = asdict(self._vm)
        rep = self.heartbeat.last()
        return {
            "name": self.cfg.name,
            "host": self.host_id,
            "state": self.machine.state.name,
            "state_code": int(self.machine.state),
            "role": self.role,
            "vm": vm,
            "peer": rep.payload if rep else None,
            "peer_seen_s_ago": round(time.monotonic() - rep.received_at, 3) if rep else None,
            "lease_holder": self.arbiter.holder(),
            "checkpoints": dict(self.checkpoints),
            "failovers": self.failovers,
            "reprotections": self.reprotections,
            "last_takeover_s": self.last_takeover_s,
            "last_checkpoint_s": self.last_checkpoint_s,
            "degraded_reason": self.degraded_reason,
            "proxy_connected": self.proxy.connected if self.proxy else None,
            "recent": [s for _, s in list(self.history)[-10:]],
        }
