"""colo_orch.core.heartbeat_msg: only the peer's authentic, fresh heartbeats get through, and
any datagram gives a heartbeat or None, never an exception."""

from __future__ import annotations

import hashlib
import hmac
import json

from hypothesis import given
from hypothesis import strategies as st

from colo_orch.core.heartbeat_msg import TAG, Beat, Replay, decode, encode

KEY = b"k" * 32
STATE = {"state": 4, "role": "primary", "vm_ok": True, "incoming": "tcp:10.99.1.1:4444",
         "proxy_ready": True}
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                    max_leaves=20)


def _tag(body: bytes) -> bytes:
    return hmac.new(KEY, body, hashlib.sha256).digest()


def _signed(body: object) -> bytes:
    """A datagram with a valid tag around any JSON: what a holder of the key could send."""
    raw = json.dumps(body).encode()
    return _tag(raw) + raw


def test_a_heartbeat_round_trips() -> None:
    assert decode(KEY, encode(KEY, "web", 9, 7, STATE, (5, 6)), "web") == Beat(9, 7, STATE, (5, 6))
    assert decode(KEY, encode(KEY, "web", 9, 1, {}, None), "web") == Beat(9, 1, {}, None)


def test_another_key_pair_or_version_is_refused() -> None:
    assert decode(b"other key, 16 bytes+", encode(KEY, "web", 1, 7, STATE, None), "web") is None
    assert decode(KEY, encode(KEY, "db", 1, 7, STATE, None), "web") is None
    assert decode(KEY, _signed({"v": 2, "pair": "web", "boot": 1, "seq": 1, "state": {}}),
                  "web") is None


def test_a_changed_byte_anywhere_is_refused() -> None:
    data = encode(KEY, "web", 1, 7, STATE, None)
    for i in (0, TAG - 1, TAG, len(data) - 1):
        assert decode(KEY, data[:i] + bytes([data[i] ^ 1]) + data[i + 1:], "web") is None
    assert decode(KEY, data[TAG:], "web") is None  # the old, untagged format


def test_the_datagrams_that_killed_the_receiver_are_refused() -> None:
    for body in ([], 1, "x", None, {"v": 1, "pair": "web", "boot": 1, "seq": 1, "state": []},
                 {"v": 1, "pair": "web", "boot": 1, "seq": "1", "state": {}},
                 {"v": 1, "pair": "web", "boot": 1, "seq": True, "state": {}},
                 {"v": 1, "pair": "web", "boot": 1, "seq": 1, "state": {}, "echo": [1]},
                 {"v": 1, "pair": "web", "boot": 1, "seq": 1, "state": {}, "echo": 7},
                 {"v": 1, "pair": "web", "boot": 1, "seq": 1, "state": {}, "echo": [1, True]},
                 {"v": 1, "pair": "web", "boot": 1, "seq": 1, "state": {"state": [4]}},
                 {"v": 1, "pair": "web", "boot": 1, "seq": 1, "state": {"vm_ok": "yes"}}):
        assert decode(KEY, _signed(body), "web") is None, body
    for data in (b"[]", b"", b"\xff" * 40, _tag(b"[" * 100_000) + b"[" * 100_000):
        assert decode(KEY, data, "web") is None


def test_the_echo_names_our_boot_and_sequence_number() -> None:
    beat = decode(KEY, encode(KEY, "web", 1, 7, STATE, (99, 3)), "web")
    assert beat is not None and beat.echo == (99, 3)


def test_a_replay_within_one_boot_is_refused_a_restart_is_not() -> None:
    r = Replay()
    assert r.fresh(Beat(1, 5, {}, None))
    assert not r.fresh(Beat(1, 5, {}, None)) and not r.fresh(Beat(1, 4, {}, None))
    assert r.fresh(Beat(1, 6, {}, None))
    assert r.fresh(Beat(2, 1, {}, None))  # the peer restarted: a new boot starts at 1


@given(st.binary(max_size=512))
def test_any_bytes_decode_or_are_refused(data: bytes) -> None:
    beat = decode(KEY, data, "web")
    assert beat is None or isinstance(beat, Beat)


@given(JSON, JSON, JSON, JSON)
def test_any_json_in_any_field_decodes_typed_or_is_refused(boot: object, seq: object,
                                                          state: object, echo: object) -> None:
    beat = decode(KEY, _signed({"v": 1, "pair": "web", "boot": boot, "seq": seq,
                                "state": state, "echo": echo}), "web")
    if beat is not None:
        assert type(beat.seq) is int and type(beat.boot) is int
        assert beat.echo is None or [type(x) for x in beat.echo] == [int, int]
        for key, kind in (("state", int), ("role", str), ("vm_ok", bool)):
            assert key not in beat.state or type(beat.state[key]) is kind
