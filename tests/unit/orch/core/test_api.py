"""The API's request parsing and routing: who may do what on which listener.

A playbook per rule (this request in, exactly this decision out), and properties over
any bytes: the parser never raises and never hands on more than it allows.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from colo_orch.core.api import (
    COMMANDS,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    Command,
    Listener,
    Peer,
    Policy,
    Read,
    Reply,
    Request,
    bearer,
    check_token,
    parse_head,
    route,
)

TOKEN = b"s3cret-token-0123456789"
POLICY = Policy(TOKEN, frozenset({1000}), frozenset({2000}))


def req(method: str = "POST", path: str = "/failover", *headers: str, body: int = 0) -> Request:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers)
    if body:
        head += f"Content-Length: {body}\r\n"
    parsed = parse_head((head + "\r\n").encode())
    assert isinstance(parsed, Request), parsed
    return parsed


def auth(token: bytes = TOKEN) -> str:
    return f"Authorization: Bearer {token.decode()}"


# Parsing -------------------------------------------------------------------------------
def test_a_head_parses_with_its_length_and_headers() -> None:
    raw = b"POST /checkpoint?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    r = parse_head(raw)
    assert r == Request("POST", "/checkpoint", (("host", "a"), ("content-length", "3")), 3,
                        len(raw) - 3)


def test_an_incomplete_head_asks_for_more_until_it_is_too_long() -> None:
    assert parse_head(b"") is None
    assert parse_head(b"GET /state HTTP/1.1\r\nHost: a\r\n") is None
    r = parse_head(b"GET /state HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES)
    assert isinstance(r, Reply) and r.status == 431 and r.refused == "too_large"
    whole = b"GET /state HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    r = parse_head(whole)
    assert isinstance(r, Reply) and r.status == 431


@pytest.mark.parametrize(("raw", "status", "says"), [
    (b"GET /state\r\n\r\n", 400, "request line"),
    (b"GET state HTTP/1.1\r\n\r\n", 400, "request line"),
    (b"get /state HTTP/1.1\r\n\r\n", 400, "request line"),
    (b"GET /state HTTP/2.0\r\n\r\n", 505, "HTTP/1.1"),
    (b"GET /state HTTP/1.1\r\nno colon\r\n\r\n", 400, "NAME: VALUE"),
    (b"GET /state HTTP/1.1\r\n folded: x\r\n\r\n", 400, "NAME: VALUE"),
    (b"POST /pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "Content-Length"),
    (b"POST /pause HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400,
     "two different"),
    (b"POST /pause HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "not a number"),
    (b"POST /pause HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), 413,
     "body over"),
])
def test_bad_requests_are_refused_with_the_reason(raw: bytes, status: int, says: str) -> None:
    r = parse_head(raw)
    assert isinstance(r, Reply) and r.status == status and r.refused
    assert says in r.body["error"]


@given(st.binary(max_size=MAX_HEAD_BYTES + 200))
def test_any_bytes_give_more_please_a_request_or_a_refusal(data: bytes) -> None:
    r = parse_head(data)
    assert r is None or isinstance(r, Request | Reply)
    if isinstance(r, Request):
        assert r.head_bytes <= MAX_HEAD_BYTES and r.content_length <= MAX_BODY_BYTES
        assert r.path.startswith("/")
    if r is None:
        assert len(data) <= MAX_HEAD_BYTES


@given(st.sampled_from(["GET", "POST", "PUT"]), st.text(max_size=40),
       st.lists(st.tuples(st.sampled_from(["Authorization", "authorization", "X-Token",
                                           "Host"]),
                          st.text(max_size=30)), max_size=4),
       st.sampled_from(list(Listener)), st.binary(min_size=16, max_size=24))
def test_nothing_but_the_configured_token_runs_a_command_over_tcp(
        method: str, path: str, headers: list[tuple[str, str]], listener: Listener,
        token: bytes) -> None:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers if "\r" not in v and "\n" not in v)
    r = parse_head(f"{method} /{path} HTTP/1.1\r\n{lines}\r\n".encode("utf-8", "replace"))
    if not isinstance(r, Request):
        return
    decision = route(r, listener, Policy(token), None)
    if isinstance(decision, Command):
        assert listener is not Listener.READ_ONLY and bearer(r) == token


# Routing and authorization -----------------------------------------------------------------
@pytest.mark.parametrize("name", COMMANDS)
def test_a_command_with_the_token_runs(name: str) -> None:
    assert route(req("POST", f"/{name}", auth()), Listener.COMMANDS, POLICY) == Command(name)


def test_no_token_or_a_wrong_one_is_401_with_a_challenge() -> None:
    for r in (req("POST", "/failover"), req("POST", "/failover", auth(b"x" * 23)),
              req("POST", "/failover", "Authorization: Basic Zm9vOmJhcg=="),
              req("POST", "/failover", "Authorization: Bearer")):
        d = route(r, Listener.COMMANDS, POLICY)
        assert isinstance(d, Reply) and d.status == 401 and d.refused == "unauthorized", d
        assert ("WWW-Authenticate", 'Bearer realm="colo-orch"') in d.headers
    # Unknown commands too: an unauthenticated caller learns nothing of the command set.
    d = route(req("POST", "/nonsense"), Listener.COMMANDS, POLICY)
    assert isinstance(d, Reply) and d.status == 401
    d = route(req("POST", "/nonsense", auth()), Listener.COMMANDS, POLICY)
    assert isinstance(d, Reply) and d.status == 404 and "use one of checkpoint" in d.body["error"]


def test_the_scheme_is_case_insensitive_the_token_is_not() -> None:
    ok = req("POST", "/pause", f"authorization: bearer {TOKEN.decode()}")
    assert route(ok, Listener.COMMANDS, POLICY) == Command("pause")
    upper = req("POST", "/pause", auth(TOKEN.upper()))
    assert isinstance(route(upper, Listener.COMMANDS, POLICY), Reply)


def test_without_a_configured_token_tcp_commands_are_off_and_say_how_to_turn_them_on() -> None:
    d = route(req("POST", "/failover", "Authorization: Bearer "), Listener.COMMANDS, Policy())
    assert isinstance(d, Reply) and d.status == 403 and "set it, or use api_socket" in \
        d.body["error"]
    # An empty configured token never matches an empty presented one.
    d = route(req("POST", "/failover", "Authorization: Bearer x"), Listener.COMMANDS, Policy())
    assert isinstance(d, Reply) and d.status == 403


@pytest.mark.parametrize(("peer", "allowed"), [
    (Peer(1, 0, frozenset({0})), True),  # root
    (Peer(1, 1000, frozenset({1000})), True),  # a listed uid
    (Peer(1, 1001, frozenset({1001, 2000})), True),  # in a listed group
    (Peer(1, 1001, frozenset({1001})), False),
])
def test_socket_peers_are_checked_by_their_credentials(peer: Peer, allowed: bool) -> None:
    d = route(req("POST", "/failover"), Listener.SOCKET, POLICY, peer)
    if allowed:
        assert d == Command("failover")
    else:
        assert isinstance(d, Reply) and d.status == 403 and d.refused == "forbidden"
        assert "uid 1001 may not send commands" in d.body["error"]
        assert "api_socket_uids" in d.body["error"]
        # The token still opens it, as over TCP.
        assert route(req("POST", "/failover", auth()), Listener.SOCKET, POLICY, peer) \
            == Command("failover")


def test_the_read_only_listener_serves_reads_and_refuses_every_command() -> None:
    for path, what in (("/metrics", "metrics"), ("/healthz", "healthz"),
                       ("/readyz", "readyz"), ("/state", "state")):
        assert route(req("GET", path), Listener.READ_ONLY, POLICY) == Read(what)
    for method in ("POST", "PUT", "DELETE"):
        d = route(req(method, "/failover", auth()), Listener.READ_ONLY, POLICY)
        assert isinstance(d, Reply) and d.status == 405 and d.refused == "read_only"
        assert ("Allow", "GET") in d.headers and "send commands to api_listen" in d.body["error"]
    d = route(req("GET", "/nowhere"), Listener.READ_ONLY, POLICY)
    assert isinstance(d, Reply) and d.status == 404


def test_the_command_listener_serves_state_openly_and_points_to_the_metrics_listener() -> None:
    assert route(req("GET", "/state"), Listener.COMMANDS, POLICY) == Read("state")
    d = route(req("GET", "/metrics"), Listener.COMMANDS, POLICY)
    assert isinstance(d, Reply) and d.status == 404 and "metrics_listen" in d.body["error"]
    d = route(req("DELETE", "/state", auth()), Listener.COMMANDS, POLICY)
    assert isinstance(d, Reply) and d.status == 405


@pytest.mark.parametrize(("raw", "problem"), [
    (b"short", "shorter than 16"),
    (b"a" * 20 + b" b", "visible ASCII"),
    (b"\xff" * 20, "visible ASCII"),
])
def test_bad_tokens_are_named(raw: bytes, problem: str) -> None:
    assert problem in (check_token(raw) or "")


def test_a_good_token_passes() -> None:
    assert check_token(b"c2VjcmV0LXNlY3JldC1zZWNyZXQtMzI=") is None


def test_replies_are_whole_http_responses() -> None:
    d = route(req("POST", "/failover"), Listener.COMMANDS, POLICY)
    assert isinstance(d, Reply)
    head, _, body = d.encode().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"Connection: close" in head and f"Content-Length: {len(body)}".encode() in head
