"""The heartbeat datagram between the two orchestrators: encode and a decoder that never raises.

A heartbeat is one JSON object: `{"v": 1, "pair": NAME, "seq": N, "state": {...},
"echo": N | null}`. Anything can arrive on the heartbeat port (a stray packet, a
scanner, a forged datagram), so `decode` checks every field the daemon reads and
returns None for anything else: the receive thread must outlive any input, or the
host stops hearing its peer and takes a healthy peer for dead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

VERSION = 1
# The fields of "state" that the daemon reads, and their types (bool is not an int here).
STATE_FIELDS: dict[str, type] = {"state": int, "role": str, "vm_ok": bool, "incoming": str,
                                 "proxy_ready": bool}


@dataclass(frozen=True)
class Beat:
    seq: int
    state: dict[str, Any]
    echo: int | None


def encode(pair: str, seq: int, state: dict[str, Any], echo: int | None) -> bytes:
    return json.dumps({"v": VERSION, "pair": pair, "seq": seq, "state": state,
                       "echo": echo}).encode()


def _is(value: object, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def decode(data: bytes, pair: str) -> Beat | None:
    """The heartbeat of our pair in `data`, or None if it is anything else."""
    try:
        msg = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        return None
    if not isinstance(msg, dict) or msg.get("v") != VERSION or msg.get("pair") != pair:
        return None
    seq, state, echo = msg.get("seq"), msg.get("state"), msg.get("echo")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(state, dict):
        return None
    if echo is not None and (not isinstance(echo, int) or isinstance(echo, bool)):
        return None
    for key, kind in STATE_FIELDS.items():
        if key in state and not _is(state[key], kind):
            return None
    return Beat(seq, dict(state), echo)
