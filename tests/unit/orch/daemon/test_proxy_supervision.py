"""colo_orch.daemon.proxy_supervision: what the loop tells the proxy and when, and how a
restarted orchestrator adopts the proxy that runs instead of starting a second one.

The link is a fake (its connections are what the tests say); the processes are real.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from colo_lab.wait import wait_until
from colo_orch.core.config import Config, Timing
from colo_orch.core.decide import VmObs
from colo_orch.core.state import Event, Machine, State
from colo_orch.daemon.actions import Actions
from colo_orch.daemon.proxy_supervision import ProxyMode, ProxySupervision

COLO_PRIMARY = VmObs(reachable=True, running=True, status="running", migration="colo",
                     colo_mode="primary")


class _Link:
    """A proxy link whose connections the test makes: `connect` is a (re)connection with
    that hello; `accept` False makes sends fail (a proxy that went away mid-message)."""

    path = "/nonexistent/proxy.sock"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.connected = False
        self.hello: dict[str, Any] | None = None
        self.generation = 0
        self.accept = True
        self.listens = False

    def connect(self, role: str = "primary", mode: str = "protected", pid: int = 4711) -> None:
        self.hello = {"type": "hello", "role": role, "mode": mode, "pid": pid,
                      "instance": "web"}
        self.generation += 1
        self.connected = self.listens = True

    def send(self, msg: dict[str, Any]) -> bool:
        if self.accept:
            self.sent.append(msg["type"])
        return self.accept

    def listening(self) -> bool:
        return self.listens


class _Part(ProxySupervision):
    def __init__(self, role: str = "primary", state: State = State.WAITING,
                 command: list[str] | None = None, timing: Timing | None = None) -> None:
        self.cfg = Config(timing=timing or Timing(), name="web", role=role, qmp="/q", qmp_events="/e",
                          heartbeat_listen="127.0.0.1:1", peer_heartbeat="127.0.0.1:2",
                          incoming_uri="tcp:127.0.0.1:4444", proxy_socket="/p.sock",
                          proxy_primary_command=command or [],
                          proxy_secondary_command=command or [])
        self.host_id = "pri"
        self.link = _Link()
        self.proxy = self.link  # type: ignore[assignment]
        self.role = role
        self.machine = Machine()
        path = {State.WAITING: (Event.START, Event.VM_RUNNING), State.PROTECTED: (Event.ADOPT,),
                State.STOPPED: ()}[state]
        for e in path:
            self.machine.fire(e)
        self._lock = threading.Lock()
        self._future = None
        self._requests = []
        self._vm = VmObs(reachable=True, running=True, status="running")
        self._proxy_lock = threading.Lock()
        self._proxy_proc = None
        self._proxy_role = ""
        self._proxy_mode = ProxyMode.UNKNOWN
        self._proxy_pid = None
        self._proxy_gen = 0
        self._proxy_start_gen = 0
        self._proxy_hello_pid = None
        self._proxy_restart_after = 0.0
        self._proxy_restarter = None
        self._peer_proxy_pid = None
        self._fenced = False
        self._fence_told = True


def test_pause_is_sent_once_until_something_else_is_told() -> None:
    p = _Part()
    p.link.connect()
    assert p.machine.state is State.WAITING
    p._sync_proxy_mode()
    p._sync_proxy_mode()
    assert p.link.sent == ["pause"] and p._proxy_mode is ProxyMode.PASS
    p._proxy_mode = ProxyMode.COMPARE  # an enter_colo resumed it, then COLO failed
    p._sync_proxy_mode()
    assert p.link.sent == ["pause", "pause"]


def test_no_pause_while_an_action_runs_or_on_a_secondary() -> None:
    p = _Part()
    p.link.connect()
    p._future = Future()  # an enter_colo may switch the proxy to comparing at any moment
    p._sync_proxy_mode()
    s = _Part("secondary")
    s.link.connect("secondary")
    s._sync_proxy_mode()
    assert p.link.sent == [] and s.link.sent == []


def test_every_reconnect_is_told_again_and_a_failed_send_is_retried() -> None:
    p = _Part()
    p.link.connect()
    p._sync_proxy_mode()
    assert p.link.sent == ["pause"]
    # The proxy restarted: the new one compares (its hello says so), whatever we told the
    # old one. Its first message does not get through; the next cycle sends it again.
    p.link.connect(pid=4712)
    p.link.accept = False
    p._sync_proxy_mode()
    assert p._proxy_mode is ProxyMode.COMPARE and p.link.sent == ["pause"]
    p.link.accept = True
    p._sync_proxy_mode()
    assert p.link.sent == ["pause", "pause"] and p._proxy_mode is ProxyMode.PASS
    # A new connection whose hello says it passes already: nothing to say.
    p.link.connect(mode="passthrough", pid=4713)
    p._sync_proxy_mode()
    assert p.link.sent == ["pause", "pause"]


def test_a_comparing_proxy_is_never_paused_while_colo_runs() -> None:
    # A restarted orchestrator before its first decision (STOPPED, then WAITING in the old
    # code) must not pause the live proxy of a pair that COLO still protects.
    p = _Part()
    p._vm = COLO_PRIMARY
    p.link.connect(mode="protected")
    p._sync_proxy_mode()
    assert p.link.sent == [] and p._proxy_mode is ProxyMode.COMPARE


def test_a_proxy_unknown_to_us_is_not_paused_while_colo_runs() -> None:
    # The pair model's shrunk example: the proxy's hello said "fenced" (UNKNOWN to the
    # loop); unfenced, it compared again, and when the resume checkpoint failed DEGRADED
    # paused it with COLO running: output passed uncompared, the sync key "protected".
    p = _Part()
    p._vm = COLO_PRIMARY
    p._fenced = True
    p.link.connect(mode="fenced")
    p._sync_proxy_mode()
    assert p._proxy_mode is ProxyMode.UNKNOWN
    p._fenced = False  # HOLDING's RESUME: unfenced, back to comparing
    p._sync_proxy_mode()
    assert p.link.sent == []
    p._vm = VmObs(reachable=True, running=True, status="running")  # COLO left: TakeOver
    p._sync_proxy_mode()
    assert p.link.sent == ["pause"]


def test_a_replaced_primary_proxy_while_protected_asks_for_a_checkpoint() -> None:
    p = _Part(state=State.PROTECTED)
    p.link.connect()
    p._sync_proxy_mode()
    assert p._requests == [] and p.link.sent == []  # adopted: nothing to say
    p.link.connect(pid=4800)  # a new proxy: a fresh comparator, offsets lost
    p._sync_proxy_mode()
    assert p._requests == ["proxy_restart"] and p.link.sent == []
    # A proxy found passing while we are protected is told to compare, and resynced.
    p.link.connect(mode="passthrough", pid=4801)
    p._requests.clear()
    p._sync_proxy_mode()
    assert p.link.sent == ["resume"] and "proxy_restart" in p._requests


def _sleeper(marker: Path) -> list[str]:
    """A stand-in proxy process: its command line says colo_proxy, it marks that it ran."""
    code = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
    return [sys.executable, "-c", code, str(marker), "colo_proxy"]


def _connect_once_started(p: _Part, marker: Path) -> None:
    """The proxy started from `marker`'s command connects (a new link generation)."""
    threading.Thread(target=lambda: (wait_until(marker.exists, 10, "the new proxy to run"),
                                     p.link.connect("primary", pid=0)), daemon=True).start()


