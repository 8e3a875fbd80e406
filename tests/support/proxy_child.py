"""The real proxy service in a forked child: `ControlServer`, `PrimaryProxy` and `serve`,
with NFQUEUE and the SVM's packet socket stood in for by socketpairs that the test feeds
(PVM packets and SVM frames in, verdicts back). No root, no kernel datapath: for tests of
what reaches the proxy over its control sockets."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
from collections.abc import Collection
from pathlib import Path
from typing import Any

from colo_lab.wait import wait_until
from colo_proxy.compare import CompareConfig
from colo_proxy.kernel.packet_socket import Frame
from colo_proxy.service import control_socket as control
from colo_proxy.service.loop import serve
from colo_proxy.service.primary import PrimaryProxy
from colo_proxy.service.settings import ProxySettings
from colo_proxy.wire.nfqueue_msgs import QueuedPacket
from tests.support.fakes import frame, queued
from tests.support.packets import ACK, CLIENT_ISN, PSH, PVM_ISN, SVM_ISN, SYN, tcp
from tests.support.users import become

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


def _proxy_child(path: str, pvm: socket.socket, svm: socket.socket,
                 allowed_uids: Collection[int] | None) -> None:
    q, s = StandinQueue(pvm), StandinSvm(svm)
    ctl = control.ControlServer(path, allowed_uids=allowed_uids)
    settings = ProxySettings(compare=CompareConfig(compare_timeout=60.0))
    proxy = PrimaryProxy(settings, q, s, notify=ctl.broadcast)
    serve(proxy, ctl, {"pvm": q, "svm": s})


class ProxyChild:
    """A primary proxy serving `path` (and `path`.status) until `stop`."""

    def __init__(self, tmp: Path, *, allowed_uids: Collection[int] | None = None) -> None:
        self.path = str(tmp / "proxy.sock")
        self.status_path = str(control.status_path_for(self.path))
        self.pvm, pvm_child = socket.socketpair()
        self.svm, svm_child = socket.socketpair()
        ctx = multiprocessing.get_context("fork")
        self.proc = ctx.Process(target=_proxy_child,
                                args=(self.path, pvm_child, svm_child, allowed_uids),
                                daemon=True)
        self.proc.start()
        pvm_child.close()
        svm_child.close()
        self.accepted: list[int] = []
        self._buf = b""
        self.pvm.settimeout(DEADLINE)
        # The status socket is bound second: both are there once it is.
        wait_until(lambda: os.path.exists(self.status_path), DEADLINE,
                   "the proxy's control sockets", every=0.01)

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

    def hold_one(self) -> None:
        """Packets 1 (matched, released) and 2 (its SVM twin never comes: held until a
        checkpoint)."""
        self.send("pvm", 1, tcp(PVM_ISN, CLIENT_ISN + 1, SYN | ACK))
        self.send("svm", 1, tcp(SVM_ISN, CLIENT_ISN + 1, SYN | ACK))
        assert self.wait_accepted(1) == [1]
        self.send("pvm", 2, tcp(PVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"hello"))
        wait_until(lambda: self.status()["held_packets"] == 1, DEADLINE, "a held packet",
                   every=0.01)

    def still_held(self) -> bool:
        """Packet 2 of `hold_one` is held still, and no checkpoint was done."""
        st = self.status()
        return bool(st["held_packets"] == 1 and st["checkpoints_done"] == 0
                    and self.accepted == [1])

    def status(self) -> dict[str, Any]:
        """From the status socket, as any user asks (again while it says it is busy)."""
        reply: dict[str, Any] = {}

        def answered() -> bool:
            nonlocal reply
            reply = control.request(self.status_path, {"type": "status"})
            return reply["type"] == "status" or not reply["error"].startswith("busy")

        wait_until(answered, DEADLINE, "a status reply", every=0.05)
        return reply

    def stop(self) -> None:
        # SIGKILL: the child holds no kernel resources, and a SIGTERM waits for the loop's
        # epoll timeout (PEP 475 resumes the wait after the handler), a second a test.
        if self.proc.pid is not None and self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(timeout=DEADLINE)


def _client_child(path: str, pipe: Any, uid: int | None, gid: int | None) -> None:
    become(uid, gid)
    sock: socket.socket | None = None
    lines: Any = None
    while True:
        msg = pipe.recv()
        try:
            if sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(DEADLINE)
                sock.connect(path)
                lines = sock.makefile("rb")
            try:
                sock.sendall(control.encode(msg))
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused at once: its error line is still there to read
            reply: dict[str, Any] = {"closed": True}
            try:
                while line := lines.readline():
                    reply = json.loads(line)
                    if reply.get("type") != "checkpoint_request":
                        break
                    reply = {"closed": True}
            except ConnectionResetError:
                pass  # the proxy hung up with our line unread: closed too
        except OSError as exc:
            reply = {"oserror": exc.errno, "strerror": exc.strerror}
        pipe.send(reply)


class ControlClient:
    """Another process on a control socket: one connection, kept open, that says what the
    test passes it and hands back each reply ({"closed": true} when the proxy hung up,
    {"oserror": errno} when the socket refused). With `uid`/`gid` the child drops to them
    first (root only)."""

    def __init__(self, path: str, *, uid: int | None = None, gid: int | None = None) -> None:
        ctx = multiprocessing.get_context("fork")
        self._pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_client_child, args=(path, child, uid, gid),
                                daemon=True)
        self.proc.start()
        child.close()

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._pipe.send(msg)
        assert self._pipe.poll(2 * DEADLINE), "the client process did not answer"
        reply: dict[str, Any] = self._pipe.recv()
        return reply

    def kill(self) -> None:
        """SIGKILL, and reaped: its connection is closed by the kernel, as a crash's."""
        if self.proc.pid is not None and self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(timeout=DEADLINE)
