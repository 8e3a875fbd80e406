"""colo_orch.core.heartbeat_msg: any datagram gives a heartbeat or None, never an exception."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from colo_orch.core.heartbeat_msg import Beat, decode, encode

STATE = {"state": 4, "role": "primary", "vm_ok": True, "incoming": "tcp:10.99.1.1:4444",
         "proxy_ready": True}
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                    max_leaves=20)


def test_a_heartbeat_round_trips() -> None:
    assert decode(encode("web", 7, STATE, 6), "web") == Beat(7, STATE, 6)
    assert decode(encode("web", 1, {}, None), "web") == Beat(1, {}, None)


def test_another_pair_or_version_is_not_ours() -> None:
    assert decode(encode("db", 7, STATE, None), "web") is None
    doc = json.loads(encode("web", 7, STATE, None))
    assert decode(json.dumps({**doc, "v": 2}).encode(), "web") is None


def test_the_datagrams_that_killed_the_receiver_are_refused() -> None:
    for data in (b"[]", b"1", b'"x"', b"null", b"[" * 100_000, b"\xff\xfe",
                 b'{"v": 1, "pair": "web", "seq": 1, "state": []}',
                 b'{"v": 1, "pair": "web", "seq": "1", "state": {}}',
                 b'{"v": 1, "pair": "web", "seq": true, "state": {}}',
                 b'{"v": 1, "pair": "web", "seq": 1, "state": {}, "echo": [1]}',
                 b'{"v": 1, "pair": "web", "seq": 1, "state": {"state": [4]}}',
                 b'{"v": 1, "pair": "web", "seq": 1, "state": {"vm_ok": "yes"}}'):
        assert decode(data, "web") is None, data


@given(st.binary(max_size=512))
def test_any_bytes_decode_or_are_refused(data: bytes) -> None:
    beat = decode(data, "web")
    assert beat is None or isinstance(beat, Beat)


@given(JSON, JSON, JSON)
def test_any_json_in_any_field_decodes_typed_or_is_refused(seq: object, state: object,
                                                          echo: object) -> None:
    data = json.dumps({"v": 1, "pair": "web", "seq": seq, "state": state, "echo": echo})
    beat = decode(data.encode(), "web")
    if beat is not None:
        assert type(beat.seq) is int and (beat.echo is None or type(beat.echo) is int)
        for key, kind in (("state", int), ("role", str), ("vm_ok", bool)):
            assert key not in beat.state or type(beat.state[key]) is kind
