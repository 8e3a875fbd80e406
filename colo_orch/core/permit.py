"""How long our proxy may release output: the release permit the loop renews each cycle.

A fence needs a running orchestrator. One that is stopped (SIGSTOP, a wedged loop) cannot
fence its proxy when its hold on the lease ends, and the peer takes over once etcd expires
the lease (docs/RELIABILITY.md, "stop-orch"). So the loop gives its proxy, every cycle, a
permit that ends no later than its own right to serve; a proxy past it holds its output
(colo_proxy.service.permit, which also says why the proxy measures the duration from a
token it issued before we computed it, never from the permit's receipt).

Our right to serve ends at:
- the lease's `safe_until` while we hold it (S3): our last successful keep-alive's send
  time + TTL - lease_margin, so the permit ends `lease_margin` before etcd can let the
  peer acquire, whatever delays the permit meets on the way;
- on the failsafe (F2), `echo_sent_at + heartbeat_timeout / 2`, when the loop itself
  would stop: the peer cannot declare us lost before `echo_sent_at + heartbeat_timeout`.

A fenced host, or one with neither, gets 0 s: a revocation. A duration, never a time:
the proxy keeps its own clock.
"""

from __future__ import annotations


def permit_seconds(now: float, *, fenced: bool, lease_held: bool, safe_until: float,
                   failsafe: bool, echo_sent_at: float | None,
                   heartbeat_timeout: float) -> float:
    """Seconds of release permit to send at `now` (our clock, read just before sending)."""
    if fenced:
        return 0.0
    until = safe_until if lease_held else 0.0
    if failsafe and echo_sent_at is not None:
        until = max(until, echo_sent_at + heartbeat_timeout / 2)
    return max(0.0, until - now)
