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

    def _observe_loop(self) -> None:
        while not self._stop.is_set():
            obs = self.backend.observe()
            with self._lock:
                self._vm, self._vm_at = obs, time.monotonic()
            self._stop.wait(self.cfg.timing.loop_wait)

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
