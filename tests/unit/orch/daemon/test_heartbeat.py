"""colo_orch.daemon.heartbeat: only the live peer is heard, and only while the loop beats."""

from __future__ import annotations

import socket
import time

from colo_lab.wait import wait_until
from colo_orch.core.heartbeat_msg import encode
from colo_orch.daemon.heartbeat import Heartbeat

KEY = b"the pair's secret"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pair(interval: float = 0.05) -> tuple[Heartbeat, Heartbeat, int, int]:
    pa, pb = _free_port(), _free_port()
    a = Heartbeat(f"127.0.0.1:{pa}", f"127.0.0.1:{pb}", interval, "web", KEY)
    b = Heartbeat(f"127.0.0.1:{pb}", f"127.0.0.1:{pa}", interval, "web", KEY)
    return a, b, pa, pb


def test_the_peer_is_still_heard_after_garbage_on_the_port() -> None:
    a, b, _, pb = _pair()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stray:
        stray.bind(("127.0.0.1", 0))
        # Queued before the first heartbeat, so the receiver reads them first. "[]" killed
        # its thread ('list' object has no attribute 'get'): the peer was never heard again.
        for data in (b"[]", b"{", b'{"v": 1, "pair": "web", "seq": 1, "state": []}',
                     # a forgery without the key, claiming the peer is a healthy secondary
                     encode(b"not the pair's key", "web", 1, 1, {"role": "secondary"}, None),
                     # signed with the key, but not from the peer's address
                     encode(KEY, "web", 1, 1, {"role": "secondary"}, None)):
            stray.sendto(data, ("127.0.0.1", pb))
        b.start()
        try:
            a.set_payload({"state": 4, "role": "primary", "vm_ok": True})
            a.start()
            def heard() -> bool:
                a.beat(time.monotonic())
                return b.last() is not None
            wait_until(heard, 10, "a heartbeat after the garbage")
            rep = b.last()
            assert rep is not None and rep.payload["role"] == "primary"
            assert b.rejected == 5
            # A recording of the peer's heartbeats cannot stand in for it: replayed from the
            # peer's own address and port (a's socket), it is refused.
            got = rep.payload
            a.sock.sendto(encode(KEY, "web", a.boot, 1, {"role": "secondary"}, None),
                          ("127.0.0.1", pb))
            wait_until(lambda: b.replayed == 1, 10, "the replayed heartbeat to be refused")
            last = b.last()
            assert last is not None and last.payload == got
        finally:
            a.stop()
            b.stop()


def test_the_echo_tells_when_the_peer_last_heard_us() -> None:
    a, b, _, _ = _pair()
    a.start()
    b.start()
    try:
        def echoed() -> bool:
            now = time.monotonic()
            a.beat(now)
            b.beat(now)
            rep = a.last()
            return rep is not None and rep.echo_sent_at is not None
        wait_until(echoed, 10, "b to echo one of a's heartbeats")
        rep = a.last()
        assert rep is not None and rep.echo_sent_at is not None and rep.rtt is not None
        assert rep.echo_sent_at <= rep.received_at
        # a restarts (a new boot): b's echoes name the old boot, so they say nothing about
        # whether b hears the new a.
        old = a.boot
        a.boot = old + 1
        b.beat(time.monotonic() + 1.0)
        wait_until(lambda: (r := a.last()) is not None and r.received_at > rep.received_at,
                   10, "b's next heartbeat")
        later = a.last()
        assert later is not None and later.echo_sent_at is None
    finally:
        a.stop()
        b.stop()


def test_only_the_loop_sends_and_at_most_once_per_interval() -> None:
    a, b, _, _ = _pair(interval=0.1)
    try:
        t = time.monotonic()
        assert a.beat(t)
        assert not a.beat(t + 0.05)  # the loop runs faster than the interval
        assert a.beat(t + 0.1)
        assert a.sent == 2
        # Nothing beats by itself: a wedged loop is a silent peer.
        a.start()
        time_sent = a.sent
        b.start()
        wait_until(lambda: b.received >= 1, 5, "the two datagrams already sent")
        assert a.sent == time_sent
    finally:
        a.stop()
        b.stop()


def test_an_urgent_beat_goes_out_at_once_and_a_changed_state_is_reported() -> None:
    # A switchover's hand-over waited up to one interval (100 ms) for the peer to hear
    # that the primary fenced, and then for the peer's next loop cycle.
    a, b, _, _ = _pair(interval=10.0)
    states: list[object] = []
    b.on_state = lambda payload: states.append(payload.get("state"))
    b.start()
    try:
        t = time.monotonic()
        a.set_payload({"state": 4, "role": "primary"})
        assert a.beat(t)
        assert not a.beat(t + 0.01)  # within the interval: nothing
        assert a.beat(t + 0.02, urgent=True)
        a.set_payload({"state": 10, "role": "primary"})
        assert a.beat(t + 0.03, urgent=True)
        wait_until(lambda: b.received == 3, 5, "three heartbeats")
        # The same state twice is reported once: the loop is not woken for every beat.
        assert states == [4, 10]
    finally:
        a.stop()
        b.stop()
