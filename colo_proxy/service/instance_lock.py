"""One proxy per VM: an exclusive lock per instance, taken before any kernel state is touched.

Two proxies of one instance would share a queue number, rules tagged alike and filters on
the same tap: the second one could not bind the queue, and on its way out removed the
first one's rules and filters, leaving the VM's output uncompared. So a proxy takes
`<directory>/<instance>.lock` with flock(2) first; a second one finds it taken, names the
pid written in it and exits, having changed nothing. The kernel drops the lock when its
holder dies, however it dies, so a crash never leaves a stale lock behind. The file itself
stays: unlinking a lock file lets a third process lock a new inode beside a live holder.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_DIR = Path("/run/colo-proxy")


class AlreadyRunning(RuntimeError):
    def __init__(self, instance: str, pid: int | None, path: Path) -> None:
        who = f"pid {pid}" if pid else "its pid not yet written"
        super().__init__(
            f"instance {instance!r} already runs ({who}, lock {path}): stop that proxy "
            "first, or give this one another --instance; nothing was changed")
        self.instance = instance
        self.pid = pid
        self.path = path


def lock_path(instance: str, directory: Path = LOCK_DIR) -> Path:
    return directory / f"{instance}.lock"


def holder(instance: str, directory: Path = LOCK_DIR) -> int | None:
    """The pid written in the instance's lock file (the last proxy that held it)."""
    try:
        text = lock_path(instance, directory).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextmanager
def hold(instance: str, directory: Path = LOCK_DIR) -> Iterator[Path]:
    """Hold the instance's lock for the body, or raise AlreadyRunning at once."""
    directory.mkdir(parents=True, exist_ok=True)
    path = lock_path(instance, directory)
    # O_CLOEXEC: the iptables and tc commands we run must not inherit (and keep) the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(instance, holder(instance, directory), path) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


def running(directory: Path = LOCK_DIR) -> list[tuple[str, int | None]]:
    """The instances whose lock some process holds now, with the pid each wrote."""
    out: list[tuple[str, int | None]] = []
    for path in sorted(directory.glob("*.lock")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            out.append((path.stem, holder(path.stem, directory)))
        finally:
            os.close(fd)
    return out
