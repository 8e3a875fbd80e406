"""colo_orch.core.heartbeat_msg under fuzzing: every heartbeat round-trips (any datagram
already decodes or is refused: test_heartbeat_msg.py), and a nesting bomb under a valid tag
is refused."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from colo_orch.core.heartbeat_msg import Beat, decode, encode
from tests.support.strategies import json_comparable, nested

KEY = b"k" * 32
INTS = st.integers(-(2**63), 2**63)
STATES = st.fixed_dictionaries({}, optional={
    "state": st.integers(0, 20), "role": st.text(max_size=10), "vm_ok": st.booleans(),
    "incoming": st.text(max_size=30), "proxy_ready": st.booleans(),
    "extra": json_comparable})


@given(INTS, INTS, STATES, st.none() | st.tuples(INTS, INTS),
       st.text(min_size=1, max_size=12))
def test_every_heartbeat_round_trips(boot: int, seq: int, state: dict[str, object],
                                     echo: tuple[int, int] | None, pair: str) -> None:
    beat = decode(KEY, encode(KEY, pair, boot, seq, state, echo), pair)
    assert beat == Beat(boot, seq, state, echo)


@given(nested() | nested('{"a":'))
def test_a_nesting_bomb_with_a_valid_tag_is_refused(body: str) -> None:
    raw = body.encode()
    assert decode(KEY, hmac.new(KEY, raw, hashlib.sha256).digest() + raw, "web") is None
