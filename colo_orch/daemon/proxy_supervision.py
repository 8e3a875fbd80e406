"""Proxy supervision: the local colo-proxy process and what we last told it.

When the configuration gives proxy commands, the orchestrator runs colo-proxy in
this host's role and restarts it in the other role after a re-protection swaps
the roles. A primary's proxy compares only while the pair is protected; the
loop puts it back to pass-through whenever no action owns it.

A restarted orchestrator adopts what runs: a proxy that answers hello on our
socket in the role we want is kept, whoever started it (there is one per VM:
colo-proxy locks its instance), and one in the wrong role is stopped by its pid
before a new one starts. Every new connection (a restarted proxy, or one we
adopt) is told again what the loop wants of it, and a message that could not be
sent is sent again at the next cycle. A proxy that dies is started again.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from colo_orch.core.config import Config
from colo_orch.core.decide import VmObs, adopted_role, serves_outside_colo
from colo_orch.core.state import Machine, State
from colo_orch.daemon.proxy_link import ProxyLink

log = logging.getLogger("colo_orch")
# The proxy modes in which a host's proxy does its part of the protection. A secondary's
# proxy still fenced from its host's time as primary (the fence is held through STARTING,
# WAITING and PROTECTED) steers the SVM's output to the comparator as a protected one does,
# and a take-over lifts that fence before its failover (decide._go_alone): after every role
# swap `coloctl status` said "NOT protected" of a protected pair.
_PROTECTING = {"primary": ("protected",), "secondary": ("protected", "fenced")}

# How long a proxy in the wrong role gets to leave after SIGTERM, then after SIGKILL.
TERM_WAIT_S = 10.0
KILL_WAIT_S = 5.0
# Between two attempts to start a proxy that keeps dying.
RESTART_BACKOFF_S = 5.0


class ProxyMode(enum.Enum):
    """What the proxy is known to do about comparing: what we last told it, or what its
    hello said when it (re)connected.

    A proxy that COLO is about to start on has been told nothing yet (UNKNOWN), so the
    next message that matters is sent again rather than assumed.
    """

    UNKNOWN = "unknown"  # nothing known since the proxy (re)connected or an enter_colo began
    PASS = "pass"  # passes output uncompared (paused, or failed over)
    COMPARE = "compare"  # compares (primary) or steers the SVM's output (secondary)

    @property
    def label(self) -> str:
        """The proxy's own name for the mode (its hello and status)."""
        return {ProxyMode.PASS: "passthrough", ProxyMode.COMPARE: "protected"}.get(self, "")


HELLO_MODES = {"protected": ProxyMode.COMPARE, "passthrough": ProxyMode.PASS}
# The states in which the loop, not an action, says what a proxy does, by our role.
# Primary: compare only while protected; otherwise there is no SVM output to wait for,
# and held output would never be released. Secondary: steer the SVM's output.
WANTED = {
    "primary": {State.PROTECTED: ProxyMode.COMPARE, State.WAITING: ProxyMode.PASS,
                State.ALONE: ProxyMode.PASS, State.DEGRADED: ProxyMode.PASS,
                State.PAUSED: ProxyMode.PASS},
    "secondary": {State.PROTECTED: ProxyMode.COMPARE, State.WAITING: ProxyMode.COMPARE},
}
MESSAGES = {ProxyMode.PASS: "pause", ProxyMode.COMPARE: "resume"}


