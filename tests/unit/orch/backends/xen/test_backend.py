"""XenBackend's supervision of `xl remus`, with a stand-in `xl` replaying recorded runs and
the real libxl bridge (the stand-in's libxl side is the simulation)."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
from colo_orch.backends.xen.tls import client_context, relay
from tests.support import tls
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
                   bridge=bridge, create_paused=True)
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


def test_a_domain_that_has_run_is_not_taken_into_colo(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    # Seen on Xen 4.17: libxl's COLO fails on a running domain after the first checkpoint,
    # and on one paused after it ran at the first suspend; it takes one created paused.
    b = backend(tmp_path, monkeypatch, bridge, "normal")
    assert b.observe().running is False  # created paused: runs once COLO has begun
    (tmp_path / "web").write_text("-b----")  # as after `xl unpause`: the domain has run
    with pytest.raises(BackendError, match="created paused"):
        b.enter_colo("tcp:192.168.100.2:7420")
    assert b.remus is None and not (tmp_path / "remus-args").exists()


def test_a_domain_created_paused_is_reported_as_never_run_until_it_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    b = backend(tmp_path, monkeypatch, bridge, "normal")
    assert "-p" in (tmp_path / "create-args").read_text().split("\n")
    obs = b.observe()
    assert (obs.running, obs.status, obs.never_ran) == (False, "paused", True)
    assert b.unpause_vm() == "domain web unpaused"
    obs = b.observe()
    assert (obs.running, obs.never_ran) == (True, False)
    # A second unpause (decided on a stale look) leaves it running: xl's would fail.
    assert b.unpause_vm() == "domain web runs already"
    # Paused again after it ran: not taken into COLO, and not reported as never run.
    (tmp_path / "web").write_text("--p---")
    assert b.observe().never_ran is False
    with pytest.raises(BackendError, match="paused but has run"):
        b.enter_colo("tcp:192.168.100.2:7420")
    assert b.remus is None and not (tmp_path / "remus-args").exists()
    # Destroyed and created anew: a new domain that has never run.
    b.stop_vm()
    b.start_vm(None)
    assert b.observe().never_ran is True


def test_a_restarted_backend_takes_a_paused_domain_as_never_run_only_without_cpu_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    """An orchestrator that restarts finds the domain its previous run created: `xl list`'s
    Time(s) tells whether it ran (Xen counts a domain's time as its vcpus' running time)."""
    backend(tmp_path, monkeypatch, bridge, "normal")
    adopted = XenBackend("web", str(tmp_path / "web.cfg"), xl=XL, bridge=bridge,
                         create_paused=True)
    assert adopted.observe().never_ran is True
    assert adopted.unpause_vm() == "domain web unpaused"
    (tmp_path / "web").write_text("--p---")  # paused again by hand
    again = XenBackend("web", str(tmp_path / "web.cfg"), xl=XL, bridge=bridge)
    obs = again.observe()
    assert (obs.running, obs.never_ran) == (False, False)


def test_without_create_paused_the_domain_runs_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    monkeypatch.setenv("XL_STANDIN_DIR", str(tmp_path))
    b = XenBackend("web", str(tmp_path / "web.cfg"), xl=XL, bridge=bridge)
    assert re.fullmatch(r"domain web created in [\d.]+ s", b.start_vm(None))
    assert "-p" not in (tmp_path / "create-args").read_text().split("\n")
    obs = b.observe()
    assert (obs.running, obs.never_ran) == (True, False)


def test_secondary_lost_leaves_the_primary_running_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    b = backend(tmp_path, monkeypatch, bridge, "secondary_lost")
    assert end_of_replication(b, tmp_path) == SECONDARY_LOST
    obs = b.observe()
    assert (obs.reachable, obs.running, obs.migration, obs.never_ran) == (True, True, "none",
                                                                          False)
    assert "running" in b.take_over("primary")
    with pytest.raises(BackendError):
        b.checkpoint()


def test_a_primary_left_suspended_by_an_aborted_xl_remus_is_resumed_at_the_take_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    """Run BH: xl remus ended without "Backup failed?" and its domain stayed `---ss-`;
    the orchestrator took it for running and served nobody."""
    b = backend(tmp_path, monkeypatch, bridge, "abort")
    b.resume = [*XL, "resume"]
    assert end_of_replication(b, tmp_path) == "exit -6"
    obs = b.observe()
    # QEMU's "colo" runstate: stopped by COLO, so DEGRADED goes alone (decide._degraded).
    assert (obs.reachable, obs.running, obs.status, obs.never_ran) == (True, False, "colo",
                                                                       False)
    assert "resumed from suspend" in b.take_over("primary")
    obs = b.observe()
    assert (obs.running, obs.status) == (True, "running")


def test_a_take_over_fails_loudly_when_libxl_cannot_resume_the_suspended_domain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    b = backend(tmp_path, monkeypatch, bridge, "abort")
    b.resume = [sys.executable, "-c", "import sys; sys.exit('libxl: no device model')"]
    end_of_replication(b, tmp_path)
    with pytest.raises(BackendError, match="could not resume it: libxl: no device model"):
        b.take_over("primary")


def test_the_resume_helper_says_why_where_libxl_has_no_hypervisor() -> None:
    """The real libxl (libxen-dev's, on this machine without Xen) through resume.py."""
    out = subprocess.run([sys.executable, "-m", "colo_orch.backends.xen.resume", "web"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1, out
    assert out.stderr.strip().splitlines()[-1].startswith("resume: "), out.stderr
    assert "Traceback" not in out.stderr
    usage = subprocess.run([sys.executable, "-m", "colo_orch.backends.xen.resume"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_primary_lost_is_reported_as_our_vm_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    b = backend(tmp_path, monkeypatch, bridge, "primary_lost")
    assert end_of_replication(b, tmp_path) == PRIMARY_DESTROYED
    assert b.observe().reachable is False  # decide() fences: VM_LOST


def test_error_exit_fails_enter_colo_and_the_primary_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    b = backend(tmp_path, monkeypatch, bridge, "error")
    with pytest.raises(BackendError, match="suspend_failed"):
        b.enter_colo("tcp:192.168.100.2:7420")
    obs = b.observe()
    # Still there, still paused as created: libxl unpauses it only after a checkpoint.
    assert (obs.reachable, obs.running, obs.migration) == (True, False, "failed")


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


def _bare_secondary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[XenBackend, int]:
    """A secondary's backend with no bridge, and a free port for its receiver."""
    monkeypatch.setenv("XL_STANDIN_DIR", str(tmp_path))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return XenBackend("web", str(tmp_path / "web.cfg"), xl=XL), probe.getsockname()[1]


def test_a_secondary_started_again_gets_its_port_while_the_first_waits_for_xl_remus(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiver thread blocks in accept(); a second start_vm (the orchestrator's retry)
    must find the port free (nested Xen lab: "Address already in use" at every retry)."""
    b, port = _bare_secondary(tmp_path, monkeypatch)
    try:
        for _ in range(3):
            assert "waiting for xl remus" in b.start_vm(f"tcp:127.0.0.1:{port}")
            # Waiting, before any connection, the VM is there to the orchestrator.
            obs = b.observe()
            assert obs.reachable and obs.status == "inmigrate", obs
        # The last one takes the stream.
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            wait_until(lambda: b.receiver is not None and READY in b.receiver.marks, 10,
                       "xl migrate-receive to become ready", every=0.02)
    finally:
        b.stop_vm()


def test_a_secondary_whose_receiver_died_waits_again_when_started_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run BG (nested Xen lab): the SVM's device model aborted, xl migrate-receive ended and
    the orchestrator fenced and started a new receiver; observe() still looked at the dead
    one, said "gone" 0.2 s into WAITING, and the secondary fenced and restarted every 6 s."""
    b, port = _bare_secondary(tmp_path, monkeypatch)
    try:
        b.start_vm(f"tcp:127.0.0.1:{port}")
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            wait_until(lambda: b.receiver is not None and READY in b.receiver.marks, 10,
                       "xl migrate-receive to become ready", every=0.02)
            assert b.receiver is not None
            b.receiver.proc.kill()
            wait_until(lambda: b.receiver is not None and b.receiver.exited, 10,
                       "xl migrate-receive to exit", every=0.02)
            (tmp_path / "web--incoming").unlink(missing_ok=True)  # libxl destroyed the SVM
            assert b.observe().reachable is False  # our VM is gone: right to fence
        assert "waiting for xl remus" in b.start_vm(f"tcp:127.0.0.1:{port}")
        obs = b.observe()
        assert obs.reachable and obs.status == "inmigrate", obs
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
    # Then (after the on_takeover hook) the LAN learns the SVM's port: the device model's
    # announce_self, asked without holding the take-over up.
    assert b.announce() == "; announcing"
    wait_until(lambda: (tmp_path / "monitor-commands").exists(), 10,
               "xl qemu-monitor-command", every=0.02)
    assert (tmp_path / "monitor-commands").read_text() == "announce_self\n"


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


def _until_closed(recv: Callable[[int], bytes]) -> None:
    """Read until the peer has closed (a reset counts: it hung up on unread bytes)."""
    try:
        while recv(4096):
            pass
    except ConnectionResetError:
        pass


def _read_exactly(read: Callable[[int], bytes], n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = read(n - len(got))
        assert chunk, f"the stream ended after {got!r}"
        got += chunk
    return got


def test_with_tls_the_receiver_takes_the_stream_only_from_a_certificate_of_the_pair(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bridge: LibxlBridge) -> None:
    """A plain connection, then a TLS client of another CA, are closed and xl never starts;
    connect.py with the primary's certificate then streams through, both ways."""
    monkeypatch.setenv("XL_STANDIN_DIR", str(tmp_path))
    ca = tls.make_ca(tmp_path / "ca")
    sec, pri = (tls.host_dir(ca, tmp_path / h, "127.0.0.1") for h in ("sec", "pri"))
    rogue = tls.host_dir(tls.make_ca(tmp_path / "rogue-ca", "rogue"), tmp_path / "rogue",
                         "127.0.0.1")
    b = XenBackend("web", str(tmp_path / "web.cfg"), xl=XL, bridge=bridge, tls_dir=str(sec))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        assert b.start_vm(f"tcp:127.0.0.1:{port}").endswith("(TLS x509)")
        # A plain sender: its bytes are a bad TLS hello, the receiver hangs up.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
            plain.sendall(b"sync\n" + b"\0" * 64)
            _until_closed(plain.recv)
        wait_until(lambda: b.refused == 1, 10, "the plain connection to be refused")
        # A sender that trusts the pair's CA but shows a certificate of another CA.
        ctx = client_context(str(rogue))
        ctx.load_verify_locations(sec / "ca-cert.pem")
        try:
            sock = relay(socket.create_connection(("127.0.0.1", port), timeout=10), ctx,
                         server_side=False, hostname="127.0.0.1")
            sock.sendall(b"sync\n")
            _until_closed(sock.recv)
        except (ssl.SSLError, OSError):
            pass  # TLS 1.2 ends the handshake itself; 1.3 right after it
        wait_until(lambda: b.refused == 2, 10, "the rogue certificate to be refused")
        assert b.receiver is None and not (tmp_path / "receive-args").exists()
        # The primary's own sender, as xl remus runs it.
        sender = subprocess.Popen(
            [sys.executable, "-m", "colo_orch.backends.xen.connect", "127.0.0.1", str(port),
             "--tls-dir", str(pri)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert sender.stdin is not None and sender.stdout is not None
        wait_until(lambda: b.receiver is not None and READY in b.receiver.marks, 10,
                   "xl migrate-receive to become ready", every=0.02)
        sender.stdin.write(b"sync\n")
        sender.stdin.flush()
        assert b.wait_resume(10) is True
        sim = RestoreBackChannel()
        want = sim.start() + sim.initial_sync()
        assert _read_exactly(sender.stdout.read1, len(want)) == want
        sender.stdin.close()  # xl remus ends its stream: the secondary fails over
        assert "domain running" in b.take_over("secondary")
        assert b.receiver is not None and b.receiver.outcome() == FAILED_OVER
        assert sender.wait(10) == 0
    finally:
        b.stop_vm()
