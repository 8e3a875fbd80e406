"""The orchestrator's actions: what each decided action does, on the action thread.

The loop hands one action at a time to a single-slot executor and never waits for
it; each body here returns the sentence that the loop logs when it finishes, or
raises, which the next decision reads as a failed action.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from colo_orch.backends.base import Backend
from colo_orch.core.decide import (
    Action,
    CancelMigration,
    Checkpoint,
    EnterColo,
    Pause,
    ReleaseLease,
    StartVM,
    StopVM,
    TakeOver,
    Unpause,
)
from colo_orch.core.timeline import checkpoint_steps
from colo_orch.daemon.arbiter import Arbiter
from colo_orch.daemon.metrics import OrchMetrics
from colo_orch.daemon.proxy_supervision import ProxyMode, ProxySupervision

log = logging.getLogger("colo_orch")


class Actions(ProxySupervision):
    """Orchestrator part: start the VM, enter COLO, checkpoint, take over, run hooks."""

    # Orchestrator.__init__ sets these; declared as what this part uses (beyond ProxySupervision's).
    backend: Backend
    arbiter: Arbiter
    host_id: str
    metrics: OrchMetrics
    checkpoints: Counter[str]
    last_checkpoint_at: float
    colo_entered: bool  # this VM's memory was last made the peer's by a COLO entry
    last_checkpoint_s: float | None
    last_checkpoint_pause_s: float
    last_takeover_s: float | None
    _executor: ThreadPoolExecutor
    _fence_hooks: ThreadPoolExecutor  # on_fence/on_unfence, in order (_set_fence)
    _wake: threading.Event  # wakes the loop before its next tick
    _checkpoint_marks: dict[str, float]  # set by the loop with each Checkpoint it decides
    last_checkpoint_steps: dict[str, float]
    last_checkpoint_marks: dict[str, float]
    _action_name: str
    _peer_lost_at: float | None
    _fenced: bool  # output must be held: we have neither the lease nor the failsafe
    _fence_told: bool  # the proxy acknowledged the current _fenced
    _stop: threading.Event  # set when the orchestrator stops
    _action_done_at: float  # when the last action ended (the loop's stale-look check)

    def _set_fence(self, on: bool) -> None:
        """Hold (or release) every output packet of our VM: from the loop, at once.

        The proxy is told first and again at each cycle until it acknowledges (it may be
        restarting); the hook runs off the loop, so a slow one never delays the loop's
        heartbeats, but on one worker, in the order decided: with a thread per hook, a
        fence and the unfence just after it (HOLDING, then ALONE, at a primary's start)
        could run in the other order and leave a primary serving with its uplink down."""
        self._fenced, self._fence_told = on, False
        self._tell_fence()
        name, argv = ("on_fence", self.cfg.on_fence) if on else ("on_unfence", self.cfg.on_unfence)
        if argv:
            self._fence_hooks.submit(self._hook, name, argv)
        log.warning("%s our VM's output", "fenced" if on else "unfenced")

    def _tell_fence(self) -> None:
        if self.proxy is None or self._fence_told or not self.proxy.connected:
            return
        if self.proxy.send({"type": "fence" if self._fenced else "unfence"}):
            self._fence_told = True

    def _act(self, action: Action) -> None:
        name, fn = self._action_fn(action)
        if fn is None:
            return
        self._action_name = name
        self._future = self._executor.submit(fn)
        # The loop moves on (CHECKPOINTING -> PROTECTED, the next request) once it sees
        # the action finished: wake it then rather than at its next tick.
        self._future.add_done_callback(self._action_done)

    def _action_done(self, _f: object) -> None:
        # No lock: this may run on the loop's own thread (an action done before
        # add_done_callback), and one float is written whole.
        self._action_done_at = time.monotonic()
        self._wake.set()

    def _action_fn(self, action: Action) -> tuple[str, Any]:
        b = self.backend
        if isinstance(action, StartVM):
            uri = self.cfg.incoming_uri if action.incoming else None
            return "start_vm", lambda: self._start_vm(uri)
        if isinstance(action, EnterColo):
            return "enter_colo", lambda: self._enter_colo(action.uri)
        if isinstance(action, Checkpoint):
            b.checkpoint_abort.clear()  # here, not in the action: an abort may come first
            marks = self._checkpoint_marks
            return "checkpoint", lambda: self._checkpoint(action.reasons, marks)
        if isinstance(action, TakeOver):
            return "take_over", lambda: self._take_over(action.was_role)
        if isinstance(action, Pause):
            if self.proxy is not None and self.proxy.send({"type": "pause"}):
                self._proxy_mode = ProxyMode.PASS
            return "pause", None
        if isinstance(action, ReleaseLease):
            return "release_lease", self._release_lease
        if isinstance(action, StopVM):
            return "stop_vm", b.stop_vm
        if isinstance(action, CancelMigration):
            return "cancel_migration", b.cancel_migration
        if isinstance(action, Unpause):
            return "unpause_vm", b.unpause_vm
        raise RuntimeError(f"Unexpected command: {action}")

    def _lease_timeout(self) -> float:
        # Long enough for a request to each of a few endpoints; the loop does not wait.
        return self.cfg.timing.lease_ttl / 2

    def _release_lease(self) -> str:
        self.arbiter.release()
        return "lease released"

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
        role = "secondary" if uri else "primary"
        if not self.backend.tap_comes_with_vm:
            proxied = self._ensure_proxy(role)
            return self.backend.start_vm(uri) + hooked + proxied
        # The tap appears with the VM (Xen), and the proxy answers once it has its tap.
        proxied = self._ensure_proxy(role, wait=False)
        started = self.backend.start_vm(uri)
        if not uri:
            # Created paused: nothing of it reaches a client before its proxy answers.
            proxied += self._await_proxy(role)
        return started + hooked + proxied

    def _enter_colo(self, uri: str) -> str:
        proxied = self._ensure_proxy("primary")
        self._proxy_mode = ProxyMode.UNKNOWN  # COMPARE only by what happens in this action
        if self.proxy is not None and not self._fenced and self.proxy.send({"type": "pause"}):
            # Until COLO's first STOP our VM serves alone, as in ALONE: its output passes.
            # A proxy started for this migration (a re-protection after the roles swapped)
            # starts holding, and nothing could ever match what it held: no SVM runs yet,
            # and the resume at the STOP gives it a fresh comparator. So the service was
            # dark for the whole migration, 0.8-0.9 s in the lab, the longest client pause
            # of a switchover (a capture on the new primary's tap: its retransmissions at
            # +225 and +452 ms went nowhere, the one after PROTECTED got through).
            self._proxy_mode = ProxyMode.PASS
        if self.proxy is not None and not self._fenced:
            # Passing output (just paused, or since a take-over) also stops the mirror,
            # and the resume that restarts it comes only once we have seen COLO's STOP:
            # client packets that reach the stopped PVM meanwhile are read when it runs
            # again, so the SVM must get them too. Without this a demo's request got no
            # SVM answer until the compare timeout (5 s), 1 run in 6 here.
            self.proxy.send({"type": "mirror"})
        warmup = self.cfg.timing.colo_warmup if self._proxy_mode is ProxyMode.PASS else 0.0
        if self._tell_proxy_checkpoints():
            assert self.proxy is not None
            proxy = self.proxy

            def at_stop() -> None:
                # The PVM is stopped to start COLO: compare (and mirror) from here on;
                # what it sent before is covered by the state the SVM is receiving.
                if proxy.send({"type": "resume"}):
                    self._proxy_mode = ProxyMode.COMPARE
                proxy.send({"type": "checkpoint_barrier"})

            self.backend.on_checkpoint_stop = None if warmup else at_stop
        else:
            warmup = 0.0
        out = self.backend.enter_colo(uri) + proxied
        if warmup:
            out += self._warm_up(warmup, at_stop)
        # The SVM is in step from here: `coloctl status` dates the pair's last sync from
        # it until the first checkpoint (a switchover's new primary showed "-").
        self.last_checkpoint_at = time.monotonic()
        self.colo_entered = True
        # Not sent: the loop resumes it (and checkpoints) while PROTECTED.
        if (self.proxy is not None and self._proxy_mode is not ProxyMode.COMPARE
                and self.proxy.send({"type": "resume"})):
            self._proxy_mode = ProxyMode.COMPARE
        if self._tell_proxy_checkpoints():
            assert self.proxy is not None
            self.proxy.send({"type": "checkpoint_done"})
        # The decision says only "COLO state reached"; how the entry went is here.
        log.info("COLO entry: %s", out.lstrip("; "))
        return out

    def _warm_up(self, seconds: float, at_stop: Callable[[], None]) -> str:
        """`timing.colo_warmup`: let the new SVM run before its output is compared.

        The SVM is a QEMU process that has never run this guest. Under TCG its first
        answers came 95-160 ms after the PVM's (later ones 0-28 ms: TCG translates the
        guest's code as it first runs it), and each was a wait for the client, held by the
        proxy until the SVM's copy came: the re-protection's COLO entry cost a switchover's
        client 0.32-0.58 s where a checkpoint cost 0.15-0.24 s (docs/ORCHESTRATOR.md).
        So the output passes, uncompared and mirrored to the SVM, as during the
        migration, for `seconds`; then a checkpoint gives the SVM the PVM's state again
        and comparing starts at its STOP. We stay SYNCING, "alone" in the arbiter, until
        then: the pair is protected from that checkpoint on, not from COLO's first STOP.
        """
        self._stop.wait(seconds)  # not a synchronisation: the SVM's time to warm up
        self.backend.on_checkpoint_triggered = None
        self.backend.on_checkpoint_stop = at_stop
        try:
            self.backend.checkpoint()
        finally:
            self.backend.on_checkpoint_stop = None
        return f"; compared after {seconds:g} s of warm-up and a checkpoint"

    def _tell_proxy_checkpoints(self) -> bool:
        return self.proxy is not None and not self.backend.notifies_proxy_of_checkpoints

    def _checkpoint(self, reasons: tuple[str, ...], marks: dict[str, float]) -> str:
        if self._tell_proxy_checkpoints():
            assert self.proxy is not None
            proxy = self.proxy
            # The proxy only logs checkpoint_started, but send() waits for its answer:
            # 0.6-3.9 ms before the trigger in bench_divergence. Told once QEMU has the
            # command instead, still before the barrier (same thread, at the STOP).
            self.backend.on_checkpoint_triggered = lambda: proxy.send(
                {"type": "checkpoint_started", "reasons": list(reasons)})
            self.backend.on_checkpoint_stop = lambda: proxy.send({"type": "checkpoint_barrier"})
        else:
            self.backend.on_checkpoint_triggered = None
            self.backend.on_checkpoint_stop = None
        start = time.monotonic()
        # A raise here ends CHECKPOINTING in DEGRADED, which the loop counts as a failure.
        out = self.backend.checkpoint()
        if self._tell_proxy_checkpoints():
            # Both VMs run the same state again: release held output at once (not at the
            # next loop cycle: output the PVM makes after RESUME must not join it).
            assert self.proxy is not None
            self.proxy.send({"type": "checkpoint_done"})
        marks["released"] = time.monotonic()
        for key, attr in (("stopped", "checkpoint_stopped_at"),
                          ("resumed", "checkpoint_resumed_at"),
                          ("trigger_sent", "checkpoint_sent_at"),
                          ("qemu_stopped", "checkpoint_qemu_stopped_at")):
            at = getattr(self.backend, attr, None)
            if isinstance(at, float) and at >= start:
                marks[key] = at
        self.last_checkpoint_steps = checkpoint_steps(marks)
        self.last_checkpoint_marks = dict(marks)
        if self.last_checkpoint_steps:
            # The Xen backend marks no steps (libxl does them all): an empty line said nothing.
            log.info("checkpoint steps (ms): %s",
                     ", ".join(f"{k} {v:g}" for k, v in self.last_checkpoint_steps.items()))
        self.last_checkpoint_s = time.monotonic() - start
        m = self.metrics
        m.checkpoint_duration.observe(self.last_checkpoint_s)
        pause = getattr(self.backend, "checkpoint_pause_s", None)
        if isinstance(pause, float) and pause > 0:
            m.pvm_pause.observe(pause)
            self.last_checkpoint_pause_s = pause
        else:
            # A backend that does not time the PVM's pause: the whole checkpoint bounds it.
            self.last_checkpoint_pause_s = self.last_checkpoint_s
        m.last_checkpoint.set(time.time())
        for r in reasons:
            self.checkpoints[r] += 1
            m.checkpoints.labels(m.reason(r)).inc()
        if "resume" in reasons and self.proxy is not None and self.proxy.send({"type": "resume"}):
            self._proxy_mode = ProxyMode.COMPARE
        return f"{', '.join(reasons)}: {out}"

    def _take_over(self, was_role: str) -> str:
        start = time.monotonic()
        if was_role == "secondary" and not self.arbiter.acquire_now(self._lease_timeout()):
            v = self.arbiter.view()
            why = f"held by {v.holder}" if v.holder else (v.error or "not acquired")
            raise RuntimeError(f"arbiter lease {why}: refusing to take over")
        if self.proxy is not None and self.proxy.send({"type": "failover"}):
            self._proxy_mode = ProxyMode.PASS
        out = self.backend.take_over(was_role)
        out += self._hook("on_takeover", self.cfg.on_takeover)
        if was_role == "secondary":
            # After the hook, which may be what connects this host to the clients (the
            # lab's uplink): the switches told where the VM now is, then the SVM's output
            # a switchover's final checkpoint left undelivered, if the proxy recorded it
            # (colo_proxy.service.output_record).
            out += self.backend.announce()
            if self.proxy is not None:
                self.proxy.send({"type": "replay"})
        took = time.monotonic() - start
        if self._peer_lost_at is not None:
            took = time.monotonic() - self._peer_lost_at
        self.last_takeover_s = took
        return f"{out}; {took * 1000:.0f} ms after the peer was lost"
