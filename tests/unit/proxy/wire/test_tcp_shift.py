"""colo_proxy.wire.tcp_shift: recorded SVM frames shifted as colo_tap_in shifts them after a
failover, with checksums that the clients' stacks accept."""

from __future__ import annotations

import random
import struct

import pytest

from colo_proxy.wire.offset import Offset
from colo_proxy.wire.tcp_shift import shift_frame, shifts_of
from tests.support.packets import (
    ACK,
    CLIENT4,
    CLIENT6,
    PSH,
    PVM_ISN,
    SVM_ISN,
    VM4,
    VM6,
    _pseudo,
    csum,
    ether,
    tcp,
    udp,
)

OFFSET = (SVM_ISN - PVM_ISN) & 0xFFFFFFFF
TS = struct.pack("!BBBBII", 1, 1, 8, 10, 5000 + 333, 42)  # NOP NOP TS(val, ecr)


def _offset(vm: str, peer: str, ts: int | None = 333) -> Offset:
    return Offset(vm, 80, peer, 40000, PVM_ISN, SVM_ISN, OFFSET, True, ts)


def _fields(frame: bytes, v6: bool) -> tuple[int, int, bool]:
    """(seq, TSval, checksum right) of a frame built by tests.support.packets.tcp."""
    l3 = 14
    l4 = l3 + (40 if v6 else 20)
    seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
    tsval = int.from_bytes(frame[l4 + 24:l4 + 28], "big")
    src, dst = (VM6, CLIENT6) if v6 else (VM4, CLIENT4)
    seg = frame[l4:]
    return seq, tsval, csum(_pseudo(src, dst, 6, len(seg)) + seg) == 0


@pytest.mark.parametrize("v6", [False, True])
def test_a_recorded_segment_is_shifted_into_the_clients_space(v6: bool) -> None:
    vm, peer = (VM6, CLIENT6) if v6 else (VM4, CLIENT4)
    frame = ether(tcp(SVM_ISN + 1, 9, PSH | ACK, b"answer", options=TS, v6=v6))
    out = shift_frame(frame, shifts_of([_offset(vm, peer)]))
    assert out is not None and len(out) == len(frame)
    assert _fields(out, v6) == (PVM_ISN + 1, 5000, True)
    # Only the sequence number, the timestamp and the checksum changed.
    assert out[-6:] == b"answer" and out[:14] == frame[:14]


def test_a_partial_checksum_is_made_whole_and_other_flows_keep_their_numbers() -> None:
    frame = bytearray(ether(tcp(777, 9, PSH | ACK, b"x" * 101, options=TS)))
    frame[14 + 20 + 16:14 + 20 + 18] = b"\x12\x34"  # as checksum offload leaves it
    out = shift_frame(bytes(frame), shifts_of([_offset(VM4, "10.99.0.200")]))
    assert out is not None and _fields(out, False) == (777, 5333, True)


def test_a_flow_seen_on_one_side_only_or_without_timestamps_is_shifted_as_the_bpf_does() -> None:
    half = Offset(VM4, 80, CLIENT4, 40000, 0, SVM_ISN, 0, False, None)
    assert shifts_of([half]) == {}
    no_ts = shifts_of([_offset(VM4, CLIENT4, ts=None)])
    out = shift_frame(ether(tcp(SVM_ISN + 1, 9, ACK, b"a", options=TS)), no_ts)
    assert out is not None and _fields(out, False) == (PVM_ISN + 1, 5333, True)


def test_what_is_not_a_whole_tcp_segment_is_not_replayed() -> None:
    shifts = shifts_of([_offset(VM4, CLIENT4)])
    whole = ether(tcp(SVM_ISN + 1, 9, ACK, b"abc"))
    assert shift_frame(ether(udp(b"dns")), shifts) is None
    assert shift_frame(whole[:14] + b"\x46" + whole[15:], shifts) is None  # header too long
    assert shift_frame(whole[:40], shifts) is None  # truncated
    fragment = bytearray(whole)
    fragment[14 + 6] = 0x20  # more fragments
    assert shift_frame(bytes(fragment), shifts) is None
    padded = shift_frame(whole + b"\0" * 6, shifts)  # Ethernet padding is dropped
    assert padded is not None and len(padded) == len(whole)


def test_random_bytes_never_raise() -> None:
    rng = random.Random(7)
    shifts = shifts_of([_offset(VM4, CLIENT4)])
    base = ether(tcp(SVM_ISN + 1, 9, ACK, b"abcdef", options=TS))
    for _ in range(3000):
        f = bytearray(base[:rng.randrange(len(base) + 1)])
        for _ in range(rng.randrange(4)):
            if f:
                f[rng.randrange(len(f))] = rng.randrange(256)
        shift_frame(bytes(f), shifts)
