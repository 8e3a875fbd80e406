"""The QEMU/KVM backend over QMP (our own client, colo_orch.backends.qemu.qmp).

QEMU facts this relies on (QEMU 7.2, docs/COLO-FT.txt, measured here):
- COLO needs the `x-colo` capability on both VMs, then `migrate` from the PVM to
  the SVM's `-incoming` address; the PVM's query-migrate then reports "colo".
- No checkpoint event exists. A checkpoint is a STOP then RESUME on each VM.
  The PVM resumes only after the SVM has reported the new state loaded
  (COLO_MESSAGE_VMSTATE_LOADED in migration/colo.c), so the PVM's RESUME means
  "both VMs run again with the same state".
- `migrate-set-parameters x-checkpoint-delay=MS` in COLO starts a checkpoint at
  once and re-arms QEMU's own periodic timer to MS. We keep that timer longer
  than our own maximum interval so that QEMU never checkpoints behind our back.
- `x-colo-lost-heartbeat` on the survivor ends COLO; `COLO_EXIT` reports it.
  `yank` (QEMU >= 6.0) shuts down a migration socket stuck on a dead peer.
- `announce-self` (QEMU >= 4.0) sends gratuitous RARPs so switches learn the
  survivor's port for the shared MAC.
- TLS (migration_tls): see colo_orch.backends.qemu.tls. A secondary we start has its
  credentials from the command line; one we adopt while it waits gets them over QMP.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from colo_orch.backends.base import Backend, BackendError
from colo_orch.backends.qemu.blk.graph import DiskError, Replication
from colo_orch.backends.qemu.blk.images import ImageError, check_layers, create_layer, size_of
from colo_orch.backends.qemu.blk.spec import drive_args, uri_host
from colo_orch.backends.qemu.events import DiskEvents, EventReader
from colo_orch.backends.qemu.process import ensure_gone, pid_from_file, started_with
from colo_orch.backends.qemu.qmp import QmpClient
from colo_orch.backends.qemu.tls import SERVER_ID, QemuTls, add_creds
from colo_orch.core.decide import VmObs
from colo_orch.core.disks import Disk, DiskStatus
from colo_orch.core.progress import Progress, Ticker

log = logging.getLogger("colo_orch.qemu")


class _Monitor:
    """One QMP connection shared by two threads, each command bounded by `timeout`."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._lock = threading.Lock()
        # Two threads may find no connection at once: only one may open it (QEMU serves one
        # client per monitor socket; a second would wait unanswered).
        self._connecting = threading.Lock()
        self._mon: QmpClient | None = None

    def _connect(self) -> QmpClient:
        with self._connecting:
            mon = self._mon
            if mon is None or not mon.connected:
                if not os.path.exists(self.path):
                    raise ConnectionError(f"no QMP socket at {self.path}")
                mon = QmpClient(self.path, self.timeout)
                mon.connect()
                self._mon = mon
            return mon

    def cmd(self, name: str, **args: Any) -> Any:
        if not self._lock.acquire(timeout=self.timeout):
            raise TimeoutError(f"QMP {name}: monitor busy for {self.timeout} s")
        try:
            try:
                reply = self._connect().cmd_raw(name, args or None)
            except Exception:
                self.drop()
                raise
        finally:
            self._lock.release()
        if "error" in reply:
            raise BackendError(f"QMP {name}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def pull_event(self, wait: float) -> dict[str, Any] | None:
        return self._connect().pull_event(wait)

    def clear_events(self) -> None:
        self._connect().clear_events()

    def drop(self) -> None:
        mon, self._mon = self._mon, None
        if mon is not None:
            mon.close()


def _monotonic_stamp(event: dict[str, Any], now: float) -> float:
    """QEMU's stamp on an event (`g_get_real_time()`, qapi/qmp-event.c: the wall clock) on
    the monotonic clock, `now` being the monotonic time it was read; `now` without one."""
    ts = event.get("timestamp")
    if not isinstance(ts, dict) or "seconds" not in ts:
        return now
    wall = ts["seconds"] + ts.get("microseconds", 0) / 1e6
    return now - (time.time() - float(wall))


class QemuBackend(Backend):
    def __init__(self, qmp: str, qmp_events: str, vm_command: list[str], *,
                 qmp_timeout: float = 5.0, qemu_checkpoint_delay_ms: int = 3_600_000,
                 vm_log: str = "", pidfile: str = "", disks: tuple[Disk, ...] = (),
                 nbd_port: int = 10809, incoming_uri: str = "",
                 tls: QemuTls | None = None, resync_timeout: float = 1800.0,
                 sync_timeout: float = 600.0, migration_bandwidth: float = 0.0,
                 migration_downtime: float = 0.0) -> None:
        super().__init__()
        self.resync_timeout = resync_timeout
        self.sync_timeout = sync_timeout
        self.migration_bandwidth = migration_bandwidth  # MB/s, 0 = QEMU's default
        self.migration_downtime = migration_downtime  # s, 0 = QEMU's default
        self._progress: Progress | None = None  # set by the action thread, read by any
        self._ticker = Ticker()
        self.mon = _Monitor(qmp, qmp_timeout)
        # Read by a thread of its own: disk errors count when they happen (events.py).
        self.disk_events = DiskEvents()
        self.events = EventReader(qmp_events, qmp_timeout, self._on_event)
        self.vm_command = vm_command
        self.qemu_delay_ms = qemu_checkpoint_delay_ms
        # The VM's stdout and stderr (QEMU's own error messages); default: beside its monitor.
        self.vm_log = vm_log or str(Path(qmp).with_suffix(".log"))
        self.pidfile = pidfile
        self._colo_cap_set = False
        self.tls = tls
        self._tls_set = False  # our waiting VM runs a TLS handshake on each connection
        self.proc: subprocess.Popen[bytes] | None = None
        self.checkpoint_pause_s = 0.0
        # Monotonic times of the last checkpoint's STOP and RESUME (colo_orch.core.timeline):
        # when the action thread saw them; when the trigger command went out; and QEMU's own
        # stamp on the STOP event.
        self.checkpoint_stopped_at = 0.0
        self.checkpoint_resumed_at = 0.0
        self.checkpoint_sent_at = 0.0
        self.checkpoint_qemu_stopped_at = 0.0
        # COLO entry's STOP (below, _colo_stop): told once, by whichever thread sees it.
        self._colo_stop_lock = threading.Lock()
        self._colo_stop_armed = False
        self._colo_stop_done = threading.Event()
        self._colo_stop_done.set()  # no hook under way
        self._colo_barrier_at: float | None = None  # when the proxy compared, at entry
        self._colo_stop_stamp = 0.0  # QEMU's stamp on that STOP (monotonic)
        # Replicated disks (colo_orch.backends.qemu.blk); the NBD server listens on our migration host.
        self.disks = disks
        self.blk = Replication(self.mon, disks, nbd_port, tls=tls)
        self.nbd_host = uri_host(incoming_uri) if incoming_uri else ""

    # Observation -------------------------------------------------------------
    def observe(self) -> VmObs:
        try:
            status = self.mon.cmd("query-status")
        except (TimeoutError, BackendError):
            return VmObs(reachable=True, hung=True)
        except Exception:  # no socket, refused, or the monitor closed
            return VmObs(reachable=False)
        try:
            mig = self.mon.cmd("query-migrate").get("status", "none")
            colo = self.mon.cmd("query-colo-status").get("mode", "none")
            if status.get("status") == "inmigrate" and not self._colo_cap_set:
                # A COLO secondary needs the capability too (required since QEMU 8).
                self.mon.cmd("migrate-set-capabilities",
                             capabilities=[{"capability": "x-colo", "state": True}])
                self._colo_cap_set = True
            if status.get("status") == "inmigrate":
                self._secure_incoming()
            disk_error = self._observe_disks(str(status.get("status", "")))
        except TimeoutError:
            return VmObs(reachable=True, hung=True)
        except Exception:
            return VmObs(reachable=False)
        return VmObs(reachable=True, running=bool(status.get("running")),
                     status=str(status.get("status", "")), migration=str(mig),
                     colo_mode=str(colo), disk_error=disk_error)

    def _secure_incoming(self) -> None:
        """An adopted waiting VM (one we started has them from its command line): from
        now on each connection to its listener must pass the TLS handshake."""
        if self.tls is None or self._tls_set:
            return
        try:
            add_creds(self.mon, self.tls, "server")
            self.mon.cmd("migrate-set-parameters", **{"tls-creds": SERVER_ID})
        except BackendError as exc:
            # Retried next cycle. Meanwhile the primary's TLS handshake fails on this VM,
            # which then exits, and the VM we start instead has them or does not start.
            log.error("cannot give our waiting VM its TLS credentials (%s, %s): %s",
                      self.tls.kind, self.tls.dir, exc)
            return
        self._tls_set = True

    def _observe_disks(self, status: str) -> str:
        """Export our disks when we wait as a secondary (also for an adopted VM); check
        replication while we are the primary. Returns the problem, "" if none."""
        if not self.disks:
            return ""
        try:
            if status == "inmigrate" and self.blk.state == "none":
                self.blk.export(self.nbd_host)
            return self.blk.poll()
        except DiskError as exc:
            return str(exc)

    def disk_status(self) -> tuple[DiskStatus | None, int]:
        if not self.disks:
            return None, 0
        return replace(self.blk.status(), error_events=dict(self.disk_events.counts),
                       last_error_event=self.disk_events.last), len(self.disks)

    def _on_event(self, event: dict[str, Any]) -> None:
        """Every QMP event as it arrives (the events thread): a failed write to the
        secondary's disk breaks replication now, not at the next checkpoint."""
        if self.disk_events.note(event):
            log.warning("disk error: %s", self.disk_events.last)
        self.blk.note_event(event)
        if event.get("event") == "STOP" and self._colo_stop_armed:
            self._colo_stop(event)

    # Actions -----------------------------------------------------------------
    def start_vm(self, incoming_uri: str | None) -> str:
        if not self.vm_command:
            raise BackendError("no vm_command configured: cannot start a VM")
        self.mon.drop()
        self.events.drop()
        self._colo_cap_set = False
        self._tls_set = bool(incoming_uri) and self.tls is not None
        for p in (self.mon.path, self.events.path):
            Path(p).unlink(missing_ok=True)
        self.blk.reset()
        before = self._previous_gone()
        argv = list(self.vm_command) + self._disk_args(secondary=bool(incoming_uri))
        if incoming_uri:
            argv += (self.tls.incoming_args() if self.tls else []) + ["-incoming", incoming_uri]
        try:
            log = open(self.vm_log, "ab")
        except OSError as exc:
            raise BackendError(f"cannot open the VM log {self.vm_log}: {exc.strerror}; "
                               "set vm_log to a writable file") from exc
        with log:
            log.write(f"--- colo-orch starts the VM: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BackendError(f"VM command exited with {self.proc.returncode} "
                                   f"(its messages: {self.vm_log})")
            if os.path.exists(self.mon.path) and os.path.exists(self.events.path):
                try:
                    st = self.mon.cmd("query-status")
                    self.events.clear_events()
                    out = f"pid {self.proc.pid}, status {st.get('status')}"
                    return f"{out}; {before}" if before else out
                except Exception:
                    pass
            time.sleep(0.05)
        raise BackendError("VM did not open its monitor within 60 s")

    def _previous_gone(self) -> str:
        """The VM we start replaces the last one, which must have released its pid-file
        lock, images and ports (colo_orch.backends.qemu.process): wait for it, kill it if it lingers."""
        pids = []
        if self.proc is not None and self.proc.poll() is None:
            pids.append(self.proc.pid)
        pid = pid_from_file(self.pidfile) if self.pidfile else None
        if pid is not None and pid not in pids and started_with(pid, self.pidfile):
            pids.append(pid)
        try:
            return ensure_gone(pids, grace=5.0)
        except ProcessLookupError as exc:
            raise BackendError(f"{exc}: cannot start a new VM beside it") from exc

    def _disk_args(self, *, secondary: bool) -> list[str]:
        """Check the images and, for a secondary, recreate its empty active/hidden layers."""
        try:
            for d in self.disks:
                if secondary:
                    for layer in (d.active, d.hidden):
                        create_layer(layer, size_of(d.image))
                    check_layers(d.image, d.active, d.hidden)
                else:
                    size_of(d.image)
        except ImageError as exc:
            raise BackendError(f"disk: {exc}") from exc
        return drive_args(self.disks, secondary=secondary)

    def enter_colo(self, uri: str) -> str:
        try:
            return self._enter_colo(uri)
        finally:
            self._progress = None  # no copy under way, whatever the outcome
            with self._colo_stop_lock:
                self._colo_stop_armed = False
            # A hook still under way in the events thread ends before the caller goes on.
            self._colo_stop_done.wait(10.0)

    def _enter_colo(self, uri: str) -> str:
        # The PVM stops once while COLO starts (explicitly for disks, else to finish the
        # migration); that STOP is the barrier between output the SVM's state will cover
        # and output it must reproduce.
        self._colo_barrier_at = None
        try:
            self.events.clear_events()
        except Exception:  # no events monitor yet: nothing to clear
            pass
        # Armed after the clearing, which shows the events thread what it drops.
        self._colo_stop_armed = self.on_checkpoint_stop is not None
        if not self.disks:
            return self._migrate_colo(uri)
        # The secondary's copy is made equal to our disk while the guest runs, then the
        # guest stays stopped from the replication child's attachment until COLO starts
        # it: a write in between would reach one image only. (The secondary's image is
        # not writable until its incoming migration completes, so writes during the
        # migration itself would be lost on it.)
        peer = uri_host(uri)
        try:
            start = time.monotonic()
            self._ticker = Ticker()
            synced = self.blk.resync(peer, timeout=self.resync_timeout,
                                     progress=lambda done, total: self._note(
                                         "disks", done, total, start))
            self.mon.cmd("stop")
            try:
                self.blk.attach(peer)
                out = self._migrate_colo(uri)
            except BaseException:
                self._undo_disks()
                raise
        except DiskError as exc:
            raise BackendError(f"disk replication: {exc}") from exc
        return f"{synced}; {self.blk.state} to {peer}; {out}"

    def progress(self) -> Progress | None:
        return self._progress

    def _note(self, phase: str, done: int, total: int, start: float, status: str = "") -> None:
        now = time.monotonic()
        p = Progress(phase, done, total, start, now)
        self._progress = p
        if self._ticker.due(now):
            log.info("protection, first copy: %s%s", p.describe(),
                     f" (QEMU: {status})" if status else "")

    def _undo_disks(self) -> None:
        """enter_colo failed: drop the replication children and let the guest run alone."""
        try:
            self.blk.detach()
        finally:
            self._run_again()

    def _migrate_colo(self, uri: str) -> str:
        cap = [{"capability": "x-colo", "state": True}]
        self.mon.cmd("migrate-set-capabilities", capabilities=cap)
        params: dict[str, Any] = {"x-checkpoint-delay": self.qemu_delay_ms}
        if self.migration_bandwidth > 0:
            params["max-bandwidth"] = int(self.migration_bandwidth * 1_000_000)
        if self.migration_downtime > 0:
            # QMP's downtime-limit is in milliseconds (qapi/migration.json), at least 1.
            params["downtime-limit"] = max(1, round(self.migration_downtime * 1000))
        if self.tls is not None:
            add_creds(self.mon, self.tls, "client")
            params.update(self.tls.migration_params())
        self.mon.cmd("migrate-set-parameters", **params)
        start = time.monotonic()
        self._ticker = Ticker()
        self.mon.cmd("migrate", uri=uri)
        while time.monotonic() - start < self.sync_timeout:
            self._watch_colo_stop(0)
            mig = self.mon.cmd("query-migrate")
            st = mig.get("status")
            ram = mig.get("ram") or {}
            self._note("memory", int(ram.get("transferred", 0)), int(ram.get("total", 0)),
                       start, str(st))
            if st == "colo":
                # The STOP certainly came first; its event may still be on its way.
                self._watch_colo_stop(1.0)
                return f"in COLO after {time.monotonic() - start:.2f} s{self._barrier_note()}"
            if st in ("failed", "cancelled"):
                raise BackendError(f"COLO migration to {uri} {st}")
            if st == "completed":
                # A migration with x-colo ends in "colo"; "completed" means QEMU finished it
                # as a plain migration, or COLO ended as soon as it began: either way no
                # COLO runs and our VM stays stopped ("postmigrate") from the last pass.
                # Polling on would keep the service down until sync_timeout (600 s).
                was = self._run_again()
                if was is not None:
                    log.warning("COLO entry: our VM was left %s by the migration; restarted", was)
                raise BackendError(f"COLO migration to {uri} ended 'completed', not in COLO "
                                   "(our VM was restarted to serve alone)")
            time.sleep(0.05)
        self._cancel_migration()
        raise BackendError(f"COLO migration to {uri} did not reach COLO within "
                           f"{self.sync_timeout:g} s (timing.sync_timeout; "
                           f"{self._progress.describe() if self._progress else 'no progress'})")

    def _run_again(self) -> str | None:
        """Start our VM if a failed entry left it stopped; the status it had, None if it ran.
        `cont` also takes the disks back after a completed migration (qmp_cont's
        bdrv_activate_all) and runs the VM from "postmigrate"."""
        status = self.mon.cmd("query-status") or {}
        if status.get("running"):
            return None
        self.mon.cmd("cont")
        return str(status.get("status", "stopped"))

    def _colo_stop(self, event: dict[str, Any]) -> None:
        """The STOP of COLO entry: the hook (the proxy compares from here) runs once.

        The events thread calls this as the event arrives; the action thread too, from
        the queue, between its `query-migrate` polls. Those polls alone saw the STOP after
        the fact, and a `query-migrate` sent during the migration's last pass waits for
        it: in lab demos the proxy compared 1-142 ms before QEMU resumed the PVM in
        COLO, so on a busier host the PVM could run first and its output pass
        uncompared (docs/ORCHESTRATOR.md, "The proxy and the secondary").
        """
        with self._colo_stop_lock:
            if not self._colo_stop_armed:
                return
            self._colo_stop_armed = False
            self._colo_stop_done.clear()
            hook = self.on_checkpoint_stop
        got = time.monotonic()
        self._colo_stop_stamp = _monotonic_stamp(event, got)
        try:
            if hook is not None:
                hook()
        finally:
            self._colo_barrier_at = time.monotonic()
            self._colo_stop_done.set()

    def _watch_colo_stop(self, wait: float) -> None:
        if not self._colo_stop_armed:  # told already, or nothing to tell
            self._colo_stop_done.wait(wait)
            return
        deadline = time.monotonic() + wait
        while True:
            try:
                ev = self.events.pull_event(wait=max(0.0, deadline - time.monotonic()))
            except Exception:
                return
            if ev is None:
                return
            if ev.get("event") == "STOP":
                self._colo_stop(ev)
                self._colo_stop_done.wait(max(wait, 1.0))
                return

    def _barrier_note(self) -> str:
        """How the proxy's switch to comparing (at the STOP) fell against the PVM's RESUME
        in COLO: were the RESUME first, output made in between passed uncompared
        (docs/ORCHESTRATOR.md, "The proxy and the secondary"). Measured from QEMU's
        stamps on both events."""
        acted = self._colo_barrier_at
        if acted is None:
            return ""
        self._colo_barrier_at = None
        deadline = time.monotonic() + 1.0
        while True:
            try:
                ev = self.events.pull_event(wait=max(0.0, deadline - time.monotonic()))
            except Exception:
                return ""
            if ev is None:
                return "; the PVM's RESUME not seen within 1 s"
            if ev.get("event") == "RESUME":
                break
        now = time.monotonic()
        resumed = _monotonic_stamp(ev, now)
        lead = acted - resumed
        took = (f" (QEMU's STOP to RESUME {1000 * (resumed - self._colo_stop_stamp):.0f} ms, "
                f"to the proxy comparing {1000 * (acted - self._colo_stop_stamp):.0f} ms)")
        if lead > 0:
            log.warning("COLO entry: the PVM resumed %.0f ms before its proxy compared: "
                        "output in between passed uncompared%s", 1000 * lead, took)
            return f"; the PVM resumed {1000 * lead:.0f} ms before its proxy compared{took}"
        return f"; the proxy compared {-1000 * lead:.0f} ms before the PVM resumed{took}"

    def _cancel_migration(self) -> None:
        try:
            self.mon.cmd("migrate_cancel")
        except Exception:
            pass

    def cancel_migration(self) -> str:
        # QEMU keeps a migration's yank instance registered until the migration ends; a
        # `migrate` before that fails with "duplicate yank instance" (seen in the lab after
        # a SIGSTOP of the PVM during a re-protection). So wait for the end, not only ask.
        first = self.mon.cmd("query-migrate").get("status", "none")
        self.mon.cmd("migrate_cancel")
        deadline = time.monotonic() + 10.0
        while True:
            st = self.mon.cmd("query-migrate").get("status", "none")
            if st not in ("setup", "active", "device", "pre-switchover", "cancelling"):
                return f"migration cancelled (was {first}, now {st})"
            if time.monotonic() >= deadline:
                raise BackendError(f"migration still {st} 10 s after migrate_cancel")
            time.sleep(0.05)

    def checkpoint(self) -> str:
        self.events.clear_events()
        start = self.checkpoint_sent_at = time.monotonic()
        self.mon.cmd("migrate-set-parameters", **{"x-checkpoint-delay": self.qemu_delay_ms})
        if self.on_checkpoint_triggered is not None:
            # QEMU needs 1-7 ms from here to its STOP (its timer, a CHECKPOINT_REQUEST
            # round trip to the secondary, vm_stop): time for what the hook tells.
            self.on_checkpoint_triggered()
        stopped_at = None
        deadline = start + 30
        while time.monotonic() < deadline:
            if self.checkpoint_abort.is_set():
                raise BackendError("abandoned: the peer was lost during the checkpoint")
            ev = self.events.pull_event(wait=0.1)
            if ev is None:
                if self.mon.cmd("query-migrate").get("status") != "colo":
                    raise BackendError("COLO ended during the checkpoint")
                continue
            name = ev.get("event")
            if name == "STOP":
                stopped_at = self.checkpoint_stopped_at = time.monotonic()
                self.checkpoint_qemu_stopped_at = _monotonic_stamp(ev, stopped_at)
                if self.on_checkpoint_stop is not None:
                    self.on_checkpoint_stop()
            elif name == "RESUME" and stopped_at is not None:
                self.checkpoint_resumed_at = time.monotonic()
                self.checkpoint_pause_s = self.checkpoint_resumed_at - stopped_at
                return (f"took {1000 * (time.monotonic() - start):.0f} ms, PVM paused "
                        f"{1000 * self.checkpoint_pause_s:.0f} ms")
            elif name == "COLO_EXIT":
                raise BackendError(f"COLO exited during the checkpoint: {ev.get('data')}")
        raise BackendError("checkpoint did not complete within 30 s")

    def take_over(self, was_role: str) -> str:
        start = time.monotonic()
        disk = ""
        if self.disks:
            try:
                # Secondary: the dead primary must write no more into our image before
                # replication commits the active/hidden layers into it. Primary: the
                # local image alone is the disk from now on.
                disk = (self.blk.stop_export() if was_role == "secondary"
                        else self.blk.detach())
            except DiskError as exc:
                raise BackendError(f"disk failover: {exc}") from exc
        try:
            self.mon.cmd("x-colo-lost-heartbeat")
        except BackendError as exc:
            # Already out of COLO (e.g. COLO_EXIT on a socket error): fine if it runs.
            if "not" not in str(exc).lower():
                raise
        yanked = False
        while time.monotonic() - start < 10:
            st = self.mon.cmd("query-status")
            if st.get("running"):
                break
            if not yanked and time.monotonic() - start > 2:
                # The migration socket may be stuck on a peer that vanished without RST.
                try:
                    self.mon.cmd("yank", instances=[{"type": "migration"}])
                except Exception:
                    pass
                yanked = True
            if st.get("status") in ("paused", "colo") and time.monotonic() - start > 3:
                self.mon.cmd("cont")
            time.sleep(0.02)
        else:
            raise BackendError("VM did not run within 10 s of x-colo-lost-heartbeat")
        ran = time.monotonic() - start
        if self.disks and was_role == "secondary":
            try:
                disk += "; " + self.blk.wait_committed(max(1.0, 9.0 - ran))
            except DiskError as exc:
                raise BackendError(f"disk failover: {exc}") from exc
        out = f"VM running {1000 * ran:.0f} ms after lost-heartbeat"
        return f"{out}; {disk}" if disk else out

    def announce(self) -> str:
        try:
            self.mon.cmd("announce-self", initial=50, max=550, rounds=5, step=100)
        except BackendError:
            return ""  # older QEMU: the guest's own traffic updates the switches
        return "; announced"

    def stop_vm(self) -> str:
        """Quit the VM; if its monitor does not answer, kill it (fencing must not hang)."""
        how = "quit"
        try:
            self.mon.cmd("quit")
        except Exception:
            how = self._kill()
        self.mon.drop()
        self.events.drop()
        return f"VM stopped ({how})"

    def _kill(self) -> str:
        pid = None
        if self.proc is not None and self.proc.poll() is None:
            pid = self.proc.pid
        elif self.pidfile:
            try:
                pid = int(Path(self.pidfile).read_text().strip())
            except (OSError, ValueError):
                pid = None
        if pid is None:
            raise BackendError("VM monitor hung and no pid known to kill it (set vm_pidfile)")
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            return "already gone"
        return f"SIGKILL to pid {pid}"

    def wait_resume(self, timeout: float) -> bool:
        # The SVM stops for each checkpoint and resumes once it has loaded the PVM's
        # state (migration/colo.c, colo_incoming_process_checkpoint): its RESUME is the
        # moment the secondary's sequence offsets become zero.
        try:
            ev = self.events.pull_event(wait=timeout)
        except Exception:
            self.events.drop()
            return False
        if ev is None or ev.get("event") != "RESUME":
            return False
        ts = ev.get("timestamp")
        # QEMU stamps the event before its vCPUs run again (vm_start: the event, then
        # resume_all_vcpus), on this host's wall clock: whatever the SVM sends after the
        # checkpoint was received later (the proxy's recorder compares, same host).
        self.last_resume_wall = (float(ts["seconds"]) + ts.get("microseconds", 0) / 1e6
                                 if isinstance(ts, dict) and "seconds" in ts else None)
        return True

    def close(self) -> None:
        self.mon.drop()
        self.events.close()
