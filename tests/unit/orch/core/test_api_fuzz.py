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
from tests.support.strategies import TRICKY_CHARS

LATIN1 = st.characters(max_codepoint=0xFF)
VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
# Pieces of a head: mostly the right words, with now and then any latin-1 text.
TRICKY = st.sampled_from([c for c in TRICKY_CHARS if c <= "\xff"])
# A tricky character often at the end, where a regex's `$` lets a line end through.
PIECE = st.one_of(st.text(LATIN1 | TRICKY, max_size=12),
                  st.tuples(st.text(VISIBLE, max_size=6), TRICKY).map("".join))
METHODS = st.sampled_from(["GET", "POST", "PUT", "get", ""]) | PIECE
TARGETS = (st.sampled_from(["/state", "/checkpoint", "/metrics", "/", "/state?x=1"])
           | PIECE.map("/".__add__))
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2"]) | PIECE
NAMES = st.sampled_from(["Host", "Content-Length", "Authorization", "Transfer-Encoding"]) | PIECE
VALUES = (st.sampled_from(["0", "12", "Bearer " + "t" * 16, "localhost"])
          | st.integers(-5, 10**14).map(str) | PIECE)
HEADERS = st.lists(st.tuples(NAMES, VALUES).map(lambda h: f"{h[0]}: {h[1]}"), max_size=5)
POLICY = Policy(b"t" * 16, frozenset({1000}), frozenset({100}))
PEERS = st.none() | st.builds(Peer, st.integers(1, 99), st.integers(0, 2000),
                              st.frozensets(st.integers(0, 200), max_size=3))


def _head(method: str, target: str, version: str, headers: list[str], tail: str) -> bytes:
    return "\r\n".join([f"{method} {target} {version}", *headers, "", tail]).encode("latin-1")


@given(METHODS, TARGETS, VERSIONS, HEADERS, PIECE, st.sampled_from(list(Listener)), PEERS)
def test_any_head_parses_and_routes_or_is_refused(method: str, target: str, version: str,
                                                  headers: list[str], tail: str,
                                                  listener: Listener, peer: Peer | None) -> None:
    parsed = parse_head(_head(method, target, version, headers, tail))
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
