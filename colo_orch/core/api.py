"""The orchestrator API's requests without I/O: parse a request head, and decide what a
request may do on which listener, and from whom.

Two kinds of listener (docs/ORCHESTRATOR.md, "API and coloctl"):

- the command listener (`api_listen`, TCP, optionally TLS; and `api_socket`, a unix
  socket): `GET /state` and the operator commands, `POST /checkpoint` ... A command needs
  the bearer token of `api_token_file`, or over the unix socket a peer that is root or one
  of the configured uids/gids (SO_PEERCRED). `GET /state` stays open, as Patroni's REST
  API leaves its GET endpoints open and protects only those that change state: health
  checkers and load balancers read it, and it carries no secret.
- the read-only listener (`metrics_listen`): `GET /metrics`, `/healthz`, `/readyz` and
  `/state`, nothing else, so that opening it to Prometheus opens no command.

A request is one HTTP/1.x message with no body worth reading (a command takes none), one
per connection: the server answers and closes. Anything else is refused with a status
and the reason a client can act on; `Reply.refused` names the refusal for the metric
`colo_api_requests_refused_total`.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

COMMANDS = ("checkpoint", "failover", "pause", "resume", "reprotect", "switchover")
READS = {"/healthz": "healthz", "/readyz": "readyz", "/state": "state", "/metrics": "metrics"}
# Bounds on what a client may send: a request head (the request line and headers; curl's,
# Prometheus's and coloctl's are a few hundred bytes) and a body (commands take none).
MAX_HEAD_BYTES = 8192
MAX_BODY_BYTES = 1024
MIN_TOKEN = 16  # bytes, as the heartbeat key
REFUSALS = ("unauthorized", "forbidden", "read_only", "not_found", "malformed", "too_large",
            "timeout", "busy", "not_applicable")

# Used with fullmatch: a `$` also matches before a final "\n", which let "GET /state\n"
# through as the path "/state\n".
_TOKEN_CHARS = re.compile(rb"[\x21-\x7e]+")  # visible ASCII: it travels in a header
_METHOD = re.compile(r"[A-Z]{1,16}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_TARGET = re.compile(r"/[\x21-\x7e]*")
_LENGTH = re.compile(r"[0-9]{1,12}")


class Listener(Enum):
    COMMANDS = "api_listen"  # TCP (or TLS): commands with the token
    SOCKET = "api_socket"  # unix socket: commands from an allowed peer, or with the token
    READ_ONLY = "metrics_listen"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), in order
    content_length: int
    head_bytes: int  # bytes of the head, up to and including the blank line

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer at once with this, and close."""

    status: int
    body: dict[str, Any]
    refused: str = ""  # one of REFUSALS when the request was refused
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        return render(self.status, json.dumps(self.body, indent=1).encode() + b"\n",
                      "application/json", self.headers)


@dataclass(frozen=True, slots=True)
class Read:
    """Answer with what the daemon knows: healthz, readyz, state or metrics."""

    what: str


@dataclass(frozen=True, slots=True)
class Command:
    """Run this operator command (one of COMMANDS)."""

    name: str


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of the unix socket (SO_PEERCRED, SO_PEERGROUPS)."""

    pid: int
    uid: int
    gids: frozenset[int]  # its primary group and, where the kernel says, the supplementary


@dataclass(frozen=True, slots=True)
class Policy:
    """Who may send commands."""

    token: bytes = b""  # api_token_file's token; empty: no token opens a command
    uids: frozenset[int] = field(default_factory=frozenset)  # socket peers besides root
    gids: frozenset[int] = field(default_factory=frozenset)


REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable",
           505: "HTTP Version Not Supported"}


def render(status: int, body: bytes, ctype: str,
           headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.1 response; the server closes the connection after it."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", f"Content-Type: {ctype}",
             f"Content-Length: {len(body)}", "Connection: close",
             *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _bad(status: int, refused: str, error: str) -> Reply:
    return Reply(status, {"error": error}, refused)


def parse_head(buf: bytes) -> Request | Reply | None:
    """The request whose head starts `buf`; None while the head is incomplete and may still
    fit; a Reply when it can never be served. Never raises."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD_BYTES:
            return _bad(431, "too_large", f"request head over {MAX_HEAD_BYTES} bytes")
        return None
    if end + 4 > MAX_HEAD_BYTES:
        return _bad(431, "too_large", f"request head over {MAX_HEAD_BYTES} bytes")
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        return _bad(400, "malformed", "not an HTTP request line (METHOD /path HTTP/1.1)")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        return Reply(505, {"error": f"{version[:16]!r}: use HTTP/1.1"}, "malformed")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _HEADER_NAME.fullmatch(name):
            return _bad(400, "malformed", "a header line is not NAME: VALUE")
        headers.append((name.lower(), value.strip(" \t")))
    request = Request(method, target.split("?", 1)[0], tuple(headers), 0, end + 4)
    if request.header("transfer-encoding") is not None:
        return _bad(400, "malformed", "Transfer-Encoding is not accepted; send Content-Length")
    lengths = {v for k, v in headers if k == "content-length"}
    if len(lengths) > 1:
        return _bad(400, "malformed", "two different Content-Length headers")
    if lengths:
        (length,) = lengths
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
        if not _LENGTH.fullmatch(length):
            return _bad(400, "malformed", f"Content-Length {length[:16]!r} is not a number")
        if int(length) > MAX_BODY_BYTES:
            return _bad(413, "too_large", f"body over {MAX_BODY_BYTES} bytes (commands take "
                                          "none)")
        request = Request(method, request.path, request.headers, int(length), end + 4)
    return request


