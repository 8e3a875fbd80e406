"""The observer and SVM-watch threads of the orchestrator.

The observer queries the hypervisor (QMP can be slow) so that the loop only ever
reads the last observation. The SVM watcher tells a secondary's proxy when the
SVM resumed from a checkpoint, which only the hypervisor's events show.
"""

from __future__ import annotations

import threading
import time

from colo_orch.backends.base import Backend
from colo_orch.core.config import Config
from colo_orch.core.decide import VmObs
from colo_orch.core.state import Machine, State
from colo_orch.daemon.proxy_link import ProxyLink

# The observer spends at most a fifth of one CPU's time observing: it waits four times as
# long as the last observation took (loop_wait at least, OBSERVE_MAX_WAIT_S at most). A QMP
# query takes a millisecond, so QEMU is observed every loop_wait as before. Xen's is an
# `xl list` process: in the nested Xen lab's dom0 each took a large part of a second, and
# observed every loop_wait it kept a dom0 vcpu busy: `xl create` took 70 s there (8.7 s
# on an idle dom0) and the heartbeats lapsed during the initial sync.
OBSERVE_DUTY_FACTOR = 4.0
OBSERVE_MAX_WAIT_S = 2.0


def observe_wait(loop_wait: float, took: float) -> float:
    """Seconds from the end of one observation to the start of the next."""
    return max(loop_wait, min(OBSERVE_DUTY_FACTOR * took, OBSERVE_MAX_WAIT_S))


class Watchers:
    """Orchestrator part: the bodies of the observer and svm-events threads."""

    # Orchestrator.__init__ sets these; declared as what this part uses.
    cfg: Config
    backend: Backend
    proxy: ProxyLink | None
    role: str
    machine: Machine
    secondary_checkpoints: int
    _lock: threading.Lock
    _stop: threading.Event
    _vm: VmObs
    _vm_at: float
    _vm_began: float

    def _observe_loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            obs = self.backend.observe()
            with self._lock:
                self._vm, self._vm_at, self._vm_began = obs, time.monotonic(), began
            self._stop.wait(observe_wait(self.cfg.timing.loop_wait, self._vm_at - began))

    def _watch_secondary(self) -> None:
        """Secondary: tell our proxy each time the SVM resumed with a new checkpoint."""
        while not self._stop.is_set():
            if (self.role != "secondary" or self.machine.state is not State.PROTECTED
                    or self.proxy is None):
                self._stop.wait(self.cfg.timing.loop_wait)
                continue
            # Checked again after the wait: a take-over (FAILING_OVER) resumes the SVM as
            # well, and that RESUME is no checkpoint. Told as one, the proxy reset the
            # offsets it had just written for the role swap and dropped what it recorded
            # for a switchover (seen in the lab: "checkpoint done" after "failover").
            if (self.backend.wait_resume(0.2) and self.role == "secondary"
                    and self.machine.state is State.PROTECTED):
                # Offsets reset now: the SVM runs the PVM's TCP state.
                done: dict[str, object] = {"type": "checkpoint_done"}
                if self.backend.last_resume_wall is not None:
                    done["resumed_at"] = self.backend.last_resume_wall
                self.proxy.send(done)
                with self._lock:
                    self.secondary_checkpoints += 1
