"""colo_orch.core.api under fuzzing: any request head gives "more, please", a request or a
refusal, never an exception; a request it accepts is made of the characters HTTP allows;
and routing any request on any listener gives a read, a command or a refusal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from colo_orch.core.api import (
    Command,
    Listener,
    Peer,
    Policy,
    Read,
    Reply,
    Request,
    parse_head,
    route,
)
from tests.support.strategies import http_heads

POLICY = Policy(b"t" * 16, frozenset({1000}), frozenset({100}))
PEERS = st.none() | st.builds(Peer, st.integers(1, 99), st.integers(0, 2000),
                              st.frozensets(st.integers(0, 200), max_size=3))


@given(http_heads(), st.sampled_from(list(Listener)), PEERS)
def test_any_head_parses_and_routes_or_is_refused(head: bytes, listener: Listener,
                                                  peer: Peer | None) -> None:
    parsed = parse_head(head)
    assert isinstance(parsed, Request | Reply)
    if isinstance(parsed, Reply):
        assert parsed.status >= 400 and parsed.refused
        assert parsed.encode().startswith(b"HTTP/1.1 ")
        return
    # Nothing accepted carries a control character or a space into a path, a method or a
    # header name (a log line, a metric, a command name).
    for text in (parsed.method, parsed.path, *(k for k, _ in parsed.headers)):
        assert text and all("\x21" <= c <= "\x7e" for c in text), text
    assert 0 <= parsed.content_length <= 1024
    decision = route(parsed, listener, POLICY, peer if listener is Listener.SOCKET else None)
    assert isinstance(decision, Read | Command | Reply)


@pytest.mark.parametrize("raw", [
    # was ValueError out of int(): "²" is a digit to str.isdigit(), not to int()
    b"GET /state HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n",
    # were accepted with a "\n" in the path, the method or a header name (a regex's `$`)
    b"GET /\n HTTP/1.1\r\n\r\n",
    b"GET\n /state HTTP/1.1\r\n\r\n",
    b"GET /state HTTP/1.1\r\nHost\n: x\r\n\r\n",
])
def test_what_crashed_the_parser_is_refused(raw: bytes) -> None:
    reply = parse_head(raw)
    assert isinstance(reply, Reply) and reply.status == 400 and reply.refused == "malformed"
