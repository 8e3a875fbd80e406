"""The QMP sequences of colo_orch.backends.qemu.blk.graph against a scripted monitor (no QEMU)."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import pytest

from colo_orch.backends.qemu.blk import graph
from colo_orch.backends.qemu.blk.graph import DiskError, Replication
from colo_orch.core.decide import PeerObs, Snapshot, TakeOver, VmObs, decide
from colo_orch.core.disks import Disk
from colo_orch.core.state import Event, State

D = Disk("disk0", "/i/d.raw", "/i/a.qcow2", "/i/h.qcow2")
GRAPH = {"nodes": [{"name": "colo-disk0", "id": 1}, {"name": "#b1", "id": 2},
                   {"name": "disk0-replication", "id": 3}],
         "edges": [{"parent": 1, "child": 2, "name": "root"},
                   {"parent": 2, "child": 3, "name": "children.4"}]}


class FakeMon:
    """Records commands; answers from a table of name -> value, exception or callable."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def cmd(self, name: str, **args: Any) -> Any:
        self.calls.append((name, args))
        a = self.answers.get(name)
        if callable(a):
            a = a(**args)
        if isinstance(a, Exception):
            raise a
        return a

    def names(self) -> list[str]:
        return [n for n, _ in self.calls]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def _rep(mon: FakeMon, clock: Clock | None = None, connect: Any = None) -> Replication:
    c = clock or Clock()
    return Replication(mon, [D], 10809, clock=c, sleep=c.sleep,
                       connect=connect or (lambda h, p, t: None))


def test_export_starts_the_server_and_exports_the_parent_writable() -> None:
    mon = FakeMon({})
    assert _rep(mon).export("10.0.0.2") == "exported 1 disk(s) on 10.0.0.2:10809"
    assert mon.calls == [
        ("nbd-server-start", {"addr": {"type": "inet",
                                       "data": {"host": "10.0.0.2", "port": "10809"}}}),
        ("nbd-server-add", {"device": "disk0-parent", "writable": True})]


def test_resync_mirrors_then_attach_cancels_and_adds_the_replication_child() -> None:
    mirrored: list[int] = []
    jobs = [[{"device": "disk0-resync", "ready": False, "offset": 0}],
            [{"device": "disk0-resync", "ready": True, "offset": 64}],
            [{"device": "disk0-resync", "ready": True, "offset": 64}], []]
    mon = FakeMon({"query-block-jobs": lambda: jobs.pop(0) if len(jobs) > 1 else jobs[0],
                   "block-job-cancel": lambda **a: None if mirrored else DiskError("no job"),
                   "drive-mirror": lambda **a: mirrored.append(1),
                   "human-monitor-command": "", "query-blockstats": [],
                   "x-debug-query-block-graph": {"nodes": [], "edges": []}})
    r = _rep(mon)
    assert r.resync("10.0.0.2").startswith("resynced 64 bytes")
    mirror = next(a for n, a in mon.calls if n == "drive-mirror")
    # The export as a raw image (an NBD URL would do, but cannot carry TLS options).
    assert mirror == {"device": "colo-disk0",
                      "target": 'json:{"driver":"raw","file":{"driver":"nbd","server":'
                                '{"type":"inet","host":"10.0.0.2","port":"10809"},'
                                '"export":"disk0-parent"}}',
                      "job-id": "disk0-resync", "mode": "existing", "format": "raw",
                      "sync": "full"}
    r.attach("10.0.0.2")
    hmp = [a["command-line"] for n, a in mon.calls if n == "human-monitor-command"]
    assert hmp == ["drive_add -n buddy driver=replication,mode=primary,file.driver=nbd,"
                   "file.host=10.0.0.2,file.port=10809,file.export=disk0-parent,"
                   "node-name=disk0-replication,file.node-name=disk0-nbd"]
    assert ("x-blockdev-change", {"parent": "colo-disk0", "node": "disk0-replication"}) in mon.calls
    assert r.state == "replicating"
    r.detach()


def test_a_secondary_not_listening_is_a_clear_error_after_retrying() -> None:
    clock = Clock()
    mon = FakeMon({"drive-mirror": DiskError("Failed to connect to '10.0.0.2:10809': "
                                             "Connection refused"),
                   "block-job-cancel": DiskError("no job")})
    r = _rep(mon, clock)
    with pytest.raises(DiskError, match=r"does not answer .*Connection refused.*exported"):
        r.resync("10.0.0.2", connect_timeout=2.0)
    assert mon.names().count("drive-mirror") > 5  # retried while the secondary came up
    assert r.state == "broken"


def test_a_secondary_image_of_another_size_is_named() -> None:
    mon = FakeMon({"drive-mirror": DiskError("Source and target image have different sizes"),
                   "block-job-cancel": DiskError("no job")})
    with pytest.raises(DiskError, match="differs in size"):
        _rep(mon).resync("10.0.0.2")


