"""Choose KVM only where it really boots the lab guest, TCG otherwise.

`/dev/kvm` existing is not enough: on some hosts it is a paravirtual flavour
whose SeaBIOS runs but whose standard kernels hang after "Probing EDD". So the
lab boots its own guest once under KVM and keeps the verdict in the cache,
keyed by the host kernel, the QEMU binary and the guest.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from colo_lab.guest import Guest
from colo_lab.paths import cache_dir
from colo_lab.qemu_build import FIRMWARE_ARGS

PROBE_TIMEOUT = 30.0
READY = "colo-guest: service ready"


def choose_accel(qemu: Path, guest: Guest) -> str:
    forced = os.environ.get("COLO_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    key = f"{os.uname().release}|{qemu}|{qemu.stat().st_mtime_ns}|{guest.kernel}"
    cache = cache_dir() / "accel.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = "kvm" if _kvm_boots(qemu, guest) else "tcg"
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1))
    return str(known[key])


def _kvm_boots(qemu: Path, guest: Guest) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serial.log"
        argv = [
            str(qemu), *FIRMWARE_ARGS, "-accel", "kvm", "-m", "256", "-smp", "1",
            "-display", "none", "-nodefaults", "-no-reboot",
            "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
            "-append", "console=ttyS0 quiet panic=-1", "-serial", f"file:{log}",
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + PROBE_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                if log.exists() and READY in log.read_text(errors="replace"):
                    return True
                time.sleep(0.2)
            return False
        finally:
            proc.kill()
            proc.wait()
