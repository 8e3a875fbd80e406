"""Network namespace plumbing for the lab, over the `ip` command.

The lab shells out to iproute2 rather than using pyroute2 here because every
step must also be reproducible by hand by an operator reading the logs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from colo_lab.cmd import out, run
from colo_lab.errors import LabError

NETNS_DIR = Path("/run/netns")


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def list_ns(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def add(ns: str) -> None:
    if exists(ns):
        raise LabError(
            f"network namespace '{ns}' already exists (busy: another lab of that name is up)",
            "run 'colo-lab down' for it, or choose another --name",
        )
    run(["ip", "netns", "add", ns])
    ip(ns, "link", "set", "lo", "up")


def ip(ns: str | None, *args: str) -> str:
    argv = ["ip", "-n", ns, *args] if ns else ["ip", *args]
    return out(argv)


def sh(ns: str, argv: Sequence[str], *, timeout: float = 60.0, check: bool = True,
       input: bytes | None = None) -> str:
    """Run a command inside a namespace (`input` on its stdin) and return its stdout."""
    proc = run(["ip", "netns", "exec", ns, *argv], timeout=timeout, check=check, input=input)
    return proc.stdout.decode()


def popen(ns: str, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)  # type: ignore[call-overload, no-any-return]


def sysctl(ns: str, key: str, value: str) -> None:
    sh(ns, ["sysctl", "-q", "-w", f"{key}={value}"])


def veth(a_ns: str, a_name: str, b_ns: str, b_name: str, *, a_mac: str = "",
         b_mac: str = "") -> None:
    """A veth pair with one end in each namespace (created in a_ns, so names never clash);
    each end with the given MAC, or a random one."""
    ip(a_ns, "link", "add", a_name, *(["address", a_mac] if a_mac else []), "type", "veth",
       "peer", "name", b_name, *(["address", b_mac] if b_mac else []), "netns", b_ns)
    ip(a_ns, "link", "set", a_name, "up")
    ip(b_ns, "link", "set", b_name, "up")


def bridge(ns: str, name: str, ports: Sequence[str]) -> None:
    # No STP and no forwarding delay: ports forward the moment they come up, as
    # on a hypervisor host bridge.
    ip(ns, "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    for port in ports:
        ip(ns, "link", "set", port, "master", name)
    ip(ns, "link", "set", name, "up")


def tap(ns: str, name: str) -> None:
    ip(ns, "tuntap", "add", "dev", name, "mode", "tap")
    ip(ns, "link", "set", name, "up")


def pids(ns: str) -> list[int]:
    if not exists(ns):
        return []
    text = subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
    ).stdout
    return [int(x) for x in text.split()]


def kill_all(ns: str, *, grace: float = 3.0) -> None:
    """SIGTERM every process in ns, then SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        victims = pids(ns)
        for pid in victims:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while victims and time.monotonic() < deadline:
            victims = [p for p in victims if _alive(p)]
            if victims:
                time.sleep(0.05)
        if not victims:
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it holds no namespace resources.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def delete(ns: str) -> None:
    if exists(ns):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
