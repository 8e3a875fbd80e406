"""colo_proxy.wire.carry: authenticated carried-flow announcements and their challenges."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from colo_proxy.wire import carry
from colo_proxy.wire.offset import Offset

KEY = b"k" * 32
V4 = Offset("10.99.0.10", 80, "10.99.0.100", 40000, 1000, 5000, 4000, True, 7)
V6 = Offset("fd99::10", 80, "fd99::100", 40001, 2000, 2000, 0, True, -3)  # TS only
NO_TS = Offset("10.99.0.10", 22, "10.99.0.100", 40002, 1, 11, 10, True, None)
ZERO = Offset("10.99.0.10", 80, "10.99.0.100", 40004, 5, 5, 0, True, 0)  # nothing to move


def _nonces() -> carry.Challenger:
    counter = itertools.count(1)
    return carry.Challenger(KEY, lambda n: next(counter).to_bytes(n, "big"))


def _as_announced(o: Offset) -> Offset:
    """What the secondary learns: the ISNs do not travel."""
    return Offset(o.vm_ip, o.vm_port, o.peer_ip, o.peer_port, 0, 0, o.offset % 2**32, True,
                  o.ts_offset)


def test_layout() -> None:
    nonce = bytes(range(16))
    c = carry.challenge(KEY, nonce)
    assert len(c) == carry.CHALLENGE_LEN == 56
    assert c[:8] == b"COLO\x02\x01\x00\x00" and c[8:24] == nonce
    a = carry.announcement(KEY, nonce, V6)
    assert len(a) == carry.ANNOUNCEMENT_LEN == 104
    assert a[:8] == b"COLO\x02\x02\x00\x00" and a[8:24] == nonce
    assert a[24:40] == bytes.fromhex("fd990000000000000000000000000010")
    assert a[56:60] == (80).to_bytes(2, "big") + (40001).to_bytes(2, "big")
    assert a[60:69] == bytes(4) + (2**32 - 3).to_bytes(4, "big") + b"\x01"
    v4 = carry.announcement(KEY, nonce, NO_TS)
    assert v4[24:40] == bytes(10) + b"\xff\xff" + bytes([10, 99, 0, 10])
    assert v4[64:69] == bytes(5)  # no timestamps


def test_a_challenge_is_answered_with_every_flow_that_moves() -> None:
    sec, pri = _nonces(), carry.Answerer(KEY)
    nonce = pri.on_frame(sec.challenge())
    assert isinstance(nonce, bytes)
    frames = pri.announcements(nonce, [V4, V6, NO_TS, ZERO])
    assert [sec.accept(f) for f in frames] == [_as_announced(o) for o in (V4, V6, NO_TS)]
    # Ethernet pads a short frame: bytes past the message do not matter.
    assert sec.accept(frames[0] + bytes(20)) == _as_announced(V4)


def test_forged_or_damaged_announcements_are_refused_by_reason() -> None:
    sec = _nonces()
    nonce = carry.read(KEY, sec.challenge())
    assert isinstance(nonce, carry.Challenge)
    good = carry.announcement(KEY, nonce.nonce, V4)
    other_key = carry.announcement(b"x" * 32, nonce.nonce, V4)
    flipped = good[:60] + bytes([good[60] ^ 1]) + good[61:]  # another offset
    # The format before this one: magic, version 1 and the flow, no nonce, no tag.
    v1 = b"COLO" + (1).to_bytes(4, "big") + good[24:69] + bytes(3)
    cases = {"tag": [other_key, flipped, good[:-32] + bytes(32)], "version": [v1],
             "short": [good[:40], b""], "not_ours": [b"LOCO" + good[4:]],
             "kind": [good[:5] + b"\x07" + good[6:]]}
    for reason, frames in cases.items():
        for f in frames:
            assert sec.accept(f) == carry.Refused(reason), (reason, f.hex())
        assert reason in carry.REFUSALS
    # An authentic challenge is no forgery: the peer is a secondary too for a moment (both
    # hosts' proxies during a role swap). Ignored, not refused.
    assert sec.accept(_nonces().challenge()) is None


def test_only_announcements_of_the_latest_two_challenges_are_fresh() -> None:
    sec, pri = _nonces(), carry.Answerer(KEY)
    answers = []
    for _ in range(3):
        nonce = pri.on_frame(sec.challenge())
        assert isinstance(nonce, bytes)
        answers.append(pri.announcements(nonce, [V4])[0])
    old, previous, latest = answers
    assert sec.accept(old) == carry.Refused("stale")  # a recording two rounds old
    assert sec.accept(previous) == sec.accept(latest) == _as_announced(V4)


def test_the_primary_answers_each_challenge_once_and_only_authentic_ones() -> None:
    sec, pri = _nonces(), carry.Answerer(KEY)
    first = sec.challenge()
    assert isinstance(pri.on_frame(first), bytes)
    assert pri.on_frame(first) is None  # replayed: no second round
    assert pri.on_frame(carry.challenge(b"y" * 32, bytes(16))) == carry.Refused("tag")
    assert pri.on_frame(carry.announcement(KEY, bytes(16), V4)) is None  # a primary too
    assert isinstance(pri.on_frame(sec.challenge()), bytes)


@given(st.binary(max_size=200))
def test_any_bytes_are_read_without_raising(data: bytes) -> None:
    got = carry.read(KEY, data)
    assert isinstance(got, carry.Refused) and got.reason in carry.REFUSALS
