"""Running external commands with errors that name the command and its output."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from colo_lab.errors import LabError

# Debian package that provides each external command the lab runs, for the error
# message when one is missing.
PROVIDERS = {
    "ip": "iproute2",
    "tc": "iproute2",
    "iptables": "iptables",
    "tcpdump": "tcpdump",
    "busybox": "busybox-static",
    "cpio": "cpio",
    "curl": "curl",
    "iperf3": "iperf3",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "dpkg-source": "dpkg-dev",
    "patch": "patch",
    "ninja": "ninja-build",
    "meson": "meson",
    "qemu-img": "qemu-utils",
    "mkfs.ext4": "e2fsprogs",
    "qemu-system-x86_64": "qemu-system-x86",
    "depmod": "kmod",
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
}


def need(tool: str) -> str:
    """Path of `tool`, or a LabError naming the package and the bootstrap."""
    path = shutil.which(tool)
    if path is None:
        pkg = PROVIDERS.get(tool, tool)
        raise LabError(
            f"missing dependency: '{tool}' is not installed",
            f"run scripts/bootstrap (or: apt-get install {pkg})",
        )
    return path


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60.0,
    input: bytes | None = None,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv, capturing output; on failure raise LabError with the command's stderr."""
    need(argv[0])
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, timeout=timeout, input=input, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"command timed out after {timeout:.0f} s: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        last = err[-1] if err else f"exit {proc.returncode}"
        raise LabError(f"command failed: {' '.join(argv)}: {last}")
    return proc


def out(argv: Sequence[str], *, timeout: float = 60.0) -> str:
    """stdout of a command that must succeed."""
    return run(argv, timeout=timeout).stdout.decode()
