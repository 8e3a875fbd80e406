"""The orchestrator's end of the colo-proxy control channel (docs/PROXY.md).

Reconnects by itself: the proxy may restart, and the orchestrator must keep
heartbeating and checkpointing meanwhile. Checkpoint requests arrive on a
reader thread and are collected until the loop takes them. Each connection
begins with the proxy's answer to hello (its role, mode, pid and instance),
kept in `hello`; `generation` counts those answers, so the loop sees every
reconnect, even one between two of its cycles, and tells the new proxy again
what it must do.

The proxy takes commands from one process at a time (docs/PROXY.md, "Control
channel"): while another one holds its channel, `send` returns False with the proxy's
reason in `last_error`, and the loop tries again at its next cycle; a dead holder's
channel is free at once.

The release permit (docs/PROXY.md, "Release permit") is sent by `permit` without
waiting: the loop sends one every cycle, and a stopped proxy must not stall it (its
heartbeats are sent by the same loop). Its answers, and errors about it, are taken by the
reader, which keeps the newest token for the next permit.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from colo_proxy.wire.control import LineDecoder, ProtocolError, encode

log = logging.getLogger("colo_orch")


class ProxyLink:
    def __init__(self, path: str, *, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._requests: list[str] = []
        # The first request since the last take: its monotonic marks (core.timeline).
        self._marks: dict[str, float] | None = None
        self._replies: list[dict[str, Any]] = []
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self.connected = False
        self.last_error = ""
        self.hello: dict[str, Any] | None = None  # the current connection's hello answer
        self.generation = 0  # hello answers received: +1 per (re)connection
        # The newest token the proxy issued in its answers to permits, echoed in the next
        # permit; 0 before the first answer; None: no proxy, or one that takes no permits
        # (its hello does not say "permits": an older colo-proxy).
        self.permit_token: int | None = None
        self.permits_sent = 0
        # Called on the reader thread when a checkpoint request arrives, so that the
        # orchestrator's loop acts on it at once instead of at its next cycle.
        self.on_request: Callable[[], None] | None = None

    def start(self) -> None:
        self._reader = threading.Thread(target=self._run, name="proxy-link", daemon=True)
        self._reader.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._sock is not None:
                # shutdown, not only close: the reader blocked in recv keeps the socket
                # open past a close, and the proxy would take us for still connected
                # (holding its command channel).
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._sock.close()

    def take_requests(self) -> list[str]:
        with self._lock:
            out, self._requests = self._requests, []
        return out

    def take_marks(self) -> dict[str, float] | None:
        """The timing marks of the first request since the last call, if any."""
        with self._lock:
            out, self._marks = self._marks, None
        return out

    def send(self, msg: dict[str, Any]) -> bool:
        """Send one request and wait for its answer; False if the proxy is not there."""
        with self._cond:
            sock = self._sock
            if sock is None:
                return False
            self._replies.clear()
            try:
                sock.sendall(encode(msg))
            except OSError as exc:
                self.last_error = str(exc)
                return False
            deadline = time.monotonic() + self.timeout
            while not self._replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.last_error = f"no answer to {msg.get('type')} in {self.timeout} s"
                    return False
                self._cond.wait(left)
            reply = self._replies.pop(0)
        if reply.get("type") == "error":
            error = str(reply.get("error"))
            if error != self.last_error:  # once, not every cycle that retries it
                log.warning("colo-proxy refused %s: %s", msg.get("type"), error)
            self.last_error = error
            return False
        return True

    def permit(self, seconds: float, token: int) -> bool:
        """Renew the proxy's release permit for `seconds`, measured by the proxy from when
        it issued `token`: a `permit_token` read before `seconds` was computed (see
        colo_proxy.service.permit). Never waits: False when not sent (no proxy, or its
        socket full while it is stopped: then the permit it has runs out, the point)."""
        with self._lock:
            sock = self._sock
            if sock is None:
                return False
            data = encode({"type": "permit", "seconds": seconds, "token": token})
            try:
                n = sock.send(data, socket.MSG_DONTWAIT)
                if n < len(data):  # one skb for a line this short: not seen, but not lost
                    sock.sendall(data[n:])
            except BlockingIOError:
                return False
            except OSError as exc:
                self.last_error = str(exc)
                return False
            self.permits_sent += 1
        return True

    def fence(self) -> bool:
        """Fail closed: the proxy drops our VM's output until `unfence` (docs/PROXY.md)."""
        return self.send({"type": "fence"})

    def unfence(self) -> bool:
        return self.send({"type": "unfence"})

    def listening(self) -> bool:
        """Something accepts connections on the socket (a proxy, perhaps still starting);
        False for no socket or a dead proxy's leftover one."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(self.timeout)
            try:
                probe.connect(self.path)
            except OSError:
                return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                self.connected = False
                self.last_error = f"cannot connect to {self.path}: {exc.strerror}"
                self._stop.wait(0.5)
                continue
            with self._lock:
                self._sock = sock
            # Not `connected` yet: the proxy listens before it has attached its datapath
            # (compiling the BPF programs takes seconds), so the kernel accepts us at once.
            # Its answer to hello comes from its serving loop, which starts only once the
            # datapath is attached. A peer told "proxy ready" earlier started COLO while
            # the secondary's mirror was not in place: the SVM missed the first client
            # packets (a 'timeout' checkpoint in CI).
            decoder = LineDecoder()
            try:
                sock.sendall(encode({"type": "hello", "who": "colo-orch"}))
            except OSError as exc:  # a proxy that was just stopping: connect again
                self.last_error = f"hello to {self.path}: {exc.strerror}"
                data = b""
            else:
                data = b"-"
            while data and not self._stop.is_set():
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                for msg in decoder.feed(data):
                    if isinstance(msg, ProtocolError):
                        continue
                    with self._cond:
                        if msg.get("type") == "checkpoint_request":
                            self._requests.append(str(msg.get("reason", "unknown")))
                            if self._marks is None:
                                self._marks = _marks(msg)
                            if self.on_request is not None:
                                self.on_request()
                        elif msg.get("type") == "permit":
                            tok = msg.get("token")
                            if isinstance(tok, int) and not isinstance(tok, bool):
                                self.permit_token = tok
                        elif msg.get("for") == "permit":
                            error = f"colo-proxy refused a release permit: {msg.get('error')}"
                            if error != self.last_error:
                                log.warning("%s", error)
                            self.last_error = error
                        elif msg.get("type") == "hello" or (
                                msg.get("for") == "hello" and msg.get("type") != "error"):
                            # 0, a token no proxy issues: the first permit only
                            # fetches one (the hello issues none, or a status reader's
                            # hellos could push ours out of the proxy's few).
                            self.permit_token = 0 if msg.get("permits") is True else None
                            self.hello = msg
                            self.generation += 1
                            self.connected = True
                        else:
                            self._replies.append(msg)
                            self._cond.notify_all()
            with self._lock:
                self._sock = None
                self.hello = None
                self.permit_token = None
            self.connected = False
            sock.close()
            self._stop.wait(0.1)  # a proxy on its way out may still accept: do not spin


def _marks(msg: dict[str, Any]) -> dict[str, float]:
    """A request's timing marks; a field that is missing or not a number is left out."""
    out = {"received": time.monotonic()}
    for key in ("held_since", "detected_at"):
        v = msg.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = float(v)
    return out
