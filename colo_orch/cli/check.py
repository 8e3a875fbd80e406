"""`colo-orch check`: can this host run a protected VM? Each line says what and how to fix."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from colo_orch.core.config import ConfigError, load

Check = tuple[str, Callable[[], str | None]]  # (what, fn -> None if fine, else the fix)


def _bpf() -> str | None:
    if not Path("/proc/sys/net/core/bpf_jit_enable").exists():
        return "kernel without BPF JIT: use a kernel with CONFIG_BPF_JIT"
    return None


def _bcc() -> str | None:
    if importlib.util.find_spec("bcc") is None:
        return "apt-get install python3-bpfcc and use a venv with --system-site-packages"
    build = Path(f"/lib/modules/{os.uname().release}/build")
    if not build.exists():
        return f"{build} missing: run scripts/bootstrap (links Debian's kernel headers)"
    return None


def _br_netfilter() -> str | None:
    if not Path("/proc/sys/net/bridge").exists() and not Path("/sys/module/br_netfilter").exists():
        return "br_netfilter not available: modprobe br_netfilter (needed to queue bridged output)"
    return None


def _tool(name: str, pkg: str) -> Callable[[], str | None]:
    return lambda: None if shutil.which(name) else f"apt-get install {pkg}"


def _qemu() -> str | None:
    env = os.environ.get("COLO_QEMU")
    if env:
        return None if os.access(env, os.X_OK) else f"COLO_QEMU={env} is not executable"
    from colo_lab.qemu_build import cached_binary

    if cached_binary() is None and not shutil.which("qemu-system-x86_64"):
        return "no QEMU: run 'colo-lab build' (patched QEMU) or install qemu-system-x86"
    return None


def run_check(config: str | None, *, smoke: bool = False) -> int:
    checks: list[Check] = [
        ("BPF in the kernel", _bpf),
        ("bcc and kernel headers", _bcc),
        ("bridge netfilter", _br_netfilter),
        ("iptables", _tool("iptables", "iptables")),
        ("iproute2 (ip, tc)", _tool("tc", "iproute2")),
        ("QEMU binary", _qemu),
    ]
    if config:
        def _cfg() -> str | None:
            try:
                load(config)
            except ConfigError as exc:
                return str(exc)
            return None

        checks.insert(0, ("config", _cfg))  # the error itself names the file
    failed = 0
    for what, fn in checks:
        problem = fn()
        print(f"{'ok  ' if problem is None else 'FAIL'} {what}" + (f": {problem}" if problem else ""))
        failed += problem is not None
    if smoke and not failed:
        from colo_lab.cli import main as lab_main

        print("running the two-VM COLO smoke check (colo-lab smoke)...", flush=True)
        rc = lab_main(["smoke", "--name", "check", "--checkpoints", "5"])
        print(f"{'ok  ' if rc == 0 else 'FAIL'} QEMU can run COLO on this host"
              + ("" if rc == 0 else ": see the lines above; try the lab's patched QEMU"))
        failed += rc != 0
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}", file=sys.stderr)
    return 0 if not failed else 1
