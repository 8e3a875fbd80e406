"""One QEMU VM of the lab: launch inside a host namespace, QMP, serial log, kill."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol

from colo_lab.errors import LabError
from colo_lab.guest import Guest
from colo_lab.qemu_build import FIRMWARE_ARGS
from colo_lab.wait import wait_until

# Lines a guest kernel prints when it is broken; a checkpoint that hands the SVM
# an inconsistent memory image shows up as one of these.
SERIAL_PROBLEMS = re.compile(
    r"Oops|Kernel panic|BUG: |general protection fault|is not a head|"
    r"Call Trace|unable to handle|soft lockup|rcu_sched self-detected"
)
READY = "colo-guest: service ready"


@dataclass
class VMSpec:
    name: str  # "pvm" or "svm"
    ns: str  # host namespace that holds the tap
    tap: str
    mac: str
    ip_cidr: str
    ip6_cidr: str = ""  # the guest's IPv6 address too (colo.ip6=), when given
    mem_mb: int = 256
    incoming: str | None = None  # "tcp:HOST:PORT" for a COLO secondary
    extra_args: list[str] = field(default_factory=list)
    accel: str = "tcg"


class VM:
    def __init__(self, spec: VMSpec, run_dir: Path, qemu: Path, guest: Guest) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.qemu = qemu
        self.guest = guest
        self.proc: subprocess.Popen[bytes] | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self._events: QEMUMonitorProtocol | None = None

    # Paths -----------------------------------------------------------------
    @property
    def qmp_path(self) -> Path:
        return self.run_dir / f"{self.spec.name}.qmp"

    @property
    def events_path(self) -> Path:
        return self.run_dir / f"{self.spec.name}-events.qmp"

    @property
    def serial_path(self) -> Path:
        return self.run_dir / f"{self.spec.name}-serial.log"

    @property
    def stderr_path(self) -> Path:
        return self.run_dir / f"{self.spec.name}-qemu.log"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / f"{self.spec.name}.pid"

    def argv(self) -> list[str]:
        s = self.spec
        accel = ["-accel", "kvm"] if s.accel == "kvm" else ["-accel", "tcg"]
        argv = [
            str(self.qemu), *FIRMWARE_ARGS, *accel,
            "-name", s.name,
            "-m", str(s.mem_mb), "-smp", "1",
            "-display", "none", "-nodefaults", "-no-reboot",
            "-kernel", str(self.guest.kernel), "-initrd", str(self.guest.initrd),
            "-append", f"console=ttyS0 quiet panic=-1 colo.ip={s.ip_cidr}"
                       + (f" colo.ip6={s.ip6_cidr}" if s.ip6_cidr else ""),
            "-serial", f"file:{self.serial_path}",
            "-netdev", f"tap,id=hn0,ifname={s.tap},script=no,downscript=no,vhost=off",
            "-device", f"virtio-net-pci,netdev=hn0,mac={s.mac}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-qmp", f"unix:{self.events_path},server=on,wait=off",
            "-pidfile", str(self.pid_path),
            *s.extra_args,
        ]
        if s.incoming:
            argv += ["-incoming", s.incoming]
        return argv

    # Lifecycle -------------------------------------------------------------
    def start(self, *, timeout: float = 20.0) -> None:
        for p in (self.qmp_path, self.events_path, self.serial_path, self.pid_path):
            p.unlink(missing_ok=True)
        with open(self.stderr_path, "ab") as err:
            # A session of its own: the VM outlives the `colo-lab up` that started it.
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.spec.ns, *self.argv()],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
            )
        proc = self.proc

        def sockets_open() -> bool:
            if self.qmp_path.exists() and self.events_path.exists():
                return True
            if proc.poll() is not None:
                raise LabError(
                    f"QEMU for {self.spec.name} exited at start: {self._stderr_tail()}",
                    f"see {self.stderr_path}",
                )
            return False

        wait_until(sockets_open, timeout, f"QEMU for {self.spec.name} to open its QMP sockets",
                   every=0.02)

    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.close_monitors()
        pid = self.pid()
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the guest says its service listens (or fail with its serial log)."""
        self.wait_serial(READY, timeout)

    def wait_serial(self, text: str, timeout: float) -> None:
        def said() -> bool:
            if text in self.serial():
                return True
            if not self.alive():
                raise LabError(f"{self.spec.name} died before '{text}': {self._stderr_tail()}")
            return False

        def tail() -> str:
            return "serial: " + " | ".join(self.serial().strip().splitlines()[-5:])

        wait_until(said, timeout, f"'{text}' on {self.spec.name}'s serial console", every=0.1,
                   detail=tail)

    def serial(self) -> str:
        try:
            return self.serial_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def serial_problems(self) -> list[str]:
        return [ln for ln in self.serial().splitlines() if SERIAL_PROBLEMS.search(ln)]

    def _stderr_tail(self) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "(no output)"
        return lines[-1] if lines else "(no output)"

    # QMP -------------------------------------------------------------------
    def qmp(self) -> QEMUMonitorProtocol:
        """The command monitor, connected on first use."""
        if self._qmp is None:
            self._qmp = _connect(self.qmp_path)
        return self._qmp

    def events(self) -> QEMUMonitorProtocol:
        """The second monitor, used only to read events so commands never swallow them."""
        if self._events is None:
            self._events = _connect(self.events_path)
        return self._events

    def cmd(self, name: str, **args: Any) -> Any:
        reply = self.qmp().cmd_raw(name, args or None)
        if "error" in reply:
            raise LabError(f"{self.spec.name}: QMP {name} failed: {reply['error'].get('desc')}")
        return reply.get("return")

    def hmp(self, line: str) -> str:
        return str(self.cmd("human-monitor-command", **{"command-line": line}))

    def close_monitors(self) -> None:
        for mon in (self._qmp, self._events):
            if mon is not None:
                try:
                    mon.close()
                except Exception:  # a dead QEMU's socket may fail in any way on close
                    pass
        self._qmp = self._events = None


def _connect(path: Path) -> QEMUMonitorProtocol:
    mon = QEMUMonitorProtocol(str(path))
    try:
        mon.connect(negotiate=True)
    except Exception as exc:  # qemu.qmp raises several unrelated types on connect
        raise LabError(f"cannot connect to QMP socket {path}: {exc}") from exc
    mon.settimeout(30.0)
    return mon
