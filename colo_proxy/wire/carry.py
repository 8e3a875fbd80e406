"""Carried-flow announcements on the forward link, and the challenges that keep them fresh.

After a role swap the primary rewrites the flows its VM opened while it was the SVM
(`colo_proxy.wire.handover`), and tells the secondary about them, so that the next
failover does not break them either: the secondary writes them into its `carried` map.
That map moves a connection's sequence numbers, so only the primary proxy may fill it.
BPF cannot compute an HMAC, so the datapath only passes these frames (ethertype 0x88B5,
from the peer host's forward-link MAC) up to the proxy's socket, which checks them here
and writes the map itself. They are few (one per carried flow every ANNOUNCE_EVERY
seconds), far from the packet path.

A frame's payload (after the Ethernet header), network byte order:

    head          "COLO", version 2, kind (1 challenge, 2 announcement), 2 zero bytes
    challenge     head, nonce (16 bytes)                                       tag
    announcement  head, nonce (of the challenge it answers), vm_ip (16),
                  peer_ip (16), vm_port, peer_port, offset, ts_offset,
                  ts_valid (1 byte), 3 zero bytes                              tag

`tag` is HMAC-SHA256 under the pair's key (the orchestrators' heartbeat key) over CONTEXT
and everything before it; addresses are IPv6, IPv4 v4-mapped, as in the BPF maps.

Freshness without a clock shared between the hosts, as the orchestrators' heartbeats: the
secondary draws a random nonce every ANNOUNCE_EVERY seconds and sends it as a challenge;
the primary answers each new authentic challenge with one announcement per carried flow,
echoing its nonce; the secondary takes an announcement only when it echoes one of its two
latest nonces. A forged frame lacks the tag, and a recorded one is stale two rounds later.
Everything here is pure: no sockets, no clock; `colo_proxy.service.carry_link` does the I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass

from colo_proxy.wire.offset import Offset

ETH_P_CARRY = 0x88B5  # IEEE 802 local experimental; COLO_ETH_P_CARRY in bpf/colo.h
MAGIC = b"COLO"
VERSION = 2
CHALLENGE, ANNOUNCEMENT = 1, 2
NONCE = 16
TAG = 32  # HMAC-SHA256
MIN_KEY = 16  # bytes, as the heartbeat key
ANNOUNCE_EVERY = 2.0  # seconds between challenges; a (re)started secondary hears within it
# Domain separation: no other message under the pair's key (the heartbeats) can pass for one
# of these.
CONTEXT = b"colo-proxy carried flows v2\0"
_HEAD = struct.Struct("!4sBBH")
_FLOW = struct.Struct("!16s16sHHIIB3x")
CHALLENGE_LEN = _HEAD.size + NONCE + TAG
ANNOUNCEMENT_LEN = _HEAD.size + NONCE + _FLOW.size + TAG


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Announcement:
    nonce: bytes  # of the challenge it answers
    offset: Offset  # the ISNs do not travel (0): only the offsets matter from here on


# Why a frame was refused: stable words for logs and the metrics' `reason` label
# ("source": from another MAC than the peer's forward link, checked by the adapter;
# "kind": neither a challenge nor an announcement).
REFUSALS = ("source", "short", "not_ours", "version", "kind", "tag", "stale")


@dataclass(frozen=True, slots=True)
class Refused:
    """Not an authentic, fresh message of ours; `reason` is one of REFUSALS."""

    reason: str


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, CONTEXT + body, hashlib.sha256).digest()


def _ip16(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    return (ipaddress.IPv6Address(f"::ffff:{addr}") if addr.version == 4 else addr).packed


def _ip_text(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped or addr)


def challenge(key: bytes, nonce: bytes) -> bytes:
    body = _HEAD.pack(MAGIC, VERSION, CHALLENGE, 0) + nonce
    return body + _tag(key, body)


def announcement(key: bytes, nonce: bytes, o: Offset) -> bytes:
    """The payload announcing one carried flow, in answer to the challenge `nonce`."""
    body = _HEAD.pack(MAGIC, VERSION, ANNOUNCEMENT, 0) + nonce + _FLOW.pack(
        _ip16(o.vm_ip), _ip16(o.peer_ip), o.vm_port, o.peer_port, o.offset % 2**32,
        (o.ts_offset or 0) % 2**32, int(o.ts_offset is not None))
    return body + _tag(key, body)


def read(key: bytes, data: bytes) -> Challenge | Announcement | Refused:
    """What `data` (a frame's payload) is; never raises. Ethernet pads short frames, so
    bytes past the message are ignored."""
    if len(data) < CHALLENGE_LEN:
        return Refused("short")
    magic, version, kind, _ = _HEAD.unpack_from(data)
    if magic != MAGIC:
        return Refused("not_ours")
    if version != VERSION:
        return Refused("version")
    size = {CHALLENGE: CHALLENGE_LEN, ANNOUNCEMENT: ANNOUNCEMENT_LEN}.get(kind)
    if size is None:
        return Refused("kind")
    if len(data) < size:
        return Refused("short")
    body, tag = data[:size - TAG], data[size - TAG:size]
    if not hmac.compare_digest(tag, _tag(key, body)):
        return Refused("tag")
    nonce = body[_HEAD.size:_HEAD.size + NONCE]
    if kind == CHALLENGE:
        return Challenge(nonce)
    vm, peer, vport, pport, off, ts, ts_valid = _FLOW.unpack_from(body, _HEAD.size + NONCE)
    ts_offset = (ts - 2**32 if ts >= 2**31 else ts) if ts_valid else None
    return Announcement(nonce, Offset(_ip_text(vm), vport, _ip_text(peer), pport, 0, 0, off,
                                      True, ts_offset))


class Challenger:
    """The secondary's end: a fresh challenge each round, and the announcements that echo
    one of the latest two (the one before still counts: its answers may be on their way)."""

    def __init__(self, key: bytes, draw: Callable[[int], bytes]) -> None:
        """draw(n): n random bytes (secrets.token_bytes; the adapter passes it in)."""
        self.key = key
        self._draw = draw
        self._recent: list[bytes] = []

    def challenge(self) -> bytes:
        nonce = self._draw(NONCE)
        self._recent = [nonce, *self._recent[:1]]
        return challenge(self.key, nonce)

    def accept(self, data: bytes) -> Offset | Refused | None:
        """The flow an authentic, fresh announcement carries; a refusal; or None for an
        authentic challenge (the peer is a secondary too for a moment: a role swap)."""
        msg = read(self.key, data)
        if isinstance(msg, Challenge):
            return None
        if isinstance(msg, Refused):
            return msg
        if msg.nonce not in self._recent:
            return Refused("stale")
        return msg.offset


class Answerer:
    """The primary's end: which challenges to answer. Each nonce once: a replayed challenge
    starts no new round (an attacker who can replay on the forward link can flood it
    anyway; this only keeps recordings from multiplying our announcements)."""

    REMEMBER = 4

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._answered: list[bytes] = []

    def on_frame(self, data: bytes) -> bytes | Refused | None:
        """The nonce to answer now; a refusal; or None: authentic, but already answered,
        or an announcement (the peer is a primary too for a moment: a role swap)."""
        msg = read(self.key, data)
        if isinstance(msg, Refused):
            return msg
        if isinstance(msg, Announcement) or msg.nonce in self._answered:
            return None
        self._answered = [msg.nonce, *self._answered[:self.REMEMBER - 1]]
        return msg.nonce

    def announcements(self, nonce: bytes, offsets: list[Offset]) -> list[bytes]:
        return [announcement(self.key, nonce, o) for o in offsets if o.shifts]
