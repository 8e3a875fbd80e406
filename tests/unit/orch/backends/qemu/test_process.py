"""colo_orch.backends.qemu.process: a replaced VM's process must be gone before the next starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from colo_orch.backends.qemu import process


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    # A stand-in for QEMU: ignores SIGTERM, like a VM that will not stop by itself.
    p = subprocess.Popen([sys.executable, "-c",
                          "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "print('ready', flush=True); time.sleep(60)", "-pidfile", "/run/x/vm.pid"],
                         stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"  # exec'd, SIGTERM ignored
    yield p
    p.kill()
    p.wait()


def test_pid_file_is_read_strictly(tmp_path: Path) -> None:
    f = tmp_path / "vm.pid"
    assert process.pid_from_file(str(f)) is None
    f.write_text("1234\n")
    assert process.pid_from_file(str(f)) == 1234
    for bad in ("", "abc", "-5", "0"):
        f.write_text(bad)
        assert process.pid_from_file(str(f)) is None


def test_a_zombie_holds_nothing_and_counts_as_gone(child: subprocess.Popen[bytes]) -> None:
    assert process.alive(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    # Not reaped yet: a zombie until wait(); its files and locks are already released.
    assert process.wait_gone([child.pid], 10) == []
    assert not process.alive(2**22 + 1)  # above pid_max: never a process


def test_identity_by_command_line(child: subprocess.Popen[bytes]) -> None:
    assert process.started_with(child.pid, "/run/x/vm.pid")
    assert not process.started_with(child.pid, "/run/other.pid")
    assert not process.started_with(os.getpid(), "/run/x/vm.pid")


def test_ensure_gone_kills_what_lingers(child: subprocess.Popen[bytes]) -> None:
    os.kill(child.pid, signal.SIGTERM)  # ignored
    said = process.ensure_gone([child.pid], grace=0.2)
    assert said.startswith(f"killed the previous VM (pid {child.pid})")
    assert child.wait(timeout=10) == -signal.SIGKILL


def test_ensure_gone_waits_for_an_exiting_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # A VM on its way out: it exits when its stdin closes, which happens once ensure_gone
    # has found it alive and begun to wait (not after a fixed time that a slow start or a
    # busy machine could outlast).
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
    real_wait_gone = process.wait_gone

    def exits_while_waited_for(pids: Iterable[int], timeout: float) -> list[int]:
        assert p.stdin is not None
        p.stdin.close()
        return real_wait_gone(pids, timeout)

    monkeypatch.setattr(process, "wait_gone", exits_while_waited_for)
    try:
        said = process.ensure_gone([p.pid], grace=20)
        assert said == f"waited for the previous VM (pid {p.pid}) to exit"
        assert p.wait(timeout=10) == 0  # it exited by itself: not killed
    finally:
        p.kill()
        p.wait()
    assert process.ensure_gone([p.pid], grace=1) == ""