def _reap(p: _Part) -> None:
    if p._proxy_proc is not None:
        p._proxy_proc.kill()
        p._proxy_proc.wait()


def test_a_running_proxy_in_our_role_is_adopted_not_started_again(tmp_path: Path) -> None:
    p = _Part(command=_sleeper(tmp_path / "started"))
    p.link.connect("primary", pid=4711)
    out = p._ensure_proxy("primary")
    assert "adopted the running colo-proxy (pid 4711)" in out
    assert not (tmp_path / "started").exists() and p._proxy_proc is None
    assert (p._proxy_pid, p._proxy_role) == (4711, "primary")
    assert not p._fenced


def test_an_adopted_fenced_proxy_fences_us_before_the_loop_takes_its_hello(
        tmp_path: Path) -> None:
    # The pair model: a restarted orchestrator adopted its fenced proxy, which died before
    # the loop's first cycle; started again without --fenced, it released a stale copy.
    p = _Part(state=State.STOPPED, command=_sleeper(tmp_path / "started"))
    p.link.connect("primary", mode="fenced", pid=4711)
    assert "adopted" in p._ensure_proxy("primary")
    assert p._fenced and p._fence_told


def test_a_running_proxy_in_the_wrong_role_is_stopped_then_replaced(tmp_path: Path) -> None:
    old = subprocess.Popen(_sleeper(tmp_path / "old"))
    p = _Part(command=_sleeper(tmp_path / "new"))
    try:
        wait_until((tmp_path / "old").exists, 10, "the old proxy to run")
        p.link.connect("secondary", pid=old.pid)
        _connect_once_started(p, tmp_path / "new")
        assert p._ensure_proxy("primary") == "; proxy started as primary"
        assert old.wait(timeout=10) == -15  # SIGTERM, and we waited for it to end
        assert p._proxy_proc is not None and p._proxy_proc.poll() is None
    finally:
        old.kill()
        _reap(p)


