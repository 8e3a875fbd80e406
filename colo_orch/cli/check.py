"""`colo-orch check`: can this host run a protected VM? Each line says what and how to fix.

The test bed (`colo-lab`) knows where its patched QEMU is and runs the two-VM smoke
check; the product only runs it as a command, so that it installs and runs without it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from colo_orch.core.config import Config, ConfigError, load

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


LAB_MISSING = ("colo-lab (the test bed) is installed neither in {bindir} nor on PATH: "
               "install the colo source tree with scripts/bootstrap (or pip install -e . in it)")


def lab_command(python: str = sys.executable) -> list[str] | None:
    """The test bed's command, if installed: beside this Python (a venv's bin), else on PATH."""
    beside = Path(python).with_name("colo-lab")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("colo-lab")
    return [found] if found else None


def smoke_command(lab: list[str]) -> list[str]:
    return [*lab, "smoke", "--name", "check", "--checkpoints", "5"]


def _lab_qemu(lab: list[str] | None) -> str | None:
    """The lab's cached patched QEMU (it only reads its cache), or None."""
    if lab is None:
        return None
    try:
        res = subprocess.run([*lab, "qemu-path"], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = res.stdout.strip()
    return path if res.returncode == 0 and path else None


def _qemu(lab: list[str] | None = None) -> str | None:
    env = os.environ.get("COLO_QEMU")
    if env:
        return None if os.access(env, os.X_OK) else f"COLO_QEMU={env} is not executable"
    if _lab_qemu(lab) is None and not shutil.which("qemu-system-x86_64"):
        return "no QEMU: run 'colo-lab build' (patched QEMU) or install qemu-system-x86"
    return None


def _smoke(lab: list[str] | None) -> bool:
    """The two-VM COLO smoke check, run by the lab with its output going straight to ours."""
    if lab is None:
        print("FAIL QEMU can run COLO on this host: "
              + LAB_MISSING.format(bindir=Path(sys.executable).parent))
        return False
    print("running the two-VM COLO smoke check (colo-lab smoke)...", flush=True)
    proc = subprocess.Popen(smoke_command(lab))
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        # The lab got the same SIGINT: let it take its namespaces and VMs down first.
        rc = proc.wait()
    print(f"{'ok  ' if rc == 0 else 'FAIL'} QEMU can run COLO on this host"
          + ("" if rc == 0 else ": see the lines above; try the lab's patched QEMU"))
    return rc == 0


def is_local_address(host: str) -> bool | None:
    """Whether `host` (a name or an address) is an address of this machine: one we can bind
    to. None when the name does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except socket.gaierror:
        return None
    for family, _, _, _, addr in infos:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((addr[0], 0))
            except OSError:
                continue
            return True
    return False


def arbiter_problem(cfg: Config) -> str | None:
    """Why the configured arbiter cannot guard this pair, or None."""
    if cfg.arbiter == "local":
        host = cfg.peer_heartbeat.rsplit(":", 1)[0].strip("[]")
        local = is_local_address(host)
        if local:
            return None
        what = "does not resolve" if local is None else "is not an address of this machine"
        return (f'arbiter = "local" works only with both orchestrators on one machine, but '
                f"peer_heartbeat's host {host} {what}: use arbiter = \"etcd\" with "
                "etcd_endpoints (docs/ORCHESTRATOR.md, \"The arbiter\")")
    from colo_orch.daemon.etcd_arbiter import (
        EtcdClient,
        EtcdConfigError,
        EtcdError,
        settings_from_config,
    )

    try:
        settings = settings_from_config(cfg)
    except EtcdConfigError as exc:
        return str(exc)
    t = cfg.timing
    client = EtcdClient(settings, request_timeout=t.lease_ttl / 4)
    try:
        client.check(timeout=len(settings.endpoints) * t.lease_ttl / 4)
    except EtcdError as exc:
        return f"{exc}; start etcd or fix etcd_endpoints"
    return None


def api_problem(cfg: Config) -> str | None:
    """Why the API's token or TLS files cannot be used, or None."""
    from colo_orch.daemon.api import ApiError, read_token, tls_context

    try:
        if cfg.api_token_file:
            read_token(cfg.api_token_file)
        if cfg.api_tls_cert_file:
            tls_context(cfg.api_tls_cert_file, cfg.api_tls_key_file)
    except ApiError as exc:
        return str(exc)
    return None


def run_check(config: str | None, *, smoke: bool = False) -> int:
    lab = lab_command()
    checks: list[Check] = [
        ("BPF in the kernel", _bpf),
        ("bcc and kernel headers", _bcc),
        ("bridge netfilter", _br_netfilter),
        ("iptables", _tool("iptables", "iptables")),
        ("iproute2 (ip, tc)", _tool("tc", "iproute2")),
        ("QEMU binary", lambda: _qemu(lab)),
    ]
    if config:
        try:
            cfg: Config | None = load(config)
            problem = None
        except ConfigError as exc:
            cfg, problem = None, str(exc)
        checks.insert(0, ("config", lambda: problem))  # the error itself names the file
        if cfg is not None:
            checks.insert(1, ("arbiter", lambda: arbiter_problem(cfg)))
            checks.insert(2, ("API credentials", lambda: api_problem(cfg)))
    failed = 0
    for what, fn in checks:
        problem = fn()
        print(f"{'ok  ' if problem is None else 'FAIL'} {what}" + (f": {problem}" if problem else ""))
        failed += problem is not None
    if smoke and not failed:
        failed += not _smoke(lab)
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}", file=sys.stderr)
    return 0 if not failed else 1
