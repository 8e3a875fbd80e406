"""The bare QMP recipe for QEMU COLO, as the lab's smoke check uses it.

Facts from QEMU 7.2 (docs/COLO-FT.txt and measured here):
- COLO needs the `x-colo` migration capability on both sides (harmless on 7.2's
  secondary, required on newer QEMU), then `migrate` from the PVM to the SVM's
  `-incoming` address. The PVM's `query-migrate` reports status "colo" once the
  first full state has been loaded by the SVM (about 0.7 s here).
- There is no checkpoint event. Each checkpoint shows as STOP then RESUME on the
  monitors of both VMs.
- `migrate-set-parameters x-checkpoint-delay=MS` while in COLO starts a
  checkpoint at once and re-arms the periodic timer to MS.
The orchestrator's QEMU backend drives the same commands with failure handling;
this module is only the shortest correct sequence, for the lab and its tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from colo_lab.errors import LabError
from colo_lab.vm import VM

# Long enough that no periodic checkpoint interleaves with the ones we trigger.
QUIET_DELAY_MS = 60_000


@dataclass
class EventLog:
    """Events seen on one VM's event monitor, oldest first."""

    vm: VM
    events: list[str] = field(default_factory=list)

    def poll(self, wait: float) -> None:
        try:
            ev = self.vm.events().pull_event(wait=wait)
        except TimeoutError:
            return
        while ev is not None:
            self.events.append(str(ev.get("event")))
            ev = self.vm.events().pull_event(wait=False)

    def checkpoints(self) -> int:
        """Completed STOP->RESUME pairs."""
        n = 0
        stopped = False
        for name in self.events:
            if name == "STOP":
                stopped = True
            elif name == "RESUME" and stopped:
                n += 1
                stopped = False
        return n


def migration_status(vm: VM) -> str:
    return str(vm.cmd("query-migrate").get("status", "none"))


def enter_colo(pvm: VM, svm: VM, uri: str, *, delay_ms: int = QUIET_DELAY_MS,
               timeout: float = 60.0) -> float:
    """Start COLO from pvm to svm (waiting on `uri`); returns seconds until status colo."""
    cap = [{"capability": "x-colo", "state": True}]
    svm.cmd("migrate-set-capabilities", capabilities=cap)
    pvm.cmd("migrate-set-capabilities", capabilities=cap)
    pvm.cmd("migrate-set-parameters", **{"x-checkpoint-delay": delay_ms})
    start = time.monotonic()
    pvm.cmd("migrate", uri=uri)
    while True:
        status = migration_status(pvm)
        if status == "colo":
            return time.monotonic() - start
        if status in ("failed", "cancelled"):
            raise LabError(f"COLO migration {status}: see {pvm.stderr_path}")
        if time.monotonic() - start > timeout:
            raise LabError(f"PVM not in COLO after {timeout:.0f} s (status {status})")
        time.sleep(0.05)


def checkpoint(pvm: VM, logs: list[EventLog], *, delay_ms: int = QUIET_DELAY_MS,
               timeout: float = 30.0) -> float:
    """Trigger one checkpoint now and wait until every VM in logs has stopped and resumed."""
    before = [log.checkpoints() for log in logs]
    start = time.monotonic()
    pvm.cmd("migrate-set-parameters", **{"x-checkpoint-delay": delay_ms})
    while any(log.checkpoints() <= b for log, b in zip(logs, before, strict=True)):
        if time.monotonic() - start > timeout:
            seen = "; ".join(f"{log.vm.spec.name}: {log.events[-6:]}" for log in logs)
            raise LabError(f"checkpoint did not complete in {timeout:.0f} s ({seen})")
        for log in logs:
            log.poll(0.05)
    return time.monotonic() - start
