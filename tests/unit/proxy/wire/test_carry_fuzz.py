"""colo_proxy.wire.carry under fuzzing: every announcement and challenge round-trips, and
any change to an authentic frame is refused (never raised)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from colo_proxy.wire import carry
from colo_proxy.wire.offset import Offset

KEY = b"k" * 32
NONCES = st.binary(min_size=carry.NONCE, max_size=carry.NONCE)
# A v4-mapped IPv6 address travels as its IPv4 address, by design (as in the BPF maps).
IPS = st.ip_addresses().filter(lambda a: getattr(a, "ipv4_mapped", None) is None).map(str)
OFFSETS = st.builds(Offset, IPS, st.integers(0, 65535), IPS, st.integers(0, 65535),
                    st.just(0), st.just(0), st.integers(0, 2**32 - 1), st.just(True),
                    st.none() | st.integers(-(2**31), 2**31 - 1))


@given(NONCES, OFFSETS, st.binary(max_size=8))
def test_an_announcement_round_trips_whatever_pads_it(nonce: bytes, o: Offset,
                                                      pad: bytes) -> None:
    assert carry.read(KEY, carry.announcement(KEY, nonce, o) + pad) == carry.Announcement(
        nonce, o)
    assert carry.read(KEY, carry.challenge(KEY, nonce) + pad) == carry.Challenge(nonce)


@given(st.data(), NONCES, OFFSETS)
def test_any_change_to_an_authentic_frame_is_refused(data: st.DataObject, nonce: bytes,
                                                     o: Offset) -> None:
    frame = bytearray(carry.announcement(KEY, nonce, o))
    at = data.draw(st.integers(0, len(frame) - 1))
    frame[at] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(frame)))
    got = carry.read(KEY, bytes(frame[:cut]))
    assert isinstance(got, carry.Refused) and got.reason in carry.REFUSALS
