"""nfnetlink_queue messages and verdict planning, without any socket (sans-IO).

The kernel side is `net/netfilter/nfnetlink_queue.c`; constants mirror
`include/uapi/linux/netfilter/nfnetlink_queue.h`. We speak the protocol directly instead
of going through libnetfilter_queue because we need exactly four things the PyPI binding
lacks (batch verdicts, the GSO flag, fail-open and a copy range past 4016 bytes) and the
message format is small and stable.

Batch verdicts (`NFQNL_MSG_VERDICT_BATCH`) apply to *every* queued packet whose id is at
or before the given id (in 32-bit serial-number order: ids wrap). The comparator releases per flow, so releases are not always a prefix
of the queue: `VerdictPlanner` sends one batch verdict for the longest released prefix of
the outstanding ids and single verdicts for the rest.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4

NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5

NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2

NFQNL_COPY_PACKET = 2

NFQA_CFG_F_FAIL_OPEN = 0x1
NFQA_CFG_F_GSO = 0x4

NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_PHYSINDEV = 7
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13
NFQA_SKB_INFO = 14

NFQA_SKB_CSUMNOTREADY = 0x1
NFQA_SKB_GSO = 0x2

NF_DROP = 0
NF_ACCEPT = 1
# NF_QUEUE with a queue number in the high 16 bits (NF_QUEUE_NR): nfqnl_recv_verdict takes
# any verdict whose low byte is at most NF_STOP, and nf_reinject hands the packet to
# nf_queue for that queue, which resumes at the next hook when it is accepted there
# (net/netfilter/nfnetlink_queue.c). A queue without NFQA_CFG_F_GSO segments a GSO
# packet first (nfqnl_enqueue_packet -> skb_gso_segment): the proxy's resegmenting.
NF_QUEUE = 3

# The kernel caps copy_range at 0xffff minus an attribute header; asking for more is fine.
MAX_COPY_RANGE = 0xFFFF

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (queue number, big-endian)
_NLA = struct.Struct("=HH")
_VERDICT_HDR = struct.Struct("!II")
_PKT_HDR = struct.Struct("!IHB")
_NLA_TYPE_MASK = 0x3FFF

_MSG_PACKET = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET


class NfqError(Exception):
    """The kernel refused a queue configuration message."""

    def __init__(self, errno_: int, what: str) -> None:
        self.errno = errno_
        super().__init__(f"{what}: errno {errno_}")


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, data: bytes) -> bytes:
    head = _NLA.pack(4 + len(data), kind)
    pad = b"\0" * (_align(len(data)) - len(data))
    return head + data + pad


def _message(msg: int, queue: int, attrs: bytes, *, flags: int, seq: int, family: int = 0) -> bytes:
    body = _NFGENMSG.pack(family, 0, queue) + attrs
    return _NLMSGHDR.pack(16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def config_cmd(queue: int, command: int, *, seq: int) -> bytes:
    cmd = struct.pack("!BxH", command, 0)
    return _message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_CMD, cmd),
                    flags=NLM_F_REQUEST | NLM_F_ACK, seq=seq)


def config_params(
    queue: int, *, copy_range: int, maxlen: int, flags: int, seq: int
) -> bytes:
    params = struct.pack("!IB", copy_range, NFQNL_COPY_PACKET)
    mask = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO
    attrs = (
        _attr(NFQA_CFG_PARAMS, params)
        + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen))
        + _attr(NFQA_CFG_MASK, struct.pack("!I", mask))
        + _attr(NFQA_CFG_FLAGS, struct.pack("!I", flags & mask))
    )
    return _message(NFQNL_MSG_CONFIG, queue, attrs, flags=NLM_F_REQUEST | NLM_F_ACK, seq=seq)


def requeue_verdict(queue: int, packet_id: int, to: int) -> bytes:
    """Send a queued packet on to queue `to` (see NF_QUEUE)."""
    return verdict(queue, packet_id, True, code=NF_QUEUE | (to << 16))


def verdict(queue: int, packet_id: int, accept: bool, *, batch: bool = False,
            code: int | None = None) -> bytes:
    # Everything before the verdict header is the same for every verdict of a queue: built
    # once, so a release on the latency path costs one small pack and one concatenation.
    key = (queue, batch)
    head = _VERDICT_HEADS.get(key)
    if head is None:
        msg = NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT
        full = _message(msg, queue, _attr(NFQA_VERDICT_HDR, bytes(_VERDICT_HDR.size)),
                        flags=NLM_F_REQUEST, seq=0)
        head = _VERDICT_HEADS[key] = full[: -_VERDICT_HDR.size]
    if code is None:
        code = NF_ACCEPT if accept else NF_DROP
    return head + _VERDICT_HDR.pack(code, packet_id)


_VERDICT_HEADS: dict[tuple[int, bool], bytes] = {}


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~3x on the per-packet path
class QueuedPacket:
    """One packet the kernel holds for us: its id, the L3 bytes and what the kernel said."""

    packet_id: int
    hw_protocol: int  # ethertype (0x0800 IPv4, 0x86dd IPv6)
    payload: bytes
    gso: bool  # a GSO super-packet (NFQA_CFG_F_GSO): may be larger than the MTU
    cap_len: int  # original length; > len(payload) means the copy was truncated
    indev: int
    physindev: int

    @property
    def truncated(self) -> bool:
        return self.cap_len > len(self.payload)


@dataclass(frozen=True, slots=True)
class Ack:
    """The kernel's answer to a request we sent with NLM_F_ACK (errno 0 = success)."""

    seq: int
    errno: int


