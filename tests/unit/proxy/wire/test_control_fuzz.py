"""colo_proxy.wire.control under fuzzing: any bytes on the control socket give messages or
ProtocolErrors, never another exception, and every message survives its own codec."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from colo_proxy.wire.control import MAX_LINE, LineDecoder, ProtocolError, decode, encode
from tests.support.strategies import chunked, json_bytes, json_comparable


@given(json_bytes())
def test_any_line_decodes_or_is_a_protocol_error(line: bytes) -> None:
    try:
        msg = decode(line)
    except ProtocolError:
        return
    assert isinstance(msg, dict) and isinstance(msg["type"], str)


def test_a_nesting_bomb_is_a_protocol_error() -> None:
    # Was RecursionError out of json.loads, which killed the bridge's control reader.
    for bomb in (b"[" * 100_000, b'{"a":' * 100_000):
        try:
            decode(bomb)
        except ProtocolError as exc:
            assert "nested" in str(exc)
        else:
            raise AssertionError("decoded a nesting bomb")


@given(st.data(), st.lists(json_bytes(), max_size=4))
def test_any_stream_gives_messages_or_errors(data: st.DataObject, lines: list[bytes]) -> None:
    stream = b"\n".join(lines) + data.draw(st.sampled_from([b"", b"\n"]))
    decoder = LineDecoder()
    for chunk in data.draw(chunked(stream)):
        for item in decoder.feed(chunk):
            assert isinstance(item, dict | ProtocolError)
        assert len(decoder.buf) <= MAX_LINE + len(chunk)


@given(st.text(min_size=1, max_size=20), st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in ("v", "type")), json_comparable, max_size=4))
def test_every_message_round_trips(kind: str, fields: dict[str, Any]) -> None:
    msg = {"type": kind, **fields}
    (out,) = list(LineDecoder().feed(encode(msg)))
    assert out == decode(encode(msg)) == {"v": 1, **msg}
