"""libxl's two byte streams under fuzzing (colo_orch/backends/xen/libxl/): any bytes from
libxl's checkpoint connection give commands (a protocol error closes the session), any
bytes on xl's back channel give checkpoint states or BackChannelError, never another
exception; and what we frame, or libxl writes, decodes back however it is split."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from colo_orch.backends.xen.libxl.backchannel import (
    BANNER,
    CHECKPOINT_SVM_RESUMED,
    REC_TYPE_CHECKPOINT_STATE,
    BackChannelDecoder,
    BackChannelError,
)
from colo_orch.backends.xen.libxl.session import (
    COLO_CHECKPOINT,
    INIT,
    MAX_FRAME,
    CheckpointDone,
    Close,
    FrameDecoder,
    FrameError,
    LibxlSession,
    Log,
    Send,
    encode,
)
from tests.support.strategies import chunked

PAYLOADS = st.sampled_from([INIT, COLO_CHECKPOINT, INIT + b"\0junk", b""]) | st.binary(
    max_size=64)
# Frames libxl could send, frames with a lying length, and any bytes.
FRAMES = (PAYLOADS.map(encode)
          | st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=16)).map(
              lambda t: struct.pack("!I", t[0]) + t[1])
          | st.binary(max_size=16))


@given(st.data(), st.lists(FRAMES, max_size=8), st.lists(st.booleans(), max_size=8))
def test_any_bytes_from_libxl_give_commands(data: st.DataObject, frames: list[bytes],
                                            requests: list[bool]) -> None:
    session, now = LibxlSession(), 0.0
    for chunk in data.draw(chunked(b"".join(frames))):
        now += 0.01
        for command in session.received(chunk, now):
            assert isinstance(command, Send | CheckpointDone | Log | Close)
            if isinstance(command, Send):
                assert len(encode(command.payload)) <= 4 + MAX_FRAME
        if requests and requests.pop():
            session.request("fuzz", now)
    session.closed(now)
    assert session.closed_now


@given(st.data(), st.lists(st.binary(max_size=MAX_FRAME), max_size=6))
def test_frames_round_trip_however_split(data: st.DataObject, payloads: list[bytes]) -> None:
    decoder = FrameDecoder()
    out = []
    for chunk in data.draw(chunked(b"".join(encode(p) for p in payloads))):
        out += decoder.feed(chunk)
    assert out == payloads and not decoder.buf


@given(st.data(), st.binary(max_size=64))
def test_any_stream_gives_whole_frames_or_a_frame_error(data: st.DataObject,
                                                       raw: bytes) -> None:
    decoder = FrameDecoder()
    try:
        for chunk in data.draw(chunked(raw)):
            assert all(len(p) <= MAX_FRAME for p in decoder.feed(chunk))
    except FrameError:
        pass


def _record(state: int) -> bytes:
    return struct.pack("=II", REC_TYPE_CHECKPOINT_STATE, 4) + struct.pack("=I", state) + \
        b"\0" * 4


def _pfns(pfns: list[int]) -> bytes:
    # libxc's dirty-pfn list (xg_sr_restore.c), on the channel between the states.
    return struct.pack(f"=II{len(pfns)}Q", 0xF, 8 * len(pfns), *pfns)


@given(st.data(), st.lists(st.tuples(st.integers(0, CHECKPOINT_SVM_RESUMED),
                                     st.none() | st.lists(st.integers(0, 2**64 - 1),
                                                          max_size=5)), max_size=8))
def test_the_back_channel_round_trips_however_split(
        data: st.DataObject, states: list[tuple[int, list[int] | None]]) -> None:
    decoder, out = BackChannelDecoder(), []
    wire = BANNER + b"".join(_record(s) + (b"" if p is None else _pfns(p)) for s, p in states)
    for chunk in data.draw(chunked(wire)):
        out += decoder.feed(chunk)
    assert out == [s for s, _ in states]


@given(st.data(), st.one_of(
    st.binary(max_size=80),
    st.tuples(st.binary(max_size=40), st.integers(0, len(BANNER))).map(
        lambda t: BANNER[:t[1]] + t[0]),
    st.lists(st.integers(0, 2**32 - 1), max_size=6).map(
        lambda xs: BANNER + b"".join(struct.pack("=I", x) for x in xs))))
def test_any_back_channel_gives_states_or_an_error(data: st.DataObject, raw: bytes) -> None:
    decoder = BackChannelDecoder()
    try:
        for chunk in data.draw(chunked(raw)):
            assert all(0 <= s <= CHECKPOINT_SVM_RESUMED for s in decoder.feed(chunk))
    except BackChannelError:
        pass