def test_a_proxy_silent_past_proxy_start_timeout_fails_the_start(tmp_path: Path) -> None:
    # timing.proxy_start_timeout, not a fixed 20 s: a nested Xen dom0 compiles the BPF
    # programs for longer than that, and its orchestrator is given more.
    p = _Part(command=_sleeper(tmp_path / "silent"), timing=Timing(proxy_start_timeout=0.5))
    try:
        with pytest.raises(RuntimeError, match="did not answer"):
            p._ensure_proxy("primary")
        assert (tmp_path / "silent").exists()
    finally:
        _reap(p)
    late = tmp_path / "late"
    p = _Part(command=_sleeper(late), timing=Timing(proxy_start_timeout=30.0))
    # It answers 1.5 s after it runs: within 30 s, past the other's 0.5 s.
    threading.Thread(target=lambda: (wait_until(late.exists, 10, "the proxy to run"),
                                     threading.Event().wait(1.5),
                                     p.link.connect("primary", pid=0)), daemon=True).start()
    try:
        assert p._ensure_proxy("primary") == "; proxy started as primary"
    finally:
        _reap(p)


def test_a_dead_proxy_is_started_again(tmp_path: Path) -> None:
    p = _Part(state=State.PROTECTED, command=_sleeper(tmp_path / "again"))
    gone = subprocess.Popen([sys.executable, "-c", "pass", "colo_proxy"])
    gone.wait()
    p._proxy_role, p._proxy_pid = "primary", gone.pid  # adopted, then SIGKILLed
    p.link.connected = False
    _connect_once_started(p, tmp_path / "again")
    p._supervise_proxy()
    try:
        assert p._proxy_restarter is not None
        p._proxy_restarter.join(timeout=30)
        assert p._proxy_proc is not None and p._proxy_proc.poll() is None
        p._supervise_proxy()  # it runs: nothing more is started
        assert p._proxy_restarter is not None and not p._proxy_restarter.is_alive()
    finally:
        _reap(p)


