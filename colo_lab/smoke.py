"""The lab's COLO smoke check: both VMs serve, COLO starts, N checkpoints pass, the SVM is sound.

It answers one question for an operator or a test: can this QEMU, on this host,
really run COLO? It is also the demo until the orchestrator exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from colo_lab.colo import EventLog, checkpoint, enter_colo
from colo_lab.errors import LabError
from colo_lab.lab import MIG_SECONDARY, MIGRATION_PORT, Lab

HOME_PAGE = b"colo lab service\n"


@dataclass
class SmokeResult:
    accel: str = ""
    boot_seconds: float = 0.0
    colo_seconds: float = 0.0
    checkpoints: int = 0
    pause_ms: list[float] = field(default_factory=list)
    svm_answers: bool = False
    serial_problems: list[str] = field(default_factory=list)

    def ok(self, wanted: int) -> bool:
        return self.checkpoints >= wanted and self.svm_answers and not self.serial_problems


def reach_each_vm(lab: Lab, say: Callable[[str], None]) -> None:
    """Reach the PVM, then the SVM alone, from the client namespace, through the LAN."""
    lab.wait_http("/", HOME_PAGE)
    code, body = lab.http("/echo", method="POST", data=b"ping from client")
    if (code, body) != (200, b"ping from client"):
        raise LabError(f"PVM echo answered {code} {body!r}")
    say("PVM serves the client")
    lab.set_uplink("primary", False)
    lab.set_uplink("secondary", True)
    try:
        lab.wait_http("/", HOME_PAGE)
        say("SVM serves the client (PVM's uplink down)")
    finally:
        lab.set_uplink("secondary", False)
        lab.set_uplink("primary", True)


def run_smoke(lab: Lab, checkpoints: int, say: Callable[[str], None]) -> SmokeResult:
    """Run on a lab that is up with a standalone SVM; leaves the lab up for the caller."""
    res = SmokeResult(accel=lab.accel)
    reach_each_vm(lab, say)
    # A COLO secondary starts empty, waiting for the PVM's state: restart it so.
    svm = lab.start_vm("secondary", incoming=True)
    pvm = lab.vms["primary"]
    logs = [EventLog(pvm), EventLog(svm)]
    for log in logs:
        log.vm.events()  # connect before the first event can happen
    res.colo_seconds = enter_colo(pvm, svm, f"tcp:{MIG_SECONDARY}:{MIGRATION_PORT}")
    say(f"COLO state reached in {res.colo_seconds:.2f} s")
    for i in range(checkpoints):
        res.pause_ms.append(checkpoint(pvm, logs) * 1000)
        res.checkpoints = i + 1
        # Keep the guest busy between checkpoints so pages really change.
        lab.http(f"/kv/k{i}", method="PUT", data=f"value {i}".encode())
        if (i + 1) % 5 == 0:
            say(f"{i + 1}/{checkpoints} checkpoints (last took {res.pause_ms[-1]:.0f} ms)")
    # The SVM alone must still answer correctly: put it on the LAN instead of the PVM.
    lab.set_uplink("primary", False)
    lab.set_uplink("secondary", True)
    try:
        lab.wait_http("/", HOME_PAGE, timeout=30)
        code, body = lab.http(f"/kv/k{checkpoints - 2}")
        res.svm_answers = code == 200 and body == f"value {checkpoints - 2}".encode()
        say(f"SVM answers after {checkpoints} checkpoints: {res.svm_answers}")
    finally:
        lab.set_uplink("secondary", False)
        lab.set_uplink("primary", True)
    res.serial_problems = pvm.serial_problems() + svm.serial_problems()
    return res


def timed_up(lab: Lab, say: Callable[[str], None]) -> float:
    start = time.monotonic()
    lab.up(secondary="standalone")
    took = time.monotonic() - start
    say(f"lab '{lab.name}' up in {took:.1f} s (accel {lab.accel}); both VMs booted")
    return took