def test_detach_yanks_then_removes_the_child_by_its_current_name() -> None:
    mon = FakeMon({"x-debug-query-block-graph": GRAPH, "block-job-cancel": DiskError("none")})
    r = _rep(mon)
    assert r.detach() == "replication child removed from 1 disk(s)"
    names = mon.names()
    assert names.index("yank") < names.index("x-blockdev-change")
    assert ("x-blockdev-change", {"parent": "colo-disk0", "child": "children.4"}) in mon.calls


def test_a_cut_link_or_a_failed_write_breaks_replication() -> None:
    clock = Clock()
    up = {"ok": True}

    def connect(host: str, port: int, timeout: float) -> None:
        if not up["ok"]:
            raise OSError("timed out")

    mon = FakeMon({"query-blockstats": [{"device": "colo-disk0", "stats": {"wr_bytes": 10}}]})
    r = _rep(mon, clock, connect)
    r.state, r.peer = "replicating", "10.0.0.2"
    assert r.poll() == ""
    r._link_down_since = clock()  # what the probe thread records on a failed connect
    clock.t += 1.5
    assert r.poll() == "NBD link to 10.0.0.2:10809 is cut"
    assert r.status().state == "broken"
    r2 = _rep(mon, clock)
    r2.state = "replicating"
    r2.note_event({"event": "QUORUM_REPORT_BAD", "data": {"node-name": "disk0-replication"}})
    assert "1 write(s) to the secondary's disk failed" in r2.poll()


def test_secondary_failover_waits_for_the_active_layer_to_leave_the_graph() -> None:
    nodes = [[{"drv": "file", "file": "/i/a.qcow2"}], [{"drv": "file", "file": "/i/d.raw"}]]
    mon = FakeMon({"query-named-block-nodes": lambda flat: nodes.pop(0)})
    r = _rep(mon)
    assert r.wait_committed(5).startswith("disk committed")
    mon2 = FakeMon({"query-named-block-nodes": [{"drv": "file", "file": "/i/a.qcow2"}]})
    with pytest.raises(DiskError, match="not committed"):
        _rep(mon2).wait_committed(1)


def test_decide_ends_protection_when_disk_replication_breaks() -> None:
    s = Snapshot(now=10.0, state=State.PROTECTED, role="primary",
                 vm=VmObs(reachable=True, running=True, migration="colo",
                          disk_error="NBD link to 10.0.0.2:10809 is cut"),
                 peer=PeerObs(alive=True, state=State.PROTECTED, role="secondary", vm_ok=True),
                 lease_held=True, lease_available=False, busy=False, finished=None,
                 last_checkpoint_at=9.9)
    d = decide(s, 0.2, 10.0)
    assert (d.event, d.action) == (Event.PEER_LOST, TakeOver("primary"))
    assert "disk replication broken (NBD link" in d.sentence


def _one_shot_server(greeting: bytes) -> tuple[int, list[bytes], threading.Thread]:
    """A loopback server that greets one client with `greeting` and records what it sends."""
    srv = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def run() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn:
                conn.sendall(greeting)
                if len(greeting) < 18:
                    return  # hang up mid-greeting
                conn.settimeout(5)
                data = b""
                while len(data) < 20:
                    try:
                        chunk = conn.recv(64)
                    except OSError:  # a client that hung up with unread data resets
                        break
                    if not chunk:
                        break
                    data += chunk
                got.append(data)
                if len(data) == 20:  # NBD_REP_ACK to NBD_OPT_ABORT
                    conn.sendall(struct.pack("!QIII", 0x3E889045565A9, 2, 1, 0))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv.getsockname()[1], got, t


def test_probe_negotiates_and_aborts_like_an_nbd_client() -> None:
    greeting = struct.pack("!QQH", 0x4E42444D41474943, 0x49484156454F5054, 3)
    port, got, t = _one_shot_server(greeting)
    graph._tcp_probe("127.0.0.1", port, 5.0)
    t.join(timeout=5)
    # Client flags (fixed newstyle), then NBD_OPT_ABORT with no data.
    assert got == [struct.pack("!IQII", 1, 0x49484156454F5054, 2, 0)]


def test_probe_rejects_what_is_not_an_nbd_server() -> None:
    port, _, t = _one_shot_server(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n")
    with pytest.raises(ConnectionError, match=r"not a .*NBD server"):
        graph._tcp_probe("127.0.0.1", port, 5.0)
    t.join(timeout=5)
    port, _, t = _one_shot_server(b"NBD")
    with pytest.raises(ConnectionError, match="closed before its NBD greeting"):
        graph._tcp_probe("127.0.0.1", port, 5.0)
    t.join(timeout=5)
