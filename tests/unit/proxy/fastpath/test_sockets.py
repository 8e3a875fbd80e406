"""The fast path's socket half with the primary proxy, over socketpairs (no root): NFQUEUE
packet messages in, verdict messages out, the SVM's packets on a second socket.

What must hold: a matching exchange of a lent flow is released in C without a record for
Python; a batch verdict never passes over a packet still held in C; pass-through and
fencing decide every packet, those held in C included.
"""

from __future__ import annotations

import socket
import struct

import pytest

from colo_proxy import fastpath
from colo_proxy.compare import CompareConfig
from colo_proxy.service.primary import PrimaryProxy
from colo_proxy.service.settings import ProxySettings
from tests.support.packets import ACK, PSH, SYN, tcp

if not fastpath.available():
    pytest.skip("no fast path build (scripts/build-fastpath)", allow_module_level=True)

QUEUE = 7
CACK = 5001
SINGLE, BATCH = (3 << 8) | 1, (3 << 8) | 3


def nfq_packet(packet_id: int, payload: bytes) -> bytes:
    """A NFQNL_MSG_PACKET netlink message as the kernel sends it (the attributes we read)."""
    def attr(kind: int, data: bytes) -> bytes:
        return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)
    body = struct.pack("!BBH", 2, 0, QUEUE) + attr(1, struct.pack("!IHB", packet_id, 0x0800, 3))
    body += attr(10, payload)
    return struct.pack("=IHHII", 16 + len(body), 3 << 8, 0, 0, 0) + body


class Pair:
    """A primary proxy on the fast path, its queue and SVM socket ends held by the test."""

    def __init__(self) -> None:
        self.nfq, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.svm, self.fwd = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.kernel.setblocking(False)
        s = ProxySettings(compare=CompareConfig(compare_timeout=10.0))
        self.fast = fastpath.FastPath(2048, 1 << 22)
        self.fast.attach(self.nfq.fileno(), QUEUE, self.svm.fileno(), -1, 64)
        self.proxy = PrimaryProxy(s, self.fast, self.fast, notify=lambda m: 1, fast=self.fast)
        self.woke = 0

    def pvm(self, packet_id: int, packet: bytes) -> None:
        self.kernel.send(nfq_packet(packet_id, packet))

    def svm_out(self, packet: bytes) -> None:
        self.fwd.send(packet)

    def turn(self) -> None:
        """One turn of the loop: C serves until Python has records (or 50 ms)."""
        if self.fast.poll(0.05, self.proxy.hold_limit, 0) & fastpath.POLL_RECORDS:
            self.woke += 1
            self.proxy.on_fast()

    def verdicts(self) -> list[tuple[int, int, int]]:
        """(message type, verdict, id) of every verdict sent so far."""
        out = []
        while True:
            try:
                msg = self.kernel.recv(65536)
            except BlockingIOError:
                return out
            for off in range(0, len(msg), 32):
                (mtype,) = struct.unpack_from("=H", msg, off + 4)
                v, pid = struct.unpack_from("!II", msg, off + 24)
                out.append((mtype, v, pid))


def reply(isn: int, i: int, dport: int = 40000) -> bytes:
    body = b"HTTP/1.1 200 OK\r\n\r\nreply %03d" % i
    return tcp(isn + 1 + i * len(body), CACK + 10 * (i + 1), ACK | PSH, body, dport=dport)


def handshake(p: Pair, pid: int, dport: int = 40000) -> None:
    p.pvm(pid, tcp(1000, CACK, SYN | ACK, dport=dport))
    p.svm_out(tcp(9000, CACK, SYN | ACK, dport=dport))
    p.turn()
    p.turn()


def lent() -> Pair:
    """A pair whose flow went through the comparator once (handshake, one exchange) and
    is now lent; its verdicts read."""
    p = Pair()
    handshake(p, 1)
    p.pvm(2, reply(1000, 0))
    p.svm_out(reply(9000, 0))
    p.turn()
    p.turn()
    assert p.verdicts()[-1][1:] == (1, 2)
    assert p.fast.lent_flows == 1
    return p


def test_matching_exchanges_are_released_in_c_without_waking_python() -> None:
    p = lent()
    woke = p.woke
    for i in range(1, 20):
        p.pvm(2 + i, reply(1000, i))
        p.svm_out(reply(9000, i))
        p.turn()
        assert p.verdicts() == [(BATCH, 1, 2 + i)]
    assert p.woke == woke
    assert p.fast.stats()["released"] == 19
    assert p.fast.outstanding == 0


def test_a_batch_verdict_never_passes_over_a_packet_held_in_c() -> None:
    p = lent()
    # id 3 waits in C for its twin; id 4 (another flow's SYN/ACK and its twin) goes to
    # the comparator, which releases it: a single verdict, not a batch up to 4.
    p.pvm(3, reply(1000, 1))
    p.turn()
    p.pvm(4, tcp(2000, CACK, SYN | ACK, dport=40001))
    p.svm_out(tcp(2000, CACK, SYN | ACK, dport=40001))
    p.turn()
    p.turn()
    assert p.verdicts() == [(SINGLE, 1, 4)]
    assert p.fast.held_packets == 1
    p.svm_out(reply(9000, 1))
    p.turn()
    assert p.verdicts() == [(BATCH, 1, 3)]
    assert p.fast.outstanding == 0


@pytest.mark.parametrize("kind, verdict", [("pause", 1), ("fence", 0)])
def test_pass_through_and_fencing_decide_what_c_holds(kind: str, verdict: int) -> None:
    p = lent()
    p.pvm(3, reply(1000, 1))
    p.turn()
    assert p.fast.held_packets == 1
    p.proxy.on_control({"type": kind})
    assert p.fast.lent_flows == 0 and p.fast.outstanding == 0
    assert [v[1:] for v in p.verdicts()] == [(verdict, 3)]


def test_a_checkpoint_takes_back_what_c_holds_and_releases_it() -> None:
    p = lent()
    p.pvm(3, reply(1000, 1))
    p.turn()
    p.proxy.on_control({"type": "checkpoint_barrier"})
    assert p.fast.lent_flows == 0 and p.proxy.cmp.held_packets == 1
    p.proxy.on_control({"type": "checkpoint_done"})
    assert [v[1:] for v in p.verdicts()] == [(1, 3)]