def parse(buf: memoryview | bytes | bytearray, length: int | None = None) -> Iterator[QueuedPacket | Ack]:
    """Every queued packet and ack in one received netlink datagram; junk is skipped."""
    mv = memoryview(buf)
    end = len(mv) if length is None else length
    off = 0
    while off + 16 <= end:
        mlen, mtype, _flags, seq, _pid = _NLMSGHDR.unpack_from(mv, off)
        if mlen < 16 or off + mlen > end:
            return
        if mtype == _MSG_PACKET:
            pkt = _parse_packet(mv, off + 20, off + mlen)
            if pkt is not None:
                yield pkt
        elif mtype == NLMSG_ERROR and mlen >= 20:
            (err,) = struct.unpack_from("=i", mv, off + 16)
            yield Ack(seq, -err)
        off += _align(mlen)


def _parse_packet(mv: memoryview, off: int, end: int) -> QueuedPacket | None:
    pid = hw = -1
    payload = b""
    skbinfo = 0
    cap = -1
    indev = physindev = 0
    while off + 4 <= end:
        alen, atype = _NLA.unpack_from(mv, off)
        if alen < 4 or off + alen > end:
            break
        atype &= _NLA_TYPE_MASK
        if atype == NFQA_PACKET_HDR:
            pid, hw, _hook = _PKT_HDR.unpack_from(mv, off + 4)
        elif atype == NFQA_PAYLOAD:
            payload = bytes(mv[off + 4 : off + alen])
        elif atype == NFQA_SKB_INFO:
            (skbinfo,) = struct.unpack_from("!I", mv, off + 4)
        elif atype == NFQA_CAP_LEN:
            (cap,) = struct.unpack_from("!I", mv, off + 4)
        elif atype == NFQA_IFINDEX_INDEV:
            (indev,) = struct.unpack_from("!I", mv, off + 4)
        elif atype == NFQA_IFINDEX_PHYSINDEV:
            (physindev,) = struct.unpack_from("!I", mv, off + 4)
        off += _align(alen)
    if pid < 0:
        return None
    return QueuedPacket(pid, hw, payload, bool(skbinfo & NFQA_SKB_GSO),
                        cap if cap >= 0 else len(payload), indev, physindev)


# Packet ids are the queue's 32-bit `id_sequence`, which wraps. The kernel orders them as
# serial numbers (RFC 1982): `nfq_id_after()` in net/netfilter/nfnetlink_queue.c is
# `(int)(id - max) > 0`, and a batch verdict up to X takes queued packets, oldest first,
# until the first one "after" X. Compared as plain integers, X = 1 just past the wrap
# would look below a held 0xffffffff, yet the kernel's batch takes that packet too.
ID_MASK = 0xFFFFFFFF
_ID_HALF = 0x80000000


