"""The Xen backend: `xl` for the domain, `xl remus -c -p` for COLO, colo-proxy for output.

What runs where (docs/xen.md):
- primary host: `xl create` starts the domain (with `create_paused`, `xl create -p`: libxl's
  COLO takes a primary that has not run yet and unpauses it after the first checkpoint;
  see `enter_colo`); `enter_colo` runs
  `xl remus -c -p -u -e -s "" <domain> "exec python -m colo_orch.backends.xen.connect ADDR PORT"`
  and supervises it. libxl then connects to the libxl bridge
  (colo_orch.backends.xen.libxl.bridge, owned here) for checkpoints. COLO is reached at the first COLO_CHECKPOINT (libxl sends it when
  the secondary reports CHECKPOINT_SVM_READY for the initial sync).
- secondary host: `start_vm(incoming_uri)` listens on the port and runs
  `xl migrate-receive --colo --userspace-colo-proxy -e` on the accepted connection; the
  incoming domain is named `<name>--incoming` until failover renames it (xl_vmcontrol.c,
  xl_migrate.c). Its stdout, libxl's back channel to the primary, passes through us: the
  CHECKPOINT_SVM_RESUMED records on it are how `wait_resume` learns that the SVM runs a new
  checkpoint (libxl/backchannel.py; the secondary's libxl tells no proxy).

End of replication, from xl's own messages (tools/xl/xl_migrate.c):
- primary `xl remus` prints "COLO: Backup failed? resuming domain at primary." and exits 1
  when the secondary is lost (libxl resumes the primary), "COLO: Primary domain has been
  destroyed." and exits 0 when our domain is gone, "Failed to suspend domain at primary."
  on a suspend timeout.
- secondary `xl migrate-receive` prints "migration target: COLO Failover for domain N" and
  exits 0 when the primary's stream ends: the domain runs on alone.
- an `xl remus` that ends any other way (libxl aborted, or the take-over killed it) may
  leave the primary's domain suspended for a checkpoint (`---ss-`): `take_over` then resumes
  it as xl would have (resume.py: libxl_domain_resume).

With TLS (migration_tls = "x509", colo_orch.backends.xen.tls) the receiver hands xl only
a connection that passed the handshake with a client certificate of the pair's CA, and
keeps listening after one that did not; connect.py is the TLS client on the primary.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from colo_orch.backends.base import Backend, BackendError
from colo_orch.backends.xen.libxl.backchannel import (
    CHECKPOINT_SVM_RESUMED,
    BackChannelDecoder,
    BackChannelError,
)
from colo_orch.backends.xen.libxl.bridge import LibxlBridge
from colo_orch.backends.xen.tls import relay, server_context
from colo_orch.core.decide import VmObs

log = logging.getLogger("colo_orch.xen")
# `xl create` of an HVM domain starts its device model and waits for it: 8.7 s by hand on
# the nested lab's idle dom0, more than 60 s with colo-orch starting beside it (its first
# run there: the create killed at 60 s, the domain then unpaused to serve alone and never
# protectable). A bound on a hung xl only, so a generous one.
CREATE_TIMEOUT_S = 300.0

# Outcomes of a supervised xl process, recognised from its stderr.
SECONDARY_LOST = "secondary_lost"
PRIMARY_DESTROYED = "primary_destroyed"
SUSPEND_FAILED = "suspend_failed"
FAILED_OVER = "failed_over"
CREATE_FAILED = "create_failed"
READY = "ready"
MESSAGES = (
    ("Backup failed? resuming domain at primary", SECONDARY_LOST),
    ("Primary domain has been destroyed", PRIMARY_DESTROYED),
    ("Failed to suspend domain at primary", SUSPEND_FAILED),
    ("COLO Failover for domain", FAILED_OVER),
    ("Domain creation failed", CREATE_FAILED),
    ("Ready to receive domain", READY),
)


@dataclass
class Supervised:
    """One xl process: its stderr is read line by line into `lines` and `marks`."""

    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True, name="xl-stderr").start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            with self.cond:
                self.lines.append(line)
                self.marks += [m for text, m in MESSAGES if text in line]
                self.cond.notify_all()
        self.proc.wait()
        with self.cond:
            self.cond.notify_all()

    @property
    def exited(self) -> bool:
        return self.proc.poll() is not None

    def wait(self, cond: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(cond, timeout)

    def outcome(self) -> str:
        with self.cond:
            ends = [m for m in self.marks if m != READY]
        if ends:
            return ends[-1]
        if self.exited:
            return f"exit {self.proc.returncode}"
        return "running"

    def tail(self) -> str:
        with self.cond:
            return " | ".join(self.lines[-3:])


def suspended(flags: str) -> bool:
    """`xl list` state flags of a domain shut down for suspend: its 4th flag `s` (shut
    down) and its 5th the reason, `s` for suspend (tools/xl/xl_info.c: "-rscwS")."""
    return flags[3:5] == "ss"


class XenBackend(Backend):
    def __init__(self, domain: str, config_path: str, *, xl: list[str] | None = None,
                 bridge: LibxlBridge | None = None, xl_timeout: float = 10.0,
                 entry_timeout: float = 300.0, create_paused: bool = False,
                 python: str = sys.executable, tls_dir: str = "",
                 tls_hostname: str = "", resume: list[str] | None = None) -> None:
        super().__init__()
        self.domain = domain
        self.config_path = config_path
        self.xl = xl or ["xl"]
        self.bridge = bridge
        self.notifies_proxy_of_checkpoints = bridge is not None
        self.tap_comes_with_vm = True
        self.xl_timeout = xl_timeout
        # xl remus's initial sync until the first COLO_CHECKPOINT: 104 s for a 256 MiB HVM
        # domain on the nested lab (Xen's save walks the whole 4 GiB pfn space of an HVM
        # guest, holes included: 1044480 frames).
        self.entry_timeout = entry_timeout
        self.create_paused = create_paused
        # Our domain was created paused by us, and whether it has run since (seen running,
        # or unpaused by us): libxl's COLO takes it only if it has not (observe: never_ran).
        self._created_paused = False
        self._ran = False
        self.python = python
        # libxl_domain_resume for a domain libxl's COLO left suspended (resume.py).
        self.resume = resume or [python, "-m", "colo_orch.backends.xen.resume"]
        # migration_tls = "x509": our receiver's TLS server, and what connect.py presents.
        self.tls_dir = tls_dir
        self.tls_hostname = tls_hostname
        self.refused = 0  # connections to the receiver that failed the TLS handshake
        self.remus: Supervised | None = None
        self.receiver: Supervised | None = None
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._colo_from = 0  # bridge checkpoint count when remus started
        # Secondary: CHECKPOINT_SVM_RESUMED records seen on the back channel, and how many
        # wait_resume has reported.
        self._resumed = threading.Condition()
        self._resumes = 0
        self._decoder: BackChannelDecoder | None = None
        self._resumes_reported = 0

    # xl calls ---------------------------------------------------------------------------
    def _run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([*self.xl, *args], capture_output=True, text=True,
                                  timeout=timeout or self.xl_timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"xl {args[0]} did not answer in {exc.timeout} s") from exc

    def _state(self, name: str) -> str | None:
        """The `xl list` state flags of a domain (e.g. "r-----", "--p---"), None if absent."""
        row = self._row(name)
        return None if row is None else row[0]

    def _row(self, name: str) -> tuple[str, float | None] | None:
        """A domain's `xl list` state flags and CPU seconds (its Time(s) column: the time
        its vcpus ran, None if unreadable), None if the domain is absent."""
        out = self._run("list", name)
        if out.returncode != 0:
            return None
        rows = [ln.split() for ln in out.stdout.splitlines()[1:] if ln.split()]
        for row in rows:
            if row[0] == name and len(row) >= 5:
                try:
                    cpu = float(row[5]) if len(row) >= 6 else None
                except ValueError:
                    cpu = None
                return row[4], cpu
        return None

    # Observation ---------------------------------------------------------------------------
    def observe(self) -> VmObs:
        try:
            row = self._row(self.domain)
            st = None if row is None else row[0]
            incoming = None if row is not None else self._state(f"{self.domain}--incoming")
        except TimeoutError:
            return VmObs(reachable=True, hung=True)
        except OSError:
            return VmObs(reachable=False)
        if incoming is not None:
            # A COLO secondary: the domain exists under its migration name while xl receives.
            alive = self.receiver is not None and not self.receiver.exited
            return VmObs(reachable=True, running=True, status="colo" if alive else "paused",
                         migration="colo" if alive else "none",
                         colo_mode="secondary" if alive else "none")
        if row is None:
            # A secondary waiting for xl remus: its listener is open, and once the primary
            # connects, xl migrate-receive runs. Both are QEMU's "inmigrate". Only the second
            # counted at first: colo-orch's secondary in the nested Xen lab found its VM
            # "gone" 0.3 s into WAITING, fenced itself, and never let the primary in.
            waiting = self.receiver is None and self._listener is not None
            if waiting or (self.receiver is not None and not self.receiver.exited):
                return VmObs(reachable=True, status="inmigrate")
            return VmObs(reachable=False)
        st, cpu = row
        # Suspended by libxl's COLO (for a checkpoint, or left so when COLO ended badly):
        # QEMU's "colo" runstate, a VM that COLO stopped (decide: DEGRADED goes alone, and
        # the take-over resumes it).
        # Not paused, so it has run (libxl unpauses a paused primary only after its first
        # checkpoint; the initial sync's suspend shows `--pss-`).
        stopped = suspended(st) and "p" not in st
        running = "p" not in st and not stopped
        if running or stopped:
            self._ran = True
        mig, mode = "none", "none"
        r = self.remus
        if r is not None and not r.exited:
            in_colo = self.bridge is not None and self.bridge.checkpoints > self._colo_from
            mig, mode = ("colo", "primary") if in_colo else ("active", "none")
        elif r is not None and r.outcome() == SUSPEND_FAILED:
            mig = "failed"
        status = "running" if running else "colo" if stopped else "paused"
        return VmObs(reachable=True, running=running, status=status, migration=mig,
                     colo_mode=mode,
                     never_ran=not running and self._never_ran(cpu))

    def _never_ran(self, cpu: float | None) -> bool:
        """Our domain, paused, has never run: we created it paused and have not seen it
        run since. A domain we did not create (adopted after a restart of ours) counts
        only if `xl list` gives it no CPU time at all: Xen counts a domain's time as its
        vcpus' running time (getdomaininfo's cpu_time), and a domain created paused has
        run none. Inferred from Xen's accounting, not yet seen on the nested lab: so for a
        domain we created paused our own record wins over its CPU time."""
        if self._ran:
            return False
        return self._created_paused or cpu == 0.0

    # Actions ----------------------------------------------------------------------------------
    def start_vm(self, incoming_uri: str | None) -> str:
        if incoming_uri is None:
            paused = ["-p"] if self.create_paused else []
            began = time.monotonic()
            out = self._run("create", *paused, self.config_path, timeout=CREATE_TIMEOUT_S)
            if out.returncode != 0:
                raise BackendError(f"xl create failed: {out.stderr.strip()[-300:]}")
            self._created_paused, self._ran = self.create_paused, not self.create_paused
            return (f"domain {self.domain} created" + (" paused" if self.create_paused else "")
                    + f" in {time.monotonic() - began:.1f} s")
        addr, port = _tcp(incoming_uri)
        self._close_receiver()
        # A new receiver: observe() must not judge it by the last one's exit (run BG: a
        # secondary whose SVM had died found each new WAITING "gone" at once, and fenced
        # and restarted every 6 s).
        if self.receiver is not None and not self.receiver.exited:
            _terminate(self.receiver.proc)
        self.receiver = None
        try:
            ctx = server_context(self.tls_dir) if self.tls_dir else None
        except (OSError, ssl.SSLError) as exc:
            raise BackendError(f"migration_tls_dir {self.tls_dir}: {exc}") from exc
        self._listener = socket.create_server((addr, port))
        threading.Thread(target=self._receive, args=(ctx,), daemon=True,
                         name="xl-receiver").start()
        return f"waiting for xl remus on {addr}:{port}" + (" (TLS x509)" if ctx else "")

    def _accept(self, lst: socket.socket, ctx: ssl.SSLContext | None) -> socket.socket:
        """The first connection (with TLS: the first that passes the handshake)."""
        while True:
            conn, peer = lst.accept()
            if ctx is None:
                return conn
            try:
                return relay(conn, ctx, server_side=True)
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                self.refused += 1
                log.warning("receiver: refused a connection from %s: %s", peer[0],
                            exc or type(exc).__name__)

    def _receive(self, ctx: ssl.SSLContext | None) -> None:
        lst = self._listener
        assert lst is not None
        try:
            conn = self._accept(lst, ctx)
        except OSError:
            return
        self._conn = conn
        proc = subprocess.Popen(
            [*self.xl, "migrate-receive", "--colo", "--userspace-colo-proxy", "-e"],
            stdin=conn.fileno(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        self.receiver = Supervised(proc)
        assert proc.stdout is not None
        threading.Thread(target=self._back_channel, args=(proc.stdout, conn),
                         daemon=True, name="xl-back-channel").start()

    def _back_channel(self, out: IO[bytes], conn: socket.socket) -> None:
        """Pass xl's stdout to the primary unchanged, and count the SVM's resumes on it."""
        decoder: BackChannelDecoder | None = BackChannelDecoder()
        self._decoder = decoder
        # os.read, not out.read: it returns what there is, at once (a record is 16 bytes).
        while data := os.read(out.fileno(), 65536):
            try:
                # The primary's libxl first: it waits for SVM_READY to resume the PVM.
                conn.sendall(data)
            except OSError:
                # The primary is gone. Closing our end makes xl's next write fail (EPIPE:
                # xl ignores SIGPIPE), as a write to the dead connection itself would have.
                break
            if decoder is None:
                continue
            try:
                resumed = decoder.feed(data).count(CHECKPOINT_SVM_RESUMED)
            except BackChannelError as exc:
                log.error("xl's back channel: %s; the secondary proxy's offsets will not "
                          "reset at checkpoints", exc)
                decoder = None
                continue
            if resumed:
                with self._resumed:
                    self._resumes += resumed
                    self._resumed.notify_all()
        out.close()

    def svm_dirty(self) -> tuple[int, int]:
        """(dirty-pfn lists seen on the back channel, pages in the last one): what the
        SVM's libxc reported dirty at its last suspend."""
        d = self._decoder
        return (d.dirty_lists, d.dirty_pfns) if d is not None else (0, 0)

    def enter_colo(self, uri: str) -> str:
        if self.bridge is None:
            raise BackendError("no libxl bridge: cannot tell when COLO is reached")
        addr, port = _tcp(uri)
        self._check_paused_for_colo()
        self._colo_from = self.bridge.checkpoints
        # xl runs this through a shell: quote every word, though the config allows none
        # that a shell would read (defence in depth for a URI that reaches a root shell).
        tls = ["--tls-dir", self.tls_dir] if self.tls_dir else []
        tls += ["--tls-hostname", self.tls_hostname] if self.tls_dir and self.tls_hostname else []
        rune = "exec " + shlex.join([self.python, "-m", "colo_orch.backends.xen.connect",
                                     addr, str(port), *tls])
        proc = subprocess.Popen([*self.xl, "remus", "-c", "-p", "-u", "-e", "-s", "",
                                 self.domain, rune],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        self.remus = r = Supervised(proc)
        start = time.monotonic()
        bridge = self.bridge
        reached = _until(bridge, lambda: bridge.checkpoints > self._colo_from or r.exited,
                         self.entry_timeout)
        if reached and not r.exited:
            return f"in COLO after {time.monotonic() - start:.2f} s"
        if not r.exited:
            _terminate(r.proc)
            raise BackendError(f"xl remus did not reach COLO within {self.entry_timeout:.0f} s")
        raise BackendError(f"xl remus ended ({r.outcome()}): {r.tail()}")

    def _check_paused_for_colo(self) -> None:
        """libxl's COLO save takes the primary as paused (libxl_colo_save.c: `css->paused =
        true` at setup, "the guest should be paused before doing colo because there is no
        disk migration") and unpauses it once it has resumed it from the first checkpoint.
        Seen on Xen 4.17 (nested lab), neither a running domain nor one paused after it
        ran gets there: a running one fails that unpause right after the first
        COLO_CHECKPOINT ("colo_preresume_cb: cannot unpause primary vm", EINVAL: its pause
        count is 0); one paused by `xl pause` fails the initial sync's suspend ("guest did
        not suspend, timed out", 60 s; presumably a vcpu paused amid an I/O to the device
        model defers the shutdown, not verified). So only a domain created paused, never
        run, is taken: also not one we unpaused and that was paused again since."""
        row = self._row(self.domain)
        if row is None:
            raise BackendError(f"no domain {self.domain} to protect")
        st, cpu = row
        if "p" not in st:
            raise BackendError(
                f"domain {self.domain} runs: libxl's COLO takes a primary created paused "
                "(xl create -p, create_paused) that has not run yet")
        if not self._never_ran(cpu):
            raise BackendError(
                f"domain {self.domain} is paused but has run: libxl's COLO takes a primary "
                "created paused (xl create -p, create_paused) that has not run yet")

    def wait_resume(self, timeout: float) -> bool:
        # The secondary's libxl talks to no proxy in userspace-proxy mode; its
        # CHECKPOINT_SVM_RESUMED record on the back channel is the one sign that the SVM
        # resumed with a new checkpoint (libxl/backchannel.py).
        with self._resumed:
            if not self._resumed.wait_for(lambda: self._resumes > self._resumes_reported,
                                          timeout):
                return False
            self._resumes_reported = self._resumes
            return True

    def checkpoint(self) -> str:
        r, b = self.remus, self.bridge
        if r is None or r.exited or b is None:
            raise BackendError("COLO is not running (no xl remus)")
        n = b.checkpoints
        start = time.monotonic()
        b.request_checkpoint("orchestrator")
        if not _until(b, lambda: b.checkpoints > n or r.exited
                      or self.checkpoint_abort.is_set(), 30):
            raise BackendError("no COLO_CHECKPOINT from libxl within 30 s")
        if b.checkpoints <= n and self.checkpoint_abort.is_set():
            raise BackendError("abandoned: the peer was lost during the checkpoint")
        if b.checkpoints <= n:
            raise BackendError(f"xl remus ended during the checkpoint ({r.outcome()})")
        return f"took {1000 * (time.monotonic() - start):.0f} ms"

    def take_over(self, was_role: str) -> str:
        start = time.monotonic()
        if was_role == "secondary":
            rc = self.receiver
            if rc is not None and not rc.exited and self._conn is not None:
                # The primary is lost but its stream may hang: end it so that libxl on
                # this side fails over (it does on any end of the stream).
                self._conn.shutdown(socket.SHUT_RDWR)
            if rc is not None and not rc.wait(lambda: rc.exited, 10):
                raise BackendError("xl migrate-receive did not fail over within 10 s")
            if rc is not None and rc.outcome() != FAILED_OVER:
                raise BackendError(f"secondary did not fail over: {rc.outcome()}: {rc.tail()}")
        else:
            r = self.remus
            if r is not None and not r.wait(lambda: r.exited, 10):
                _terminate(r.proc)
        st = self._state(self.domain)
        if st is None:
            raise BackendError(f"domain {self.domain} is not there after failover")
        resumed = ""
        if suspended(st):
            # xl remus resumes the primary only on "Backup failed?"; run BH's aborted or
            # was killed above, and its domain stayed `---ss-` with the service down.
            resumed = f" ({self._resume_suspended()})"
            st = self._state(self.domain) or st
        if "p" in st:
            self._run("unpause", self.domain)
        self._ran = True
        return (f"domain running {1000 * (time.monotonic() - start):.0f} ms after takeover"
                + resumed)

    def announce(self) -> str:
        # `xl qemu-monitor-command` hands an HMP command to the domain's device model
        # (xl(1)); QEMU's `announce_self` (HMP, QEMU >= 4.0) sends the gratuitous RARPs it
        # sends after a migration. libxl's COLO failover sends none (run CF1: the idle SVM
        # served, the LAN still sent the client's frames to the dead primary's port). xl
        # alone may take seconds in a busy dom0 (docs/xen.md), so the take-over does not
        # wait for it: its outcome goes to the log.
        threading.Thread(target=self._announce, daemon=True, name="xl-announce").start()
        return "; announcing"

    def _announce(self) -> None:
        try:
            out = self._run("qemu-monitor-command", self.domain, "announce_self")
        except (OSError, TimeoutError) as exc:
            log.warning("announce_self not sent: %s", exc)
            return
        if out.returncode != 0:
            log.warning("announce_self not sent: xl exited %d: %s", out.returncode,
                        out.stderr.strip()[-200:])
            return
        log.info("announce_self sent to domain %s's device model", self.domain)

    def _resume_suspended(self) -> str:
        """libxl_domain_resume of our suspended domain (resume.py), checked by `xl list`."""
        began = time.monotonic()
        try:
            # libxl asks the device model over QMP: as slow as an `xl create` in a busy dom0.
            out = subprocess.run([*self.resume, self.domain], capture_output=True, text=True,
                                 timeout=max(self.xl_timeout, 60.0), check=False)
        except subprocess.TimeoutExpired as exc:
            raise BackendError(f"resuming suspended domain {self.domain}: no answer in "
                               f"{exc.timeout} s") from exc
        if out.returncode != 0:
            raise BackendError(f"domain {self.domain} was left suspended and libxl could "
                               f"not resume it: {out.stderr.strip()[-300:]}")
        st = self._state(self.domain)
        if st is not None and suspended(st):
            raise BackendError(f"domain {self.domain} still suspended ({st}) after "
                               "libxl_domain_resume")
        return f"resumed from suspend in {1000 * (time.monotonic() - began):.0f} ms"

    def unpause_vm(self) -> str:
        st = self._state(self.domain)
        if st is None:
            raise BackendError(f"no domain {self.domain} to unpause")
        if "p" not in st:
            self._ran = True
            return f"domain {self.domain} runs already"
        out = self._run("unpause", self.domain)
        if out.returncode != 0:
            raise BackendError(f"xl unpause failed: {out.stderr.strip()[-300:]}")
        # From here libxl's COLO would fail it (`_check_paused_for_colo`), even paused again.
        self._ran = True
        return f"domain {self.domain} unpaused"

    def stop_vm(self) -> str:
        for sup in (self.remus, self.receiver):
            if sup is not None and not sup.exited:
                _terminate(sup.proc)
        self._close_receiver()
        self._created_paused = self._ran = False  # the next domain is a new one
        out = self._run("destroy", self.domain)
        return "domain destroyed" if out.returncode == 0 else f"xl destroy: {out.stderr.strip()}"

    def _close_receiver(self) -> None:
        for s in (self._listener, self._conn):
            if s is None:
                continue
            # A listener whose accept() blocks in the receiver thread stays bound (LISTEN)
            # after close() until that accept returns, which close() alone never makes it
            # do: the next start_vm then failed with "Address already in use" at every
            # retry (nested Xen lab, a secondary whose peer had gone alone). shutdown()
            # ends the accept (EINVAL), and the port is free again.
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected: nothing to end
            s.close()
        self._listener = self._conn = None

    def close(self) -> None:
        self._close_receiver()


def _until(bridge: LibxlBridge, cond: Callable[[], bool], timeout: float) -> bool:
    """Wait on the bridge's condition; an xl exit does not signal it, so look again every
    0.1 s (a bound on noticing the exit, not a synchronisation)."""
    deadline = time.monotonic() + timeout
    while not bridge.wait(cond, min(0.1, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            return False
    return True


def _tcp(uri: str) -> tuple[str, int]:
    """"tcp:ADDR:PORT" (the orchestrator's incoming_uri) as (ADDR, PORT)."""
    rest = uri.removeprefix("tcp:")
    addr, _, port = rest.rpartition(":")
    if not addr or not port.isdigit():
        raise BackendError(f"incoming uri {uri!r} is not tcp:ADDR:PORT")
    return addr.strip("[]"), int(port)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
