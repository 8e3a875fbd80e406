"""The release permit: how long this proxy may still let its VM's output reach a client.

Theory of operation
-------------------
The orchestrator fences its proxy when it can no longer prove that it holds the pair's
lease (docs/ORCHESTRATOR.md, S3). A fence needs a running orchestrator: one that is
SIGSTOPped (or wedged) keeps no promise, its lease expires in etcd, the peer takes over,
and a proxy left alone would go on releasing compared output beside the new primary
(docs/RELIABILITY.md, "stop-orch of the PVM's host"). So a proxy that takes permits
releases only while it holds an unexpired one, as Patroni's watchdog stops a PostgreSQL
whose Patroni stopped renewing its leader key.

The orchestrator renews the permit every loop cycle with a duration D, never a time:
D = (the moment its own hold on the lease ends, `safe_until`, or the failsafe's end) -
(its clock when it computes D). The proxy measures D on its own monotonic clock from an
*anchor*, and the anchor decides whether this is safe:

- Measured from the permit's receipt, the proxy's deadline is later than the
  orchestrator's by the time from computing D to reading it: microseconds normally, but
  unbounded when either process stalls in between (the orchestrator SIGSTOPped between
  computing D and writing it; a proxy stopped with permits waiting in its socket). This is
  the wrong direction: etcd's TTL is safe for the lease holder because the *holder*
  starts its timing before it sends the keep-alive and etcd after it receives it; here the
  proxy is the holder and the orchestrator the grantor, so the proxy must start first.
- So the proxy starts first: every permit reply carries a fresh token, which this core
  remembers with the proxy's clock at the moment it issued it (only permit replies, which
  go to the command channel's holder alone: a status reader cannot push the orchestrator's
  token out of the few kept). The orchestrator echoes the newest token it has read in its
  next permit; that token was issued before the reply carrying it was sent, hence before
  the orchestrator read it and computed D. The deadline is `issued_at(token) + D` <= `t_compute + D` = the end of the
  orchestrator's hold, whatever stalls happen on the way, and ends `lease_margin` before
  etcd can let the peer acquire (safe_until is the keep-alive's send time + TTL - margin;
  etcd starts the TTL on receipt). Both clocks are the same host's CLOCK_MONOTONIC
  read by two processes, but only durations cross between them: nothing here compares one
  process's clock reading with another's, and a stale or foreign token (a restarted
  proxy's, or one forgotten, or 0 for "none yet") can shorten the permit but never extend
  it. The first permit after a connection thus only fetches a token; the orchestrator
  sends one every cycle (0 s while it may not serve), so its token is always fresh when
  it comes to serve.

Past the deadline the proxy *holds* (its verdicts wait), it does not fence: an
orchestrator that comes back still holding the lease renews the permit and everything
held goes out, nothing lost; one that lost it finds so at its next cycle and fences
(which drops what is held). Enforcement (`Permit.enforce`): "required" from the start (nothing
is released before the first permit), "auto" from the first permit received (so a proxy
with no orchestrator, docs/PROXY.md's standalone use, is never held), "off" never.

Pure: no I/O, no clock of its own; `now` comes with every call.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from colo_proxy.wire.control import ProtocolError

ENFORCE = ("auto", "required", "off")
# Tokens remembered: the orchestrator echoes the newest it has read, at most a few replies
# behind the newest issued.
TOKENS_KEPT = 16


@dataclass
class Permit:
    """One proxy's release permit. `enforce`: "auto", "required" or "off" (see above);
    tokens count up from `first_token` (random per process in the adapter, so that a
    restarted proxy does not take its predecessor's tokens for its own)."""

    enforce: str = "auto"
    first_token: int = 1
    deadline: float = 0.0  # the proxy's clock; 0.0: no permit yet
    armed: bool = False  # enforced now ("required", or "auto" after the first permit)
    lapses: int = 0  # times the permit ran out while enforced
    grants: int = 0
    _issued: OrderedDict[int, float] = field(default_factory=OrderedDict)
    _next: int = 0
    _valid: bool = False  # as last seen by `lapsed_now`
    revoked: bool = False  # the last permit had already ended when it came (0 s: revoked)

    def __post_init__(self) -> None:
        if self.enforce not in ENFORCE:
            raise ValueError(f"release_permit must be one of {', '.join(ENFORCE)}")
        self.armed = self.enforce == "required"
        self._next = self.first_token

    def issue(self, now: float) -> int:
        """A token for a reply sent now: a permit echoing it is measured from `now`."""
        tok = self._next
        self._next += 1
        self._issued[tok] = now
        while len(self._issued) > TOKENS_KEPT:
            self._issued.popitem(last=False)
        return tok

    def grant(self, seconds: float, token: object, now: float) -> float:
        """A permit of `seconds` from the orchestrator, echoing `token`; returns the new
        deadline. With a token of ours it sets the deadline (shorter too: the newest word
        wins, and 0 revokes); with any other it can only shorten it."""
        if self.enforce == "off":
            return self.deadline
        self.armed = True
        self.grants += 1
        secs = max(0.0, float(seconds))
        anchor = self._issued.get(token) if isinstance(token, int) else None
        if anchor is not None:
            self.deadline = anchor + secs
        else:
            self.deadline = min(self.deadline, now + secs)
        self.revoked = self.deadline <= now
        return self.deadline

    def allows(self, now: float) -> bool:
        """Whether output may be released at `now`."""
        return not self.armed or now < self.deadline

    def remaining(self, now: float) -> float:
        """Seconds left (0.0 once lapsed); inf while not enforced."""
        if not self.armed:
            return float("inf")
        return max(0.0, self.deadline - now)

    def on_message(self, msg: dict[str, object], now: float) -> dict[str, object]:
        """The control message `{"type": "permit", "seconds": D, "token": T}` and its reply,
        which carries the next token. ProtocolError for a message that is not one."""
        secs = msg.get("seconds")
        if (not isinstance(secs, int | float) or isinstance(secs, bool)
                or not math.isfinite(secs)):
            raise ProtocolError("permit: 'seconds' must be a finite number")
        self.grant(secs, msg.get("token"), now)
        return {"type": "permit", "token": self.issue(now),
                "remaining_s": round(min(self.remaining(now), 1e9), 3)}

    def status(self, now: float) -> dict[str, object]:
        return {"enforce": self.enforce, "enforced": self.armed,
                "allows": self.allows(now),
                "remaining_s": round(self.remaining(now), 3) if self.armed else None,
                "lapses": self.lapses + self._uncounted(now), "grants": self.grants}

    def _uncounted(self, now: float) -> int:
        """1 while a lapse has happened that `lapsed_now` has not yet been called to see:
        a status read between the deadline and the adapter's next tick must not say
        "held" with a count without that lapse (stop 34's CI failed on it)."""
        return int(self._valid and not self.allows(now) and self._is_expiry())

    def _is_expiry(self) -> bool:
        # Ran out: not renewed in time. Not a revocation (the orchestrator said so),
        # nor a "required" proxy's start before its first permit.
        return bool(self.grants) and not self.revoked

    def lapsed_now(self, now: float) -> bool | None:
        """The change since the last call: True the first time the permit is found
        lapsed (count it, log it, stop releasing), False the first time it is found valid
        again (release what waited), None when nothing changed."""
        valid = self.allows(now)
        if valid == self._valid:
            return None
        self._valid = valid
        if valid:
            return False
        if self._is_expiry():
            self.lapses += 1
        return True
