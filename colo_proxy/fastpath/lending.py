"""Lending flows between the comparator and the C fast path (no I/O, no clock).

The proxy and the property test that holds the fast path to the comparator share these,
so both exercise one protocol: lend a flow whenever the comparator can hand its state
over, and install whatever the fast path gives back before the comparator sees the next
packet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from colo_proxy.compare import Command, Comparator, LentFlow
from colo_proxy.fastpath import GivenBack


class Lender(Protocol):
    def lend(self, key: bytes, lent: LentFlow) -> bool: ...


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


def lend(cmp: Comparator, fp: Lender, keys: Iterable[bytes], now: float,
         next_svm_id: Callable[[], int], owns: Callable[[int], bool] | None = None,
         held_after: float | None = None) -> list[int]:
    """Lend each of these flows the comparator can lend; the ids of the held PVM packets
    that went with them (the fast path decides them now).

    owns: whether the fast path can give a verdict on a held packet id (the segmenting
    queue's copies are not in its queue); held_after: the fast path gives back a flow
    whose oldest packet arrived before this (its hold limit), so such a flow stays here
    rather than go back and forth. A flow it cannot take stays with the comparator.
    """
    moved: list[int] = []
    for key in keys:
        lent = cmp.lend(key)
        if lent is None:
            continue
        if (
            (owns is None or all(owns(h[0]) for h in lent.held))
            and (held_after is None or not lent.held or lent.held[0][3] > held_after)
            and fp.lend(key, lent)
        ):
            moved += (h[0] for h in lent.held)
            continue
        # Not taken (the fast path's table is full, or a packet it cannot decide): the
        # comparator has it back as it was.
        held = [(pid, end, aoff, t, gso) for pid, end, aoff, t, gso, _d in lent.held]
        p_segs = [(end - len(d), d) for _p, end, _a, _t, _g, d in lent.held if d]
        kept = [(next_svm_id(), start, d) for start, d in lent.s_kept]
        cmp.take_back(key, lent.matched, lent.p_top, lent.s_top, lent.s_ack, lent.p_amax,
                      held, p_segs, kept, now, lent.s_prog)
    return moved
