"""The control channel between the proxy and its orchestrator (docs/PROXY.md, "Control channel").

A unix stream socket carrying JSON objects, one per line, each with `"v": 1` and a
`"type"`. This is the codec only, without I/O (`encode`, `decode`, `LineDecoder`): the
orchestrator's proxy link and the libxl bridge speak it over their own sockets, and
`colo_proxy.service.control_socket` is the proxy's socket adapter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
MAX_LINE = 64 * 1024
# Orchestrator -> proxy. Each is answered with {"type": "ok", "for": <type>} (or the reply
# named below), or {"type": "error", "error": ...}.
# "permit" (docs/PROXY.md, "Release permit") is answered with {"type": "permit", "token",
# "remaining_s"}; an error about it says "for": "permit", so that its sender, which does
# not wait for the answer, can tell it from the answer to a request it waits for.
REQUESTS = ("hello", "checkpoint_started", "checkpoint_barrier", "checkpoint_done", "failover",
            "pause", "resume", "mirror", "fence", "unfence", "status", "permit", "record",
            "replay")
# Proxy -> orchestrator, unsolicited: {"type": "checkpoint_request", "reason", "flow",
# "offset"}.


class ProtocolError(ValueError):
    pass


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps({"v": VERSION, **msg}, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    except RecursionError:  # "[[[[..." past the interpreter's limit: not a message of ours
        raise ProtocolError("JSON nested too deeply") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("a message is a JSON object with a string 'type'")
    if msg.get("v", VERSION) != VERSION:
        raise ProtocolError(f"unsupported version {msg.get('v')!r}; this proxy speaks {VERSION}")
    return msg


@dataclass
class LineDecoder:
    buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> Iterator[dict[str, Any] | ProtocolError]:
        self.buf += data
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > MAX_LINE:
                    self.buf.clear()
                    yield ProtocolError("line too long")
                return
            line = bytes(self.buf[:nl])
            del self.buf[: nl + 1]
            if line.strip():
                try:
                    yield decode(line)
                except ProtocolError as exc:
                    yield exc
