"""Heartbeats between the two orchestrators over the hosts' control link (UDP).

Each side sends its state every `interval` and records when it last heard the
peer. UDP, not TCP: a heartbeat must never wait behind a retransmission, and a
lost one is simply superseded by the next.

The decision loop sends (`beat`), not a thread of its own: a heartbeat says "my
loop decided a moment ago", so a wedged loop goes silent to its peer instead of
advertising PROTECTED forever (docs/ORCHESTRATOR.md, F3). Receiving runs in a
thread, so no input can delay the loop; only datagrams from `peer` that carry
the pair's key and a fresh sequence number count.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from colo_orch.core import heartbeat_msg


@dataclass(frozen=True)
class PeerReport:
    received_at: float  # monotonic time of arrival
    payload: dict[str, Any]
    rtt: float | None  # round trip of our last heartbeat, echoed by the peer
    # When we sent the heartbeat that the peer's echoes (our monotonic clock; None when
    # it echoed none we remember): the peer heard us at or after that moment.
    echo_sent_at: float | None = None


class Heartbeat:
    def __init__(self, listen: str, peer: str, interval: float, name: str, key: bytes) -> None:
        if len(key) < heartbeat_msg.MIN_KEY:
            raise ValueError(f"the heartbeat key has {len(key)} bytes; it needs at least "
                             f"{heartbeat_msg.MIN_KEY}")
        self.key = key
        # Drawn at each start, so the peer tells our restart from a replay of old datagrams.
        self.boot = secrets.randbits(63)
        self._replay = heartbeat_msg.Replay()
        host, port = listen.rsplit(":", 1)
        phost, pport = peer.rsplit(":", 1)
        # Resolved once: received datagrams are pinned to this address (numeric, as recvfrom
        # gives it).
        self.peer_addr = (socket.gethostbyname(phost), int(pport))
        self.interval = interval
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, int(port)))
        self.sock.settimeout(interval)
        self._lock = threading.Lock()
        self._payload: dict[str, Any] = {}
        self._last: PeerReport | None = None
        # Called on the receiving thread with each authentic payload whose "state" differs
        # from the one before it; the loop decides whether that is news to act on at once.
        self.on_state: Callable[[dict[str, Any]], None] | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_at = 0.0
        self._seq = 0
        self._sent: dict[int, float] = {}
        self._echo: tuple[int, int] | None = None  # (boot, seq) last received from the peer
        self.sent = 0
        self.received = 0
        self.rejected = 0  # datagrams on our port that were not an authentic heartbeat
        self.replayed = 0  # authentic, but a sequence number already seen from that boot

    def set_payload(self, payload: dict[str, Any]) -> None:
        with self._lock:
            self._payload = dict(payload)

    def last(self) -> PeerReport | None:
        with self._lock:
            return self._last

    def start(self) -> None:
        t = threading.Thread(target=self._recv_loop, name="heartbeat-recv", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        self.sock.close()

    def beat(self, now: float, urgent: bool = False) -> bool:
        """Send the payload if `interval` has passed since the last send, or at once when
        `urgent`; the loop calls this every cycle. Never blocks (UDP); True if a datagram
        went out."""
        with self._lock:
            if now < self._next_at and not urgent:
                return False
            self._next_at = now + self.interval
            self._seq += 1
            self._sent[self._seq] = now
            if len(self._sent) > 64:
                self._sent.pop(min(self._sent))
            msg = heartbeat_msg.encode(self.key, self.name, self.boot, self._seq,
                                       self._payload, self._echo)
        try:
            self.sock.sendto(msg, self.peer_addr)
        except OSError:
            return False  # the link is down; the peer will notice the silence
        self.sent += 1
        return True

    def _recv_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, src = self.sock.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            if src[:2] != self.peer_addr:
                self.rejected += 1  # only the peer's own socket speaks for the peer
                continue
            beat = heartbeat_msg.decode(self.key, data, self.name)
            if beat is None:
                self.rejected += 1  # not a heartbeat of ours: count it, never crash
                continue
            if not self._replay.fresh(beat):
                self.replayed += 1
                continue
            now = time.monotonic()
            with self._lock:
                rtt = sent_at = None
                if beat.echo is not None and beat.echo[0] == self.boot:
                    sent_at = self._sent.get(beat.echo[1])
                    rtt = now - sent_at if sent_at is not None else None
                self._echo = (beat.boot, beat.seq)
                before = self._last
                self._last = PeerReport(now, beat.state, rtt, sent_at)
                self.received += 1
            if (self.on_state is not None
                    and (before is None or before.payload.get("state") != beat.state.get("state"))):
                self.on_state(beat.state)
