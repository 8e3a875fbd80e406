"""The NFQUEUE socket: bind a queue over raw nfnetlink, read packets, send verdicts.

Thin adapter over `colo_proxy.wire.nfqueue_msgs`: the only module that touches the netlink
socket.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from colo_proxy.wire import nfqueue_msgs as p

SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33  # not exported by the socket module
# One received datagram holds one queued packet; a GSO super-packet is up to 64 KiB plus
# headers, so this buffer never truncates.
RECV_BUF = 256 * 1024


@dataclass(frozen=True, slots=True)
class QueueConfig:
    num: int
    copy_range: int = p.MAX_COPY_RANGE
    maxlen: int = 8192  # packets the kernel holds for us before the full-queue policy applies
    # False: the kernel splits GSO super-packets into MSS-sized segments before queueing
    # them. True (NFQA_CFG_F_GSO) queues them whole: fewer packets, but a held super-packet
    # waits until the SVM has sent every one of its bytes, which a congestion-limited SVM
    # may not do before the client acknowledges some of them (docs/PROXY.md, "Bulk
    # transfers").
    gso: bool = False
    fail_open: bool = False  # queue full: accept uncompared (True) or drop (False)
    # Where `decide(requeue=...)` sends packets: the segmenting queue (docs/PROXY.md, "Bulk
    # transfers"); the kernel segments a GSO packet on its way there when that queue has
    # no NFQA_CFG_F_GSO.
    resegment_to: int = 0
    rcvbuf: int = 16 * 1024 * 1024  # socket receive buffer (SO_RCVBUFFORCE)


class NfQueue:
    def __init__(self, cfg: QueueConfig) -> None:
        self.cfg = cfg
        self.enobufs = 0  # times the socket buffer overflowed (the kernel dropped or passed)
        self._seq = 0
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, p.NETLINK_NETFILTER)
        try:
            self._sock.bind((0, 0))
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, cfg.rcvbuf)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.rcvbuf)
            self._buf = bytearray(RECV_BUF)
            self._request(p.config_cmd(cfg.num, p.NFQNL_CFG_CMD_BIND, seq=self._next_seq()),
                          f"bind NFQUEUE {cfg.num} (is another process bound to it?)")
            flags = (p.NFQA_CFG_F_GSO if cfg.gso else 0) | (
                p.NFQA_CFG_F_FAIL_OPEN if cfg.fail_open else 0)
            self._request(
                p.config_params(cfg.num, copy_range=cfg.copy_range, maxlen=cfg.maxlen,
                                flags=flags, seq=self._next_seq()),
                f"configure NFQUEUE {cfg.num}")
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self.planner = p.VerdictPlanner()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _request(self, msg: bytes, what: str) -> None:
        seq = _NLMSG_SEQ(msg)
        self._sock.settimeout(5.0)
        self._sock.send(msg)
        while True:
            n = self._sock.recv_into(self._buf)
            for item in p.parse(self._buf, n):
                if isinstance(item, p.Ack) and item.seq == seq:
                    if item.errno:
                        raise p.NfqError(item.errno, what)
                    return

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self, limit: int = 64) -> list[p.QueuedPacket]:
        """Up to `limit` queued packets that are ready now (never blocks)."""
        out: list[p.QueuedPacket] = []
        recv_into = self._sock.recv_into
        buf = self._buf
        held = self.planner.held
        while len(out) < limit:
            try:
                n = recv_into(buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.enobufs += 1
                    continue
                raise
            for item in p.parse(buf, n):
                if isinstance(item, p.QueuedPacket):
                    held(item.packet_id)
                    out.append(item)
        return out

    def decide(self, accept: Iterable[int], drop: Iterable[int] = (),
               requeue: Iterable[int] = ()) -> None:
        msg = self.planner.encode(self.cfg.num, accept, drop, requeue, self.cfg.resegment_to)
        if msg:
            self._send(msg)

    def accept_all(self) -> None:
        """Release everything still held (failover to pass-through, shutdown)."""
        self.decide(self.planner.outstanding())

    def drop_all(self) -> None:
        """Drop everything still held (fenced: fail closed)."""
        self.decide((), self.planner.outstanding())

    def _send(self, msg: bytes) -> None:
        # Verdicts must not be lost: wait for socket space rather than drop one, which
        # would strand a packet in the kernel queue until we exit. Netlink sends to the
        # kernel normally never block, so the common case costs one syscall.
        try:
            self._sock.send(msg)
        except BlockingIOError:
            self._sock.setblocking(True)
            try:
                self._sock.send(msg)
            finally:
                self._sock.setblocking(False)

    def close(self) -> None:
        # Closing the socket unbinds the queue; the kernel drops what it still held
        # (fail-closed) and TCP retransmits once a consumer is back.
        self._sock.close()

    def __enter__(self) -> NfQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _NLMSG_SEQ(msg: bytes) -> int:
    return int.from_bytes(msg[8:12], "little")
