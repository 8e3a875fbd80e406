"""The carried-flow exchange on the forward link (`colo_proxy.wire.carry`): its two ends.

The primary's `Announcer` answers each authentic challenge of its secondary with one
announcement per carried flow; the secondary's `Listener` sends a challenge every
ANNOUNCE_EVERY seconds and writes the flows of authentic, fresh announcements into its
datapath's `carried` map. Each runs in a thread beside the proxy's loop, so the loop
never waits for them; they share only the datapath, whose map calls are single syscalls.
Frames come from a packet socket bound to the ethertype on the forward link: the BPF
programs pass up only those from the peer host's forward-link MAC (and count the rest);
the MAC is checked again here, then the HMAC. Whatever is refused is counted by reason
(`stats()`, the status reply, the metrics) and logged once per reason.
"""

from __future__ import annotations

import logging
import secrets
import select
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from colo_proxy.wire import carry
from colo_proxy.wire.offset import Offset

log = logging.getLogger("colo-proxy")


class Link(Protocol):
    """colo_proxy.kernel.packet_socket.PacketSocket bound to ETH_P_CARRY."""

    def fileno(self) -> int: ...
    def send(self, ethertype: int, payload: bytes, dst: bytes = ...) -> None: ...
    def receive_from(self, limit: int = ...) -> list[tuple[bytes, bytes]]: ...


class CarriedMap(Protocol):
    def carried_offsets(self) -> list[Offset]: ...
    def carry(self, offsets: list[Offset]) -> int: ...


def load_key(path: str) -> bytes:
    """The pair's key (the orchestrators' heartbeat key file, white space stripped);
    ValueError saying what is wrong with it."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror}") from exc
    if len(key) < carry.MIN_KEY:
        raise ValueError(f"it holds {len(key)} bytes; the pair's key needs at least "
                         f"{carry.MIN_KEY}")
    return key


class _End:
    """One end's thread, socket and counts."""

    name = "carry"

    def __init__(self, dp: CarriedMap, link: Link, key: bytes, peer_mac: bytes) -> None:
        self.dp, self.link, self.key, self.peer = dp, link, key, peer_mac
        self.sent = 0  # announcements (primary) or challenges (secondary)
        self.accepted = 0  # challenges answered (primary) or announcements taken (secondary)
        self.refused: dict[str, int] = {}
        self._stop = threading.Event()
        self._poll = select.poll()
        self._poll.register(link.fileno(), select.POLLIN)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "accepted": self.accepted, "refused": dict(self.refused)}

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self._tick(time.monotonic())
            if not self._poll.poll(max(0, int(min(wait, 0.5) * 1000))):
                continue
            try:
                frames = self.link.receive_from()
            except OSError as exc:
                log.warning("%s: reading the forward link: %s", self.name, exc)
                self._stop.wait(1.0)
                continue
            for src, data in frames:
                if src != self.peer:
                    self._refuse(carry.Refused("source"), src)
                else:
                    self._on_frame(data)

    def _tick(self, now: float) -> float:
        """Send what is due; returns how long to wait for frames at most."""
        return 0.5

    def _on_frame(self, data: bytes) -> None:
        raise NotImplementedError

    def _send(self, payload: bytes) -> bool:
        try:
            self.link.send(carry.ETH_P_CARRY, payload, dst=self.peer)
        except OSError as exc:  # a full device queue or a link down: the next round repeats
            log.debug("%s: %s", self.name, exc)
            return False
        self.sent += 1
        return True

    def _refuse(self, why: carry.Refused, src: bytes | None = None) -> None:
        n = self.refused.get(why.reason, 0) + 1
        self.refused[why.reason] = n
        if n == 1:
            log.warning("%s: refused a frame on the forward link (%s%s); counted from now on",
                        self.name, why.reason, f", from {src.hex(':')}" if src else "")


class Announcer(_End):
    """Primary: answers each authentic, new challenge with its carried flows."""

    name = "carry-announcer"

    def __init__(self, dp: CarriedMap, link: Link, key: bytes, peer_mac: bytes) -> None:
        super().__init__(dp, link, key, peer_mac)
        self._answer = carry.Answerer(key)

    def _on_frame(self, data: bytes) -> None:
        got = self._answer.on_frame(data)
        if isinstance(got, carry.Refused):
            self._refuse(got)
        elif got is not None:
            self.accepted += 1
            for payload in self._answer.announcements(got, self.dp.carried_offsets()):
                if not self._send(payload):
                    break


class Listener(_End):
    """Secondary: challenges every `every` seconds; takes the announcements answering one."""

    name = "carry-listener"

    def __init__(self, dp: CarriedMap, link: Link, key: bytes, peer_mac: bytes,
                 every: float = carry.ANNOUNCE_EVERY) -> None:
        super().__init__(dp, link, key, peer_mac)
        self.every = every
        self._challenger = carry.Challenger(key, secrets.token_bytes)
        self._due = 0.0

    def _tick(self, now: float) -> float:
        if now >= self._due:
            self._send(self._challenger.challenge())
            self._due = now + self.every
        return self._due - now

    def _on_frame(self, data: bytes) -> None:
        got = self._challenger.accept(data)
        if isinstance(got, carry.Refused):
            self._refuse(got)
        elif got is not None:
            self.dp.carry([got])
            self.accepted += 1