def test_a_proxy_that_failed_is_restarted_and_its_exit_status_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """colo-proxy exits 1 when it fails closed on an exception: restarted like a crash."""
    p = _Part(state=State.PROTECTED, command=_sleeper(tmp_path / "again"))
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)", "colo_proxy"])
    failed.wait()
    p._proxy_proc, p._proxy_role, p._proxy_pid = failed, "primary", failed.pid
    p.link.connected = False
    _connect_once_started(p, tmp_path / "again")
    with caplog.at_level(logging.WARNING, logger="colo_orch"):
        p._supervise_proxy()
    try:
        assert p._proxy_restarter is not None
        p._proxy_restarter.join(timeout=30)
        assert p._proxy_proc is not None and p._proxy_proc.poll() is None
        assert f"colo-proxy (primary, pid {failed.pid}) is gone (exit status 1): starting it " \
            "as primary" in caplog.text
    finally:
        _reap(p)


def _cmdline(p: _Part) -> list[str]:
    assert p._proxy_proc is not None
    with open(f"/proc/{p._proxy_proc.pid}/cmdline", "rb") as f:
        return f.read().decode().split("\0")[:-1]


@pytest.mark.parametrize("fenced", [True, False])
def test_a_proxy_started_while_we_are_fenced_starts_fenced(tmp_path: Path,
                                                           fenced: bool) -> None:
    # The pair model: a proxy restarted while its host held output (HOLDING) started
    # unfenced, and the loop told it the fence only at its next cycle; then it was fenced
    # right after its hello, but what it read before that was compared and released.
    # Now it starts with --fenced, and is still told at its hello (a fence decided while
    # it started is not in its command line).
    p = _Part(state=State.PROTECTED, command=_sleeper(tmp_path / "started"))
    p._fenced = fenced
    _connect_once_started(p, tmp_path / "started")
    try:
        assert p._ensure_proxy("primary") == "; proxy started as primary"
        assert (_cmdline(p)[-1] == "--fenced") is fenced
        # Its metrics are labelled as ours are.
        tail = _cmdline(p)[-5:] if fenced else _cmdline(p)[-4:]
        assert tail[:4] == ["--pair", "web", "--host", "pri"]
        assert p.link.sent == (["status", "fence"] if fenced else ["status"])
    finally:
        _reap(p)


PEER_OK = {"role": "secondary", "state": int(State.PROTECTED), "proxy_role": "secondary",
           "proxy_mode": "protected"}


@pytest.mark.parametrize(("peer", "ours", "verified"), [
    (PEER_OK, ("primary", "protected"), True),
    (None, ("primary", "protected"), False),  # no current heartbeat
    (dict(PEER_OK, proxy_mode=""), ("primary", "protected"), False),  # its proxy is down
    (dict(PEER_OK, proxy_role="primary"), ("primary", "protected"), False),
    (PEER_OK, ("primary", "passthrough"), False),  # ours passes output uncompared
    (PEER_OK, ("secondary", "protected"), False),  # ours in the wrong role
    (PEER_OK, None, False),  # ours is not connected
    # A secondary's proxy still fenced from its host's time as primary steers as a
    # protected one does (the take-over lifts the fence); a fenced primary's does not.
    (dict(PEER_OK, proxy_mode="fenced"), ("primary", "protected"), True),
    (PEER_OK, ("primary", "fenced"), False),
])
def test_protection_is_verified_only_with_both_proxies_right(
        peer: dict[str, Any] | None, ours: tuple[str, str] | None, verified: bool) -> None:
    p = _Part(state=State.PROTECTED)
    if ours is not None:
        p.link.connect(*ours)
        p._take_hello()
    assert p._protection_verified(peer) is verified
    assert p.proxy_view()["connected"] is (ours is not None)


def test_nothing_is_verified_outside_protected() -> None:
    p = _Part(state=State.WAITING)
    p.link.connect()
    assert p._protection_verified(PEER_OK) is False


