"""Byte-stream helpers shared by the TCP flow: segment lists and first-difference search."""

from __future__ import annotations

import bisect

# A segment is (stream offset of its first byte, payload). A side keeps its segments sorted
# by offset and never overlapping, so that comparison walks both lists once.
Segment = tuple[int, bytes]


def insert(segs: list[Segment], start: int, data: bytes) -> int:
    """Add the bytes of ``data`` (at ``start``) not already in ``segs``; return how many.

    Retransmissions and overlaps keep the first copy: TCP resends the same bytes, and
    comparing a side against itself would catch no divergence between the replicas.
    """
    end = start + len(data)
    if not segs:
        segs.append((start, data))
        return len(data)
    last_start, last_data = segs[-1]
    if start >= last_start + len(last_data):  # in order: the common case
        segs.append((start, data))
        return len(data)
    pieces: list[Segment] = []
    pos = start
    for s, d in segs:
        e = s + len(d)
        if e <= pos:
            continue
        if s >= end:
            break
        if s > pos:
            pieces.append((pos, data[pos - start : s - start]))
        pos = e
        if pos >= end:
            break
    if pos < end:
        pieces.append((pos, data[pos - start :]))
    added = 0
    for piece in pieces:
        bisect.insort(segs, piece)  # offsets are unique, so bytes are never compared
        added += len(piece[1])
    return added


def trim_below(segs: list[Segment], offset: int) -> int:
    """Drop what lies below ``offset``; return how many stored bytes were freed."""
    freed = 0
    while segs:
        s, d = segs[0]
        e = s + len(d)
        if e <= offset:
            segs.pop(0)
            freed += len(d)
        elif s < offset:
            segs[0] = (offset, d[offset - s :])
            freed += offset - s
            break
        else:
            break
    return freed


def first_difference(a: bytes, b: bytes) -> int:
    """Index of the first differing byte of two unequal byte strings.

    Halving with slice comparisons keeps the work in C (memcmp) for large payloads.
    """
    lo, hi = 0, min(len(a), len(b))
    while hi - lo > 32:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return i
    return hi