class VerdictPlanner:
    """Which verdict messages release a set of packets, using batch verdicts where safe.

    `held(id)` records a packet we received and have not yet decided; `plan()` turns
    accepts and drops into (batch_max_id, single accepts, single drops). A batch verdict
    up to X is safe only when every outstanding id at or before X is being accepted now;
    ids from the kernel only grow (modulo 2^32), and unread packets come after any we
    have read. Internally each id is unwrapped onto an unbounded count (its "serial"),
    so the heap orders packets the way the kernel's `nfq_id_after` does across the wrap;
    the queue holds far fewer than 2^31 packets, so the nearest unwrapping is the right one.
    """

    def __init__(self) -> None:
        self._outstanding: dict[int, int] = {}  # kernel id -> serial
        self._heap: list[int] = []  # serials, with lazily removed released ones
        self._base = 0  # 2^32 times the wraps so far: serial = id + base
        self._last = 0  # serial of the newest held packet

    def __len__(self) -> int:
        return len(self._outstanding)

    def held(self, packet_id: int) -> None:
        serial = packet_id + self._base
        if serial <= self._last - _ID_HALF:  # the id wrapped past 2^32 - 1
            self._base += ID_MASK + 1
            serial += ID_MASK + 1
        self._last = serial
        self._outstanding[packet_id] = serial
        heapq.heappush(self._heap, serial)

    def outstanding(self) -> list[int]:
        """The held ids, oldest first (the kernel's queue order)."""
        return [s & ID_MASK for s in sorted(self._outstanding.values())]

    def _lowest(self) -> int | None:
        """The serial of the oldest still-held packet, dropping released ones off the heap."""
        heap, out = self._heap, self._outstanding
        while heap and out.get(heap[0] & ID_MASK) != heap[0]:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def plan(
        self, accept: Iterable[int], drop: Iterable[int] = ()
    ) -> tuple[int | None, list[int], list[int]]:
        out = self._outstanding
        acc = [(out.pop(i), i) for i in accept if i in out]
        drp = [(out.pop(i), i) for i in drop if i in out]
        low = self._lowest()
        # Drops below the lowest still-held id would be accepted by a batch covering them,
        # so the batch must stop below the lowest dropped id as well.
        if drp:
            low_drop = min(drp)[0]
            low = low_drop if low is None else min(low, low_drop)
        batch = [a for a in acc if low is None or a[0] < low]
        singles = [i for s, i in acc if low is not None and s > low]
        return (max(batch)[1] if batch else None), singles, [i for _, i in drp]

    def encode(self, queue: int, accept: Iterable[int], drop: Iterable[int] = (),
               requeue: Iterable[int] = (), to: int = 0) -> bytes:
        """One buffer of netlink messages (sent with one syscall) deciding these packets.

        `requeue`: ids sent on to queue `to`, in this order (planned as drops are: no
        batch verdict passes over them).
        """
        moving = list(requeue)
        if moving:
            batch, singles, drops = self.plan(accept, [*drop, *moving])
            decided = set(drops)  # the held ones among them
            moved = set(moving)
            parts = [verdict(queue, i, True) for i in singles]
            parts += [verdict(queue, i, False) for i in drops if i not in moved]
            parts += [requeue_verdict(queue, i, to) for i in moving if i in decided]
            if batch is not None:
                parts.append(verdict(queue, batch, True, batch=True))
            return b"".join(parts)
        if not drop and isinstance(accept, list) and len(accept) == 1:
            # A request/response exchange releases one packet at a time: plan() for one id,
            # without its lists.
            pid = accept[0]
            out = self._outstanding
            serial = out.pop(pid, None)
            if serial is None:
                return b""
            heap = self._heap
            while heap and out.get(heap[0] & ID_MASK) != heap[0]:
                heapq.heappop(heap)
            return verdict(queue, pid, True, batch=not heap or serial < heap[0])
        batch, singles, drops = self.plan(accept, drop)
        parts = [verdict(queue, i, True) for i in singles]
        parts += [verdict(queue, i, False) for i in drops]
        if batch is not None:
            parts.append(verdict(queue, batch, True, batch=True))
        return b"".join(parts)
