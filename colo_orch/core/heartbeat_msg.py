"""The heartbeat datagram between the two orchestrators: encode, and a decoder that never raises.

A datagram is a 32-byte HMAC-SHA256 tag, then a JSON object: `{"v": 1, "pair": NAME,
"boot": B, "seq": N, "state": {...}, "echo": [B, N] | null}`, where `echo` names the
last heartbeat that the sender received from us (our boot and sequence number). The tag is over the JSON bytes
with the pair's shared key (each host holds its own copy: `heartbeat_key_file`). Anything
can arrive on the heartbeat port (a stray packet, a scanner, a forgery), so `decode`
checks the tag first and then every field the daemon reads, and returns None for
anything else: the receive thread must outlive any input, and only the peer may say
what state it is in.

`boot` is a random number a sender draws at start, and `seq` counts up from 1. A
receiver refuses a sequence number it has already passed within one boot (a replayed
datagram), so a recording cannot stand in for a live peer within one run of it. Across
runs the echo does it: a receiver counts the peer as present only while the peer echoes
a heartbeat that this run of the receiver sent recently, which no recording can. No
clock is shared between the hosts and none is used here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

VERSION = 1
TAG = 32  # bytes of HMAC-SHA256
MIN_KEY = 16  # bytes; a shorter shared secret is refused where the key is loaded
# The fields of "state" that the daemon reads, and their types (bool is not an int here).
STATE_FIELDS: dict[str, type] = {"state": int, "role": str, "vm_ok": bool, "incoming": str,
                                 "proxy_ready": bool, "arbiter_ok": bool,
                                 "switchover": bool, "recording": bool}


@dataclass(frozen=True)
class Beat:
    boot: int
    seq: int
    state: dict[str, Any]
    echo: tuple[int, int] | None  # (boot, seq) of the last heartbeat it received from us


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def encode(key: bytes, pair: str, boot: int, seq: int, state: dict[str, Any],
           echo: tuple[int, int] | None) -> bytes:
    body = json.dumps({"v": VERSION, "pair": pair, "boot": boot, "seq": seq, "state": state,
                       "echo": list(echo) if echo is not None else None}).encode()
    return _tag(key, body) + body


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode(key: bytes, data: bytes, pair: str) -> Beat | None:
    """The authentic heartbeat of our pair in `data`, or None if it is anything else."""
    tag, body = data[:TAG], data[TAG:]
    if len(tag) != TAG or not hmac.compare_digest(tag, _tag(key, body)):
        return None
    try:
        msg = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        return None
    if not isinstance(msg, dict) or msg.get("v") != VERSION or msg.get("pair") != pair:
        return None
    boot, seq, state, echo = msg.get("boot"), msg.get("seq"), msg.get("state"), msg.get("echo")
    if not isinstance(boot, int) or isinstance(boot, bool):
        return None
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(state, dict):
        return None
    if echo is not None and not (isinstance(echo, list) and len(echo) == 2
                                 and all(_int(x) for x in echo)):
        return None
    for field, kind in STATE_FIELDS.items():
        if field in state and not (_int(state[field]) if kind is int
                                   else isinstance(state[field], kind)):
            return None
    return Beat(boot, seq, dict(state), (echo[0], echo[1]) if isinstance(echo, list) else None)


class Replay:
    """Per peer boot, the highest sequence number accepted: older or equal ones are replays."""

    def __init__(self) -> None:
        self.boot: int | None = None
        self.seq = 0

    def fresh(self, beat: Beat) -> bool:
        if beat.boot == self.boot and beat.seq <= self.seq:
            return False
        self.boot, self.seq = beat.boot, beat.seq
        return True