def test_a_reconnect_in_the_wrong_role_replaces_that_proxy(tmp_path: Path) -> None:
    p = _Part(state=State.PROTECTED, command=_sleeper(tmp_path / "ours"))
    stranger = subprocess.Popen(_sleeper(tmp_path / "stranger"))
    try:
        wait_until((tmp_path / "stranger").exists, 10, "the other proxy to run")
        p._proxy_role = "primary"
        p.link.connect("primary", pid=4711)
        p._sync_proxy_mode()
        # Another proxy took the socket, as a secondary: ours is brought back.
        _connect_once_started(p, tmp_path / "ours")
        p.link.connect("secondary", pid=stranger.pid)
        p._sync_proxy_mode()
        assert p._proxy_restarter is not None
        p._proxy_restarter.join(timeout=30)
        assert stranger.wait(timeout=10) == -15
        assert p._proxy_proc is not None and p._proxy_proc.poll() is None
    finally:
        stranger.kill()
        _reap(p)


def test_a_replaced_peer_proxy_makes_the_primary_checkpoint() -> None:
    p = _Part(state=State.PROTECTED)
    p._note_peer_proxy(dict(PEER_OK, proxy_pid=500))  # first seen: nothing to do
    p._note_peer_proxy(dict(PEER_OK, proxy_pid=None))  # it restarts: down for a while
    p._note_peer_proxy(None)  # no current heartbeat
    assert p._requests == []
    p._note_peer_proxy(dict(PEER_OK, proxy_pid=501))
    assert p._requests == ["proxy_restart"]
    s = _Part("secondary", state=State.PROTECTED)  # only the primary checkpoints
    s._note_peer_proxy(dict(PEER_OK, proxy_pid=500))
    s._note_peer_proxy(dict(PEER_OK, proxy_pid=501))
    assert s._requests == []


def test_a_proxy_that_connects_while_we_are_fenced_is_told_again() -> None:
    p = _Part(state=State.PROTECTED)
    p.link.connect()
    p._sync_proxy_mode()
    p._fenced, p._fence_told = True, True  # the lease was lost: fenced, and acknowledged
    p.link.connect(pid=4712)  # the proxy restarted, knowing nothing of the fence
    p._sync_proxy_mode()
    assert p._fence_told is False and p.link.sent == []  # no pause or resume meanwhile
    p.link.connect(mode="fenced", pid=4713)  # this one says it is fenced already
    p._sync_proxy_mode()
    assert p._fence_told is True


def test_a_fenced_proxy_stays_fenced_when_a_restarted_orchestrator_connects() -> None:
    # The pair model's shrunk example: the previous run fenced the proxy (its peer took
    # over); this run knew nothing of it and unfenced at the first hello.
    p = _Part(state=State.PROTECTED)
    p.link.connect(mode="fenced")
    p._sync_proxy_mode()
    assert p._fenced and p._fence_told and p.link.sent == []  # no unfence to tell


def test_no_proxy_is_started_at_boot_while_no_vm_runs(tmp_path: Path) -> None:
    # `colo-lab chaos`, seed 6: a host back from its death (no VM) started colo-proxy in its
    # config's role, primary, then learnt its peer served and restarted it as secondary,
    # 10 s later. The VM's start starts the proxy in the role decided then.
    p = _Part(state=State.STOPPED, command=_sleeper(tmp_path / "started"))
    p._start_proxy_at_boot(lambda: VmObs(reachable=False))
    assert p._proxy_proc is None and not (tmp_path / "started").exists()
    # A VM that runs gets its proxy at boot, as before.
    q = _Part(state=State.STOPPED, command=_sleeper(tmp_path / "q"))
    q.link.connect("primary", pid=4711)
    q._start_proxy_at_boot(lambda: COLO_PRIMARY)
    assert (q._proxy_pid, q._proxy_role) == (4711, "primary")


