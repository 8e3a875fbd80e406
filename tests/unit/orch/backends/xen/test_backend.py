"""XenBackend's supervision of `xl remus`, with a stand-in `xl` replaying recorded runs and
the real libxl bridge (the stand-in's libxl side is the simulation)."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_lab.wait import wait_until
from colo_orch.backends.base import BackendError
from colo_orch.backends.xen.backend import (
    FAILED_OVER,
    PRIMARY_DESTROYED,
    READY,
    SECONDARY_LOST,
    XenBackend,
)
from colo_orch.backends.xen.libxl.bridge import LibxlBridge
from tests.support.libxl_sim import RestoreBackChannel
from tests.support.paths import REPO as ROOT

XL = [sys.executable, "-m", "tests.support.standin_xl"]


@pytest.fixture(autouse=True)
def _standin_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in `xl` imports the libxl simulation from tests.support."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))


@pytest.fixture
def bridge() -> Iterator[LibxlBridge]:
    b = LibxlBridge(("127.0.0.1", 0), None).start()
    yield b
    b.stop()


def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge,
            scenario: str) -> XenBackend:
    monkeypatch.setenv("XL_STANDIN_DIR", str(tmp_path))
    monkeypatch.setenv("XL_STANDIN_SCENARIO", scenario)
    monkeypatch.setenv("XL_STANDIN_CHECKPOINT", f"{bridge.address[0]}:{bridge.address[1]}")
    b = XenBackend("web", str(tmp_path / "web.cfg"), xl=XL,
                   bridge=bridge)
    assert b.observe().reachable is False
    assert "created" in b.start_vm(None)
    return b


def end_of_replication(b: XenBackend, tmp_path: Path) -> str:
    b.enter_colo("tcp:192.168.100.2:7420")
    (tmp_path / "end").touch()  # the stand-in replays the end of its recorded run
    r = b.remus
    assert r is not None and r.wait(lambda: r.exited, 10)
    return r.outcome()


def test_normal_run_reaches_colo_and_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 bridge: LibxlBridge) -> None:
    b = backend(tmp_path, monkeypatch, bridge, "normal")
    try:
        assert "in COLO" in b.enter_colo("tcp:192.168.100.2:7420")
        args = (tmp_path / "remus-args").read_text().split("\n")
        assert args[:7] == ["-c", "-p", "-u", "-e", "-s", "", "web"]
        assert args[7].endswith("-m colo_orch.backends.xen.connect 192.168.100.2 7420")
        obs = b.observe()
        assert (obs.running, obs.migration, obs.colo_mode) == (True, "colo", "primary")
        assert b.checkpoint().startswith("took")
        assert bridge.session is not None and bridge.session.stats.do_checkpoints >= 1
    finally:
        b.stop_vm()
    assert b.observe().reachable is False


def test_secondary_lost_leaves_the_primary_running_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    b = backend(tmp_path, monkeypatch, bridge, "secondary_lost")
    assert end_of_replication(b, tmp_path) == SECONDARY_LOST
    obs = b.observe()
    assert (obs.reachable, obs.running, obs.migration) == (True, True, "none")
    assert "running" in b.take_over("primary")
    with pytest.raises(BackendError):
        b.checkpoint()


def test_primary_lost_is_reported_as_our_vm_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    b = backend(tmp_path, monkeypatch, bridge, "primary_lost")
    assert end_of_replication(b, tmp_path) == PRIMARY_DESTROYED
    assert b.observe().reachable is False  # decide() fences: VM_LOST


def test_error_exit_fails_enter_colo_and_the_primary_keeps_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    b = backend(tmp_path, monkeypatch, bridge, "error")
    with pytest.raises(BackendError, match="suspend_failed"):
        b.enter_colo("tcp:192.168.100.2:7420")
    obs = b.observe()
    assert (obs.running, obs.migration) == (True, "failed")


@pytest.fixture
def secondary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              bridge: LibxlBridge) -> Iterator[tuple[XenBackend, socket.socket]]:
    """A secondary whose `xl migrate-receive` is ready, and the primary's end of its stream."""
    monkeypatch.setenv("XL_STANDIN_DIR", str(tmp_path))
    b = XenBackend("web", str(tmp_path / "web.cfg"), xl=XL,
                   bridge=bridge)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        assert "waiting for xl remus" in b.start_vm(f"tcp:127.0.0.1:{port}")
        # The primary's `xl remus` connects and streams.
        primary = socket.create_connection(("127.0.0.1", port), timeout=10)
        wait_until(lambda: b.receiver is not None and READY in b.receiver.marks, 10,
                   "xl migrate-receive to become ready", every=0.02)
        yield b, primary
        primary.close()
    finally:
        b.stop_vm()


def test_secondary_receives_then_takes_over_when_the_primary_stream_ends(
        tmp_path: Path, secondary: tuple[XenBackend, socket.socket]) -> None:
    b, primary = secondary
    primary.sendall(b"checkpoint stream")
    args = (tmp_path / "receive-args").read_text().split("\n")
    assert args == ["--colo", "--userspace-colo-proxy", "-e"]
    # The primary dies: take_over ends the stream itself if it hangs.
    assert "domain running" in b.take_over("secondary")
    assert b.receiver is not None and b.receiver.outcome() == FAILED_OVER
    assert (tmp_path / "web").exists() and not (tmp_path / "web--incoming").exists()


def test_wait_resume_blocks_for_its_timeout_while_the_svm_runs_on(
        secondary: tuple[XenBackend, socket.socket]) -> None:
    # The orchestrator's SVM watcher calls wait_resume(0.2) in a loop: returning early
    # would make that loop spin.
    b, _ = secondary
    calls, start = 0, time.monotonic()
    while time.monotonic() - start < 0.5:
        assert b.wait_resume(0.1) is False
        calls += 1
    assert calls <= 6, f"{calls} calls in 0.5 s"


def test_each_svm_resume_is_reported_once_and_the_primary_gets_every_byte(
        secondary: tuple[XenBackend, socket.socket]) -> None:
    b, primary = secondary
    primary.sendall(b"sync\n")  # the initial sync: the SVM runs the PVM's state
    assert b.wait_resume(10) is True
    assert b.wait_resume(0.1) is False
    primary.sendall(b"checkpoint\n")
    assert b.wait_resume(10) is True
    assert b.wait_resume(0.1) is False
    # The back channel reached the primary's libxl as xl wrote it.
    sim = RestoreBackChannel()
    sent = sim.start() + sim.initial_sync() + sim.checkpoint()
    got = b""
    while len(got) < len(sent):
        chunk = primary.recv(4096)
        assert chunk, f"the back channel ended after {got!r}"
        got += chunk
    assert got == sent