def _proxy_pid_alive(pid: int) -> bool:
    """`pid` is a running colo-proxy (not a zombie, not a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rpartition(b")")[2].split()[0] == b"Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, IndexError):
        return False
    return b"colo_proxy" in cmdline or b"colo-proxy" in cmdline


class ProxySupervision:
    """Orchestrator part: start, adopt, restart and switch the local proxy.

    Runs on the action thread (`_ensure_proxy`), on a restart thread of its own and on
    the loop (`_sync_proxy_mode`, `_supervise_proxy`, `proxy_view`).
    """

    # Orchestrator.__init__ sets these; declared as what this part uses.
    cfg: Config
    host_id: str
    proxy: ProxyLink | None
    role: str
    machine: Machine
    _lock: threading.Lock
    _future: Future[str] | None
    _requests: list[str]
    _vm: VmObs
    _proxy_lock: threading.Lock
    _proxy_proc: subprocess.Popen[bytes] | None
    _proxy_role: str
    _proxy_mode: ProxyMode
    _proxy_pid: int | None  # the proxy we run or adopted
    _proxy_gen: int  # the link generation whose hello the loop has taken in
    _proxy_start_gen: int  # the link generation when we last started a proxy
    _proxy_hello_pid: int | None  # the pid that hello named
    _proxy_restart_after: float  # monotonic time before which no restart is tried again
    _peer_proxy_pid: int | None  # the pid the peer's heartbeat last named for its proxy
    _fenced: bool  # our VM's output must be held (actions._set_fence)
    _fence_told: bool  # the proxy has acknowledged that
    _proxy_restarter: threading.Thread | None

    def _ensure_proxy(self, role: str, *, wait: bool = True) -> str:
        """Run colo-proxy in `role`: keep (or adopt) one that runs in it, replace one in the
        other role. Held under `_proxy_lock` to the end, so that a second caller finds the
        proxy answering, not merely started. `wait=False`: a proxy started here is not
        waited for (its tap comes with the VM: Backend.tap_comes_with_vm); `_await_proxy`
        waits for it once the VM is there."""
        argv = (self.cfg.proxy_primary_command if role == "primary"
                else self.cfg.proxy_secondary_command)
        if not argv:
            return ""
        with self._proxy_lock:
            proc = self._proxy_proc
            if proc is not None and proc.poll() is None:
                if self._proxy_role == role:
                    return ""
                proc.terminate()
                try:
                    proc.wait(timeout=TERM_WAIT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=KILL_WAIT_S)
            else:
                found = self._running_proxy()
                if found is not None and found[0] == role:
                    self._proxy_proc, self._proxy_role, self._proxy_pid = None, role, found[1]
                    if self.proxy is not None and (self.proxy.hello or {}).get(
                            "mode") == "fenced":
                        # Held now, not at the loop's first hello: a proxy that dies before
                        # then is started again --fenced (the pair model: a restarted
                        # orchestrator, its proxy then restarted unfenced, served a stale
                        # copy while the peer served alone).
                        self._fenced = self._fence_told = True
                    return f"; adopted the running colo-proxy (pid {found[1]}) as {role}"
                if found is not None:
                    log.warning("colo-proxy pid %d runs as %s, we need %s: restarting it",
                                found[1], found[0], role)
                    self._terminate_pid(found[1])
            gen = self.proxy.generation if self.proxy is not None else 0
            # Its metrics carry the same `pair` and `host` labels as ours (argparse: the
            # last flag wins over one in the configured command).
            argv = [*argv, "--pair", self.cfg.name, "--host", self.host_id]
            if self._fenced:
                # Our output is held (HOLDING, or an adoption waiting for `alone`): the
                # proxy holds it from its first packet, not only once its hello is in.
                argv = [*argv, "--fenced"]
            self._proxy_proc = proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                                       start_new_session=True)
            self._proxy_role, self._proxy_pid = role, proc.pid
            self._proxy_mode = ProxyMode.UNKNOWN
            self._proxy_start_gen = gen
            if not wait:
                return f"; proxy started as {role}, to answer once it has the VM's tap"
            return self._await_started_proxy(role, proc, gen)

    def _proxy_awaits_tap(self) -> bool:
        """A secondary's proxy that we started runs and waits for its VM's tap: no VM is
        here yet, or only its incoming migration (Backend.tap_comes_with_vm)."""
        proc = self._proxy_proc
        return (self._proxy_role == "secondary" and proc is not None and proc.poll() is None
                and (not self._vm.reachable or self._vm.status == "inmigrate"))

    def _await_proxy(self, role: str) -> str:
        """Wait for the answer of the proxy `_ensure_proxy(role, wait=False)` started; ""
        when it answers already (or none was started)."""
        with self._proxy_lock:
            proc = self._proxy_proc
            if proc is None or self._proxy_role != role:
                return ""
            t0 = time.monotonic()
            self._await_started_proxy(role, proc, self._proxy_start_gen)
            return f"; the proxy answered {time.monotonic() - t0:.1f} s later"

    def _await_started_proxy(self, role: str, proc: subprocess.Popen[bytes], gen: int) -> str:
        """The proxy must hold output before the pair is protected: wait for its hello, on
        a connection newer (`gen`) than any to the proxy it replaces. Under _proxy_lock."""
        deadline = time.monotonic() + self.cfg.timing.proxy_start_timeout
        while self.proxy is not None and time.monotonic() < deadline:
            link = self.proxy
            if link.connected and link.generation != gen and link.send({"type": "status"}):
                if self._fenced:
                    # Fail closed now: a fence decided while the proxy started is not
                    # in its command line, and the loop would tell it only a cycle
                    # later (found by the pair model; its hello makes it told again).
                    link.send({"type": "fence"})
                return f"; proxy started as {role}"
            if proc.poll() is not None:
                raise RuntimeError(f"colo-proxy ({role}) exited with {proc.returncode}")
            time.sleep(0.05)
        if self.proxy is None:
            return f"; proxy started as {role}"
        raise RuntimeError(f"colo-proxy ({role}) did not answer on {self.cfg.proxy_socket} "
                           f"within {self.cfg.timing.proxy_start_timeout:g} s (raise "
                           "timing.proxy_start_timeout if it compiles its programs slowly)")

    def _running_proxy(self) -> tuple[str, int] | None:
        """(role, pid) of a proxy that answers on our socket though it is not our child: one
        a previous orchestrator started. None when nothing listens there."""
        link = self.proxy
        if link is None or not link.listening():
            return None
        deadline = time.monotonic() + self.cfg.timing.proxy_start_timeout
        while time.monotonic() < deadline:
            hello = link.hello
            if hello is not None and link.connected:
                pid = hello.get("pid")
                if not isinstance(pid, int) or pid <= 0:
                    raise RuntimeError(f"the proxy on {link.path} does not say its pid "
                                       "(an older colo-proxy): stop it, and we start ours")
                return str(hello.get("role", "")), pid
            if not link.listening():
                return None
            time.sleep(0.05)
        raise RuntimeError(f"something listens on {link.path} but does not answer hello "
                           f"within {self.cfg.timing.proxy_start_timeout:g} s "
                           "(timing.proxy_start_timeout)")

    def _terminate_pid(self, pid: int) -> None:
        """Stop a proxy that is not our child, and wait until it is gone (its lock with it)."""
        for sig, wait in ((signal.SIGTERM, TERM_WAIT_S), (signal.SIGKILL, KILL_WAIT_S)):
            if not _proxy_pid_alive(pid):
                return
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _proxy_pid_alive(pid):
                    return
                time.sleep(0.05)
        raise RuntimeError(f"colo-proxy pid {pid} did not exit after SIGKILL")

    def _stop_proxy(self) -> None:
        """At our clean exit: the proxy we run or adopted goes with us, as it always has."""
        if self._proxy_proc is not None and self._proxy_proc.poll() is None:
            self._proxy_proc.terminate()
        elif self._proxy_pid is not None and _proxy_pid_alive(self._proxy_pid):
            os.kill(self._proxy_pid, signal.SIGTERM)

    def _proxy_running(self) -> bool:
        proc = self._proxy_proc
        if proc is not None:
            return proc.poll() is None
        return self._proxy_pid is not None and _proxy_pid_alive(self._proxy_pid)

    def _supervise_proxy(self) -> None:
        """Loop: start the proxy again when it has died (on a thread: it takes seconds)."""
        if self.proxy is None or not self._proxy_role or self.proxy.connected:
            return  # none configured, the boot start has not chosen one yet, or it answers
        t = self._proxy_restarter
        if (t is not None and t.is_alive()) or self._proxy_lock.locked():
            return
        if self._proxy_running() or time.monotonic() < self._proxy_restart_after:
            return
        proc = self._proxy_proc
        # Exit status 1: it failed closed on an exception (its rules and filters stay and
        # hold the output); a signal's is negative (-9: SIGKILL).
        status = (f" (exit status {proc.returncode})"
                  if proc is not None and proc.returncode is not None else "")
        self._restart_proxy(f"colo-proxy ({self._proxy_role}, pid {self._proxy_pid}) is "
                            f"gone{status}")

    def _restart_proxy(self, why: str) -> None:
        """Bring up the proxy in the role we gave it, on a thread (at most one at a time,
        and not again within RESTART_BACKOFF_S)."""
        t = self._proxy_restarter
        if (t is not None and t.is_alive()) or self._proxy_lock.locked():
            return
        self._proxy_restart_after = time.monotonic() + RESTART_BACKOFF_S
        role = self._proxy_role
        log.warning("%s: starting it as %s", why, role)

        def restart() -> None:
            try:
                log.info("colo-proxy restarted%s", self._ensure_proxy(role))
            except Exception as exc:  # reported; the next cycle tries again
                log.error("could not restart colo-proxy: %s", exc)

        self._proxy_restarter = threading.Thread(target=restart, name="proxy-restart",
                                                 daemon=True)
        self._proxy_restarter.start()

    def _take_hello(self) -> None:
        """Loop: a new connection to the proxy. What it does is what its hello says, not
        what we told the one before; a primary's proxy that was replaced while protected
        compares with a fresh comparator, so a checkpoint brings it (and the secondary's
        offsets) in step with the VMs."""
        link = self.proxy
        if link is None or link.generation == self._proxy_gen or not link.connected:
            return
        hello = link.hello or {}
        first = self._proxy_gen == 0
        self._proxy_gen = link.generation
        # A proxy started (or restarted) after the fence knows nothing of it: tell it again
        # unless its hello shows it already fenced. A fenced proxy stays fenced whatever
        # we thought: a restarted orchestrator unfenced it at this hello while its peer
        # served alone (found by the pair model); decide lifts a fence, never a hello.
        if hello.get("mode") == "fenced" and not self._fenced:
            log.warning("colo-proxy says our VM's output is fenced: keeping it fenced")
            self._fenced = True
        self._fence_told = (hello.get("mode") == "fenced") == self._fenced
        self._proxy_mode = HELLO_MODES.get(str(hello.get("mode")), ProxyMode.UNKNOWN)
        pid = hello.get("pid")
        log.info("colo-proxy connected: %s, %s, pid %s", hello.get("role"), hello.get("mode"),
                 pid)
        restarted = not first and pid != self._proxy_hello_pid
        self._proxy_hello_pid = pid if isinstance(pid, int) else None
        role = str(hello.get("role", ""))
        if self._proxy_role and role != self._proxy_role and not self._proxy_lock.locked():
            # Someone else's proxy, in the role we did not give ours: replace it.
            self._restart_proxy(f"colo-proxy pid {pid} answers as {role or '?'}")
        if (restarted and self.role == "primary" and hello.get("role") == "primary"
                and self.machine.state is State.PROTECTED):
            with self._lock:
                self._requests.append("proxy_restart")

    def _wanted_proxy_mode(self) -> ProxyMode | None:
        """What the loop wants the proxy to do now; None where an action owns it."""
        hello = self.proxy.hello if self.proxy is not None else None
        want = WANTED.get(self.role, {}).get(self.machine.state)
        if want is ProxyMode.COMPARE and (hello or {}).get("role") != self.role:
            return None  # a proxy in the other role is about to be replaced
        return want

    def _sync_proxy_mode(self) -> None:
        """Tell the proxy what the loop wants of it, until it has taken it."""
        link = self.proxy
        if link is None or not link.connected:
            return
        self._take_hello()
        # Only in states where no action owns the proxy: during SYNCING the action thread
        # switches it to comparing (resume) the moment COLO starts, before this loop sees
        # the state change; a pause sent then would let output pass uncompared.
        with self._lock:
            busy = self._future is not None and not self._future.done()
            colo_runs = self._vm.colo_mode in ("primary", "secondary")
        want = self._wanted_proxy_mode()
        if busy or want is None or self._proxy_mode is want or self._fenced:
            # Fenced, the proxy refuses pause and resume: only unfence leaves the fence.
            return
        if want is ProxyMode.PASS and colo_runs:
            # COLO runs, so the SVM's output can still come: pausing would let output pass
            # uncompared. (A restarted orchestrator passing WAITING did exactly that.) Not
            # only when we believe the proxy compares: one whose hello said "fenced" is
            # UNKNOWN to us and compares once unfenced. The pair model found that one: a
            # primary's proxy restarted on the failsafe, HOLDING then RESUME, the resume
            # checkpoint failed (DEGRADED), and the pause let output pass uncompared
            # while the sync key said "protected". Leaving COLO is TakeOver's, after S6.
            return
        if link.send({"type": MESSAGES[want]}):
            self._proxy_mode = want
            if want is ProxyMode.COMPARE and self.role == "primary":
                with self._lock:  # a fresh comparator: bring the SVM in step first
                    self._requests.append("proxy_restart")
        # Not sent (the proxy went, or refused): the next cycle tries again.

    def proxy_view(self) -> dict[str, Any]:
        """The proxy as the loop last knew it: for the status, heartbeat and the check."""
        link = self.proxy
        hello = (link.hello if link is not None else None) or {}
        if link is None or not link.connected:
            return {"connected": False, "role": "", "mode": "", "pid": None}
        return {"connected": True, "role": str(hello.get("role", "")),
                "mode": self._proxy_mode.label or str(hello.get("mode", "")),
                "pid": hello.get("pid")}

    def _protection_verified(self, peer: dict[str, Any] | None) -> bool:
        """PROTECTED, and shown to be: our proxy and the peer's (as its current heartbeat
        says) are connected in their roles and compare or steer. False while either is
        missing, restarting, paused or in the wrong role, whatever the state says."""
        if self.machine.state not in (State.PROTECTED, State.CHECKPOINTING) or peer is None:
            return False
        peer_role = "secondary" if self.role == "primary" else "primary"
        if peer.get("role") != peer_role or peer.get("state") not in (
                int(State.PROTECTED), int(State.CHECKPOINTING)):
            return False
        if self.proxy is None:  # a pair without proxies: neither host runs one
            return (peer.get("proxy_role", ""), peer.get("proxy_mode", "")) == ("", "")
        ours = self.proxy_view()
        return (ours["connected"] and ours["role"] == self.role
                and ours["mode"] in _PROTECTING[self.role]
                and peer.get("proxy_role") == peer_role
                and peer.get("proxy_mode") in _PROTECTING[peer_role])

    def _note_peer_proxy(self, peer: dict[str, Any] | None) -> None:
        """Primary: the secondary's proxy was replaced (its heartbeat names another pid).
        The new one has no sequence offsets for open connections, so the SVM misreads
        their segments and its output stops matching; a checkpoint now, rather than
        compare_timeout later (5 s in the lab), resets them."""
        pid = peer.get("proxy_pid") if peer is not None else None
        if not isinstance(pid, int):
            return  # no heartbeat, or its proxy is down: wait for the one that comes
        last, self._peer_proxy_pid = self._peer_proxy_pid, pid
        if (last is not None and pid != last and self.role == "primary"
                and self.machine.state is State.PROTECTED):
            log.info("the peer's colo-proxy was replaced (pid %d, was %d): checkpointing",
                     pid, last)
            with self._lock:
                self._requests.append("proxy_restart")

    def _start_proxy_at_boot(self, observed: Callable[[], VmObs | None]) -> None:
        """Keep a proxy that runs in the role our VM has (we were restarted), else start
        one in our role. Waits for the first look at the VM: COLO's mode wins over the
        config's role, as in decide's adoption. Without a VM, nothing is started here."""
        deadline = time.monotonic() + self.cfg.timing.proxy_start_timeout
        obs = observed()
        while obs is None and time.monotonic() < deadline:
            time.sleep(0.05)
            obs = observed()
        if obs is not None and not obs.reachable and not obs.hung:
            # No VM runs: its start starts the proxy in the role decided then (_start_vm).
            # The config's role may be the wrong one: a host back from its death, whose
            # peer serves, starts as secondary; a primary proxy started here first was
            # restarted as secondary 10 s later (measured by `colo-lab chaos`, seed 6:
            # 10 of the 28 s the rebooted host spent in STARTING).
            return
        # The role decide's adoption gives (`adopted_role`), not the config's: failovers
        # swap the roles.
        seen = obs is not None and obs.reachable and not obs.hung
        role = adopted_role(obs, self.role) if obs is not None and seen else self.role
        try:
            if obs is not None and seen and serves_outside_colo(obs):
                # A proxy of either role passes the output of a VM that serves outside
                # COLO: a secondary's since its take-over, until the re-protection's
                # EnterColo starts a primary one. Keep the one that runs: replacing it
                # held the output again for the new proxy's start (3.8 s in the lab,
                # tests/system/orch/test_restart.py, with a secondary's proxy replaced).
                found = self._running_proxy()
                if found is not None and found[0] in ("primary", "secondary"):
                    role = found[0]
            out = self._ensure_proxy(role)
            if out:
                log.info("colo-proxy at start%s", out)
        except Exception as exc:  # reported, and retried by the next start/enter action
            log.error("could not start colo-proxy: %s", exc)
