"""The VM's QEMU process as the kernel sees it: is an earlier one still exiting?

A QEMU killed with SIGKILL is not gone at once: the kernel frees its memory before it
closes its files (do_exit calls exit_mm before exit_files), so for a moment it still
holds its pid-file lock, its disk-image locks and its listening ports. A new QEMU
started in that moment fails ("cannot create PID file: Cannot lock pid file") or
cannot bind its incoming port. Seen in the lab after a VM kill: the fenced host's
first restarted VM exited with status 1 and protection came back only after a retry.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def pid_from_file(pidfile: str) -> int | None:
    try:
        text = Path(pidfile).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def alive(pid: int) -> bool:
    """Running or exiting, not yet a zombie (a zombie holds nothing any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses and may hold spaces.
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state != ["Z"] and state != ["X"]


def started_with(pid: int, arg: str) -> bool:
    """pid's command line contains `arg` (tells our QEMU from a reused pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return arg.encode() in argv


def wait_gone(pids: Iterable[int], timeout: float, *,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """Wait until none of `pids` is alive; returns those still alive at the deadline."""
    left = [p for p in pids if alive(p)]
    deadline = clock() + timeout
    while left and clock() < deadline:
        sleep(0.02)
        left = [p for p in left if alive(p)]
    return left


def ensure_gone(pids: Iterable[int], grace: float) -> str:
    """Let exiting processes finish; SIGKILL what is still there after `grace` seconds
    (a VM being replaced must never run again). Returns what happened, "" if nothing."""
    pids = [p for p in pids if alive(p)]
    if not pids:
        return ""
    left = wait_gone(pids, grace)
    if not left:
        return f"waited for the previous VM (pid {', '.join(map(str, pids))}) to exit"
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    still = wait_gone(left, grace)
    if still:
        raise ProcessLookupError(
            f"the previous VM (pid {', '.join(map(str, still))}) survived SIGKILL for "
            f"{2 * grace:.0f} s")
    return f"killed the previous VM (pid {', '.join(map(str, left))}) after {grace:.0f} s"
