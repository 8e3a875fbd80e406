"""Lending flows between the comparator and the C fast path (no I/O, no clock).

The proxy and the property test that holds the fast path to the comparator share these,
so both exercise one protocol: lend a flow once the comparator says it is in sync, and
install whatever the fast path gives back before the comparator sees the next packet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from colo_proxy.compare import Command, Comparator
from colo_proxy.fastpath import GivenBack

Facts = tuple[int, int, int, int, int, int, int]


class Lender(Protocol):
    def lend(self, key: bytes, facts: Facts) -> bool: ...


def tcp_key(packet: bytes) -> bytes | None:
    """The comparator's key of an IPv4 TCP packet without IP options, else None."""
    if len(packet) >= 40 and packet[0] == 0x45 and packet[9] == 6:
        return packet[12:24]
    return None


def give_back(cmp: Comparator, rec: GivenBack, next_svm_id: Callable[[], int],
              now: float) -> list[Command]:
    """Install a flow's state from the fast path; the SVM's kept segments get fresh ids."""
    kept = [(next_svm_id(), start, data) for start, data in rec.s_kept]
    return cmp.take_back(rec.key, rec.matched, rec.p_top, rec.s_top, rec.s_ack, rec.p_amax,
                         rec.held, rec.p_segs, kept, now, rec.s_prog)


def lend(cmp: Comparator, fp: Lender, keys: Iterable[bytes], now: float) -> int:
    """Lend each of these flows that is in sync; how many were lent."""
    n = 0
    for key in keys:
        facts = cmp.lend(key)
        if facts is None:
            continue
        if fp.lend(key, facts):
            n += 1
        else:  # the fast path's table is full: the comparator keeps the flow
            m, s_ack, p_amax = facts[4], facts[5], facts[6]
            cmp.take_back(key, m, m, m, s_ack, p_amax, [], [], [], now)
    return n
