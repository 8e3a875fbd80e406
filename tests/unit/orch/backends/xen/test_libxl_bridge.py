"""Real sockets, real time (short timeouts): the simulated libxl over TCP, the bridge, and the
proxy service's own control server, PrimaryProxy and loop (`serve`) in a child process whose
NFQUEUE and SVM socket are stand-ins fed by the test."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from colo_lab.wait import wait_until
from colo_orch.backends.xen.libxl.bridge import LibxlBridge
from colo_proxy.compare import CompareConfig
from colo_proxy.kernel.packet_socket import Frame
from colo_proxy.service import control_socket as control
from colo_proxy.service.loop import serve
from colo_proxy.service.primary import PrimaryProxy
from colo_proxy.service.settings import ProxySettings
from colo_proxy.wire.nfqueue_msgs import QueuedPacket
from tests.support.fakes import frame, queued
from tests.support.libxl_sim import SimulatedLibxl
from tests.support.packets import ACK, CLIENT_ISN, PSH, PVM_ISN, SVM_ISN, SYN, tcp

DEADLINE = 10.0  # generous: the machine is shared; conditions end the waits, not this


class _LineSock:
    """The child's end of a socketpair carrying JSON lines (test <-> stand-ins)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.buf = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def lines(self) -> list[dict[str, Any]]:
        try:
            self.buf += self.sock.recv(65536)
        except BlockingIOError:
            pass
        *whole, self.buf = self.buf.split(b"\n")
        return [json.loads(x) for x in whole if x]


class StandinQueue(_LineSock):
    """Stands in for NFQUEUE: PVM packets come from the test, verdicts go back to it."""

    def receive(self, limit: int = 256) -> list[QueuedPacket]:
        return [queued(m["id"], bytes.fromhex(m["hex"])) for m in self.lines()]

    def decide(self, accept: Any, drop: Any = ()) -> None:
        self.sock.setblocking(True)
        self.sock.sendall(json.dumps({"accepted": list(accept)}).encode() + b"\n")
        self.sock.setblocking(False)

    def accept_all(self) -> None:
        pass


class StandinSvm(_LineSock):
    def receive(self, limit: int = 256) -> list[Frame]:
        return [frame(bytes.fromhex(m["hex"])) for m in self.lines()]


def _proxy_child(path: str, pvm: socket.socket, svm: socket.socket) -> None:
    q, s = StandinQueue(pvm), StandinSvm(svm)
    ctl = control.ControlServer(path)
    settings = ProxySettings(compare=CompareConfig(compare_timeout=60.0))
    proxy = PrimaryProxy(settings, q, s, notify=ctl.broadcast)
    serve(proxy, ctl, {"pvm": q, "svm": s})


class Proxy:
    def __init__(self, tmp: Path) -> None:
        self.path = str(tmp / "proxy.sock")
        self.pvm, pvm_child = socket.socketpair()
        self.svm, svm_child = socket.socketpair()
        ctx = multiprocessing.get_context("fork")
        self.proc = ctx.Process(target=_proxy_child, args=(self.path, pvm_child, svm_child),
                                daemon=True)
        self.proc.start()
        pvm_child.close()
        svm_child.close()
        self.accepted: list[int] = []
        self._buf = b""
        self.pvm.settimeout(DEADLINE)

    def send(self, side: str, pid: int, data: bytes) -> None:
        sock = self.pvm if side == "pvm" else self.svm
        sock.sendall(json.dumps({"id": pid, "hex": data.hex()}).encode() + b"\n")

    def wait_accepted(self, pid: int) -> list[int]:
        while pid not in self.accepted:
            chunk = self.pvm.recv(65536)  # bounded by DEADLINE
            assert chunk, "the proxy child died"
            self._buf += chunk
            *whole, self._buf = self._buf.split(b"\n")
            for line in whole:
                self.accepted += json.loads(line)["accepted"]
        return self.accepted

    def status(self) -> dict[str, Any]:
        return control.request(self.path, {"type": "status"})

    def stop(self) -> None:
        if self.proc.pid is not None and self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.join(timeout=5)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    p = Proxy(tmp_path)
    wait_until(lambda: os.path.exists(p.path), DEADLINE, "the proxy's control socket", every=0.01)
    yield p
    p.stop()


@pytest.fixture
def bridge(proxy: Proxy) -> Iterator[LibxlBridge]:
    b = LibxlBridge(("127.0.0.1", 0), proxy.path, reconnect=0.05).start()
    assert b.wait(lambda: b.proxy_connected, DEADLINE)
    yield b
    b.stop()


def test_over_tcp_init_divergence_periodic_and_disconnect(proxy: Proxy,
                                                          bridge: LibxlBridge) -> None:
    sim = SimulatedLibxl(bridge.address, timeout=0.3).start()
    try:
        # INIT answered, initial sync's COLO_CHECKPOINT reached the proxy.
        assert bridge.wait_checkpoints(1, DEADLINE), bridge.status()
        wait_until(lambda: proxy.status()["checkpoints_done"] >= 1, DEADLINE,
                   "the first checkpoint_done", every=0.01)
        proxy.send("pvm", 1, tcp(PVM_ISN, CLIENT_ISN + 1, SYN | ACK))
        proxy.send("svm", 1, tcp(SVM_ISN, CLIENT_ISN + 1, SYN | ACK))
        assert proxy.wait_accepted(1) == [1]

        # Divergence: DO_CHECKPOINT goes out, libxl checkpoints on it, output is flushed.
        proxy.send("pvm", 2, tcp(PVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"hello"))
        proxy.send("svm", 2, tcp(SVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"hellx"))
        assert proxy.wait_accepted(2) == [1, 2]
        assert sim.wait_for(lambda: any(c.why == "do_checkpoint"
                                        for c in sim.model.checkpoints), DEADLINE)

        # Periodic: a packet with no twin yet goes out at libxl's own 0.3 s checkpoint.
        proxy.send("pvm", 3, tcp(PVM_ISN + 6, CLIENT_ISN + 1, ACK | PSH, b"alone"))
        assert proxy.wait_accepted(3) == [1, 2, 3]
        assert sim.wait_for(lambda: sum(c.why == "timeout"
                                        for c in sim.model.checkpoints) >= 2, DEADLINE)
        assert sim.error is None
    finally:
        sim.stop()  # libxl disconnects

    assert bridge.wait(lambda: not bridge.connected, DEADLINE)
    requests = bridge.session.stats.requests if bridge.session else 0
    # A second connection diverges while libxl is away.
    proxy.send("pvm", 4, tcp(PVM_ISN, CLIENT_ISN + 1, SYN | ACK, sport=81))
    proxy.send("svm", 3, tcp(SVM_ISN, CLIENT_ISN + 1, SYN | ACK, sport=81))
    assert proxy.wait_accepted(4)[-1] == 4
    proxy.send("pvm", 5, tcp(PVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"hello", sport=81))
    proxy.send("svm", 4, tcp(SVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"jello", sport=81))
    assert bridge.wait(lambda: bridge.session is not None
                       and bridge.session.stats.requests > requests, DEADLINE)
    assert proxy.status()["held_packets"] >= 1  # held: nobody can checkpoint now

    # xl remus again (re-protection): a new session serves the same proxy.
    sim2 = SimulatedLibxl(bridge.address, timeout=0.3).start()
    try:
        assert proxy.wait_accepted(5)[-1] == 5  # released by the new session's first sync
        assert bridge.sessions == 2 and sim2.error is None
    finally:
        sim2.stop()