def check_token(raw: bytes) -> str | None:
    """Why `raw` (a token file's content, surrounding whitespace removed) cannot be the
    API token, or None."""
    if len(raw) < MIN_TOKEN:
        return f"{len(raw)} bytes: shorter than {MIN_TOKEN}"
    if not _TOKEN_CHARS.fullmatch(raw):
        return "holds characters other than visible ASCII (it travels in an HTTP header)"
    return None


def bearer(request: Request) -> bytes | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    value = request.header("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("latin-1")


def may_command(request: Request, listener: Listener, policy: Policy,
                peer: Peer | None) -> Reply | None:
    """None when this request may run a command; else the refusal, which names the fix."""
    presented = bearer(request)
    if policy.token and presented is not None and hmac.compare_digest(presented, policy.token):
        return None
    if listener is Listener.SOCKET and peer is not None:
        if peer.uid == 0 or peer.uid in policy.uids or peer.gids & policy.gids:
            return None
        return _bad(403, "forbidden",
                    f"uid {peer.uid} may not send commands on api_socket; run as root, or add "
                    "the uid to api_socket_uids (or a group of it to api_socket_gids)")
    if not policy.token:
        return _bad(403, "forbidden", "commands over TCP are off: no api_token_file is "
                                      "configured; set it, or use api_socket")
    challenge = (("WWW-Authenticate", 'Bearer realm="colo-orch"'),)
    if presented is None:
        return Reply(401, {"error": "a command needs Authorization: Bearer TOKEN (the token "
                                    "of api_token_file; coloctl --config FILE sends it)"},
                     "unauthorized", challenge)
    return Reply(401, {"error": "wrong token"}, "unauthorized", challenge)


def route(request: Request, listener: Listener, policy: Policy,
          peer: Peer | None = None) -> Read | Command | Reply:
    """What to do with a whole request that arrived on `listener`."""
    path = request.path
    if listener is Listener.READ_ONLY:
        if request.method == "GET" and path in READS:
            return Read(READS[path])
        if request.method != "GET":
            return Reply(405, {"error": f"{request.method} on metrics_listen, which is read-only "
                                        f"({', '.join(READS)}); send commands to api_listen"},
                         "read_only", (("Allow", "GET"),))
        return _bad(404, "not_found", f"no endpoint {path[:64]}; metrics_listen serves "
                                      f"{', '.join(READS)}")
    if request.method == "GET":
        if path == "/state":
            return Read("state")
        where = " (served on metrics_listen)" if path in READS else ""
        return _bad(404, "not_found", f"no endpoint {path[:64]}{where}")
    if request.method != "POST":
        return Reply(405, {"error": f"{request.method}: use GET /state or POST /COMMAND"},
                     "malformed", (("Allow", "GET, POST"),))
    # Authentication first, so that an unauthenticated caller learns nothing more.
    refused = may_command(request, listener, policy, peer)
    if refused is not None:
        return refused
    name = path.strip("/")
    if name not in COMMANDS:
        return _bad(404, "not_found", f"unknown command {name[:64]!r}; use one of "
                                      f"{', '.join(COMMANDS)}")
    return Command(name)
