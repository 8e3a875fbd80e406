"""Commands, flow names and reasons: the vocabulary of the comparator.

Commands are imperatives for the caller (release these PVM packets, drop these SVM packets,
request a checkpoint, tick me at T). They are frozen and slotted so that tests compare them
with ``==`` and the hot path pays as little as possible to build them.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

PacketId = int


class Side(enum.IntEnum):
    """Which replica produced a packet."""

    PRIMARY = 0
    SECONDARY = 1


class Reason(enum.StrEnum):
    """Why a checkpoint is requested. A StrEnum, so ``Reason.PAYLOAD == "payload"``."""

    PAYLOAD = "payload"  # first differing byte of a TCP stream
    TCP_FLAGS = "tcp_flags"  # FIN at different stream positions, data past the other's FIN
    DATAGRAM = "datagram"  # UDP/ICMP/other datagrams without a twin within the window
    TIMEOUT = "timeout"  # a PVM packet waited compare_timeout without an SVM twin
    QUEUE_FULL = "queue_full"  # a per-flow or total bound on held data was reached
    UNPARSEABLE = "unparseable"  # a PVM packet the parser could not read (policy checkpoint)
    POLICY = "policy"  # a fragment or other protocol under the "checkpoint" policy


REASONS: tuple[str, ...] = tuple(r.value for r in Reason)

_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}


@dataclass(frozen=True, slots=True)
class Flow:
    """A flow as the VMs send it: ``src`` is always the VM's side.

    ``proto`` is the IP protocol number; for fragments and unparseable input the
    pseudo-flows use ``proto`` 44 (IPv6 Fragment) or -1 and zero ports.
    """

    proto: int
    src: str
    sport: int
    dst: str
    dport: int

    def __str__(self) -> str:
        name = _PROTO_NAMES.get(self.proto, str(self.proto))
        return f"{name} {_hostport(self.src, self.sport)} > {_hostport(self.dst, self.dport)}"


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def flow_from_key(proto: int, rest: bytes) -> Flow:
    """Name a flow from the address-and-port part of an internal table key."""
    if len(rest) == 12:  # IPv4 addresses + ports
        src, dst = str(ipaddress.IPv4Address(rest[0:4])), str(ipaddress.IPv4Address(rest[4:8]))
        return Flow(proto, src, int.from_bytes(rest[8:10]), dst, int.from_bytes(rest[10:12]))
    if len(rest) == 36:  # IPv6 addresses + ports
        src, dst = str(ipaddress.IPv6Address(rest[0:16])), str(ipaddress.IPv6Address(rest[16:32]))
        return Flow(proto, src, int.from_bytes(rest[32:34]), dst, int.from_bytes(rest[34:36]))
    return Flow(-1, "", 0, "", 0)


@dataclass(frozen=True, slots=True)
class Release:
    """These PVM packets may go to the client now, in this order."""

    packet_ids: tuple[PacketId, ...]


@dataclass(frozen=True, slots=True)
class Drop:
    """These SVM packets are consumed: compared, superseded or discarded by a checkpoint."""

    packet_ids: tuple[PacketId, ...]


# What the adapter knows of a PVM packet's copy (``Comparator.packet``'s ``copy``).
WHOLE = 0  # as the VM sent it, and the kernel cannot segment it any further for us
SUPER = 1  # a GSO super-packet queued whole: the kernel can segment it (Resegment)
SEGMENT = 2  # one segment of a packet sent back by Resegment: carries bytes seen before


@dataclass(frozen=True, slots=True)
class Resegment:
    """Have the kernel segment these held PVM packets and queue them again, in this order.

    The comparator has let go of these ids: their bytes come back as new packets (new ids,
    ``copy=SEGMENT``), segments of at most one MSS that can be released as far as the SVM
    matched. Sent when the SVM stopped inside a held super-packet (docs/PROXY.md, "Bulk
    transfers").
    """

    packet_ids: tuple[PacketId, ...]


@dataclass(frozen=True, slots=True)
class RequestCheckpoint:
    """The replicas diverged (or may have): ask the orchestrator for a checkpoint.

    ``offset`` is the index of the first differing byte of the VM-to-client stream of
    ``flow`` (TCP, counted from the first payload byte) or of the compared datagram; None
    when the reason has no position (timeout, queue_full, policy, unparseable).
    """

    reason: str
    flow: Flow | None
    offset: int | None


@dataclass(frozen=True, slots=True)
class Wakeup:
    """Call ``tick`` at (or soon after) time ``at``; a later Wakeup replaces earlier ones."""

    at: float


Command = Release | Drop | Resegment | RequestCheckpoint | Wakeup


@dataclass(frozen=True, slots=True)
class LentFlow:
    """A TCP flow's state as ``Comparator.lend`` hands it to a fast path.

    Stream offsets count from each side's first payload byte, sequence and ACK bases are
    the 32-bit numbers the offsets are taken from. At most one side is ahead of
    ``matched``; its unmatched bytes come as the packets that carried them: ``held``, the
    PVM packets still held in arrival order (id, stream end, ACK offset, arrival time,
    whether a super-packet the adapter can have segmented, the packet's bytes still to
    compare or b""), and ``s_kept``, the SVM's (start, bytes) in stream order. The
    inverse of ``Comparator.take_back``.
    """

    p_base: int
    s_base: int
    p_abase: int
    s_abase: int
    matched: int
    s_ack: int
    p_amax: int
    p_top: int
    s_top: int
    s_prog: float
    held: tuple[tuple[PacketId, int, int, float, bool, bytes], ...] = ()
    s_kept: tuple[tuple[int, bytes], ...] = ()
