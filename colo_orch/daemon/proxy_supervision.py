"""Proxy supervision: the local colo-proxy process and what we last told it.

When the configuration gives proxy commands, the orchestrator runs colo-proxy in
this host's role and restarts it in the other role after a re-protection swaps
the roles. A primary's proxy compares only while the pair is protected; the
loop puts it back to pass-through whenever no action owns it.
"""

from __future__ import annotations

import enum
import logging
import subprocess
import threading
import time
from concurrent.futures import Future

from colo_orch.core.config import Config
from colo_orch.core.state import Machine, State
from colo_orch.daemon.proxy_link import ProxyLink

log = logging.getLogger("colo_orch")


class ProxyMode(enum.Enum):
    """What the orchestrator last told its proxy about comparing.

    Only a record of our own messages: a restarted proxy, or one that COLO is
    about to start on, has been told nothing yet (UNKNOWN), so the next message
    that matters is sent again rather than assumed.
    """

    UNKNOWN = "unknown"  # nothing said since the proxy started or an enter_colo began
    PASS = "pass"  # told to pause: output leaves uncompared
    COMPARE = "compare"  # told to resume: output waits for the SVM's


class ProxySupervision:
    """Orchestrator part: start, restart and switch the local proxy.

    Runs on the action thread (`_ensure_proxy`) and on the loop (`_sync_proxy_mode`).
    """

    # Orchestrator.__init__ sets these; declared as what this part uses.
    cfg: Config
    proxy: ProxyLink | None
    role: str
    machine: Machine
    _lock: threading.Lock
    _future: Future[str] | None
    _proxy_lock: threading.Lock
    _proxy_proc: subprocess.Popen[bytes] | None
    _proxy_role: str
    _proxy_mode: ProxyMode

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
            self._proxy_mode = ProxyMode.UNKNOWN
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
        if self._proxy_mode is not ProxyMode.PASS and self.proxy.send({"type": "pause"}):
            self._proxy_mode = ProxyMode.PASS

    def _start_proxy_at_boot(self) -> None:
        try:
            self._ensure_proxy(self.role)
        except Exception as exc:  # reported, and retried by the next start/enter action
            log.error("could not start colo-proxy: %s", exc)