def test_a_serving_vm_keeps_its_primary_proxy_at_boot_whatever_the_config(
        tmp_path: Path) -> None:
    # `colo-lab chaos`, seed 1, fault 28: the host serving as primary is configured
    # secondary. Its restarted colo-orch adopts the VM as primary (`adopted_role`), so
    # the proxy that runs as primary is kept, not replaced by one in the config's role.
    serving = VmObs(reachable=True, running=True, status="running")
    p = _Part("secondary", state=State.STOPPED, command=_sleeper(tmp_path / "started"))
    p.link.connect("primary", pid=4711)
    p._start_proxy_at_boot(lambda: serving)
    assert (p._proxy_pid, p._proxy_role) == (4711, "primary")
    # A secondary's proxy since its take-over passes that output as well: kept too (the
    # lab: replaced, it held the output again for 3.8 s), whatever the config says.
    for cfg_role in ("secondary", "primary"):
        q = _Part(cfg_role, state=State.STOPPED, command=_sleeper(tmp_path / "started"))
        q.link.connect("secondary", mode="passthrough", pid=4712)
        q._start_proxy_at_boot(lambda: serving)
        assert (q._proxy_pid, q._proxy_role) == (4712, "secondary")
    assert not (tmp_path / "started").exists()
    # With no proxy running, one is started in the VM's role, primary.
    r = _Part("secondary", state=State.STOPPED, command=_sleeper(tmp_path / "r"))
    _connect_once_started(r, tmp_path / "r")
    try:
        r._start_proxy_at_boot(lambda: serving)
        assert r._proxy_role == "primary" and (tmp_path / "r").exists()
    finally:
        _reap(r)


class _Starter(_Part):
    """`Actions._start_vm` over _Part: the backend records when it made the VM."""

    _start_vm = Actions._start_vm

    def __init__(self, tap_comes_with_vm: bool, command: list[str], timeout: float) -> None:
        super().__init__(command=command, timing=Timing(proxy_start_timeout=timeout))
        self.order: list[str] = []
        part = self

        class Backend:
            def start_vm(self, uri: str | None) -> str:
                part.order.append("vm" if part.link.hello is None else "vm after hello")
                return "VM started"

        Backend.tap_comes_with_vm = tap_comes_with_vm  # type: ignore[attr-defined]
        self.backend = Backend()

    def _hook(self, name: str, argv: list[str]) -> str:
        return ""


def test_where_the_tap_comes_with_the_vm_the_vm_is_made_before_the_proxy_answers(
        tmp_path: Path) -> None:
    # Xen: the proxy waits for its tap, which the domain brings; waiting for the proxy
    # before making the domain failed every start after timing.proxy_start_timeout.
    marker = tmp_path / "xen"
    p = _Starter(True, _sleeper(marker), timeout=30.0)
    threading.Thread(target=lambda: (wait_until(lambda: p.order, 10, "the VM made"),
                                     p.link.connect("primary", pid=0)), daemon=True).start()
    try:
        out = p._start_vm(None)
        # The primary's VM (created paused) first, then its proxy's answer awaited.
        assert p.order == ["vm"] and "; the proxy answered" in out, out
        assert p.link.hello is not None
    finally:
        _reap(p)
    # A secondary's VM comes with the primary's migration: its proxy is not waited for,
    # and counts as ready (for the peer's COLO entry) while it waits for the tap.
    s = _Starter(True, _sleeper(tmp_path / "sec"), timeout=30.0)
    s._vm = VmObs(reachable=True, status="inmigrate")
    try:
        out = s._start_vm("tcp:127.0.0.1:4444")
        assert s.order == ["vm"] and "to answer once it has the VM's tap" in out, out
        assert s._proxy_awaits_tap()
        s._vm = VmObs(reachable=True, running=True, status="running", migration="colo",
                      colo_mode="secondary")
        assert not s._proxy_awaits_tap()  # its VM runs: only its answer counts now
    finally:
        _reap(s)


def test_where_the_tap_is_there_first_the_proxy_answers_before_the_vm_is_made(
        tmp_path: Path) -> None:
    p = _Starter(False, _sleeper(tmp_path / "qemu"), timeout=0.5)
    try:
        with pytest.raises(RuntimeError, match="did not answer"):
            p._start_vm(None)
        assert p.order == []  # no VM without a proxy holding its output
        assert not p._proxy_awaits_tap()
    finally:
        _reap(p)
