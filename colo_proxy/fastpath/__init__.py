"""The primary proxy's C fast path (fastpath.c, through cffi), and its records for Python.

The comparator lends a flow that is in sync (``Comparator.lend``); the C code then takes
that flow's in-order ACK segments whose bytes match, releases the PVM's packets on the
comparator's own condition and gives the flow back (``Comparator.take_back``) before any
other packet of it. Everything else comes back to Python as it arrived. fastpath.c's
opening comment is the theory of operation; docs/PROXY.md says how the proxy uses it.

``available()`` is False when no build matches the sources (``scripts/build-fastpath``):
the proxy then runs its pure-Python path.

This room imports ``compare`` (lending.py, the lent state) and its own C module; the C code reads and
writes the descriptors that ``kernel`` opened and configured, and opens none itself.
"""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from colo_proxy.compare import LentFlow
from colo_proxy.fastpath import _build

# Why a flow was given back (FP_BACK_* in fastpath.c), for metrics.
BACK_REASONS = ("reclaim", "flags", "order", "mismatch", "limit", "timeout", "other", "lag")
RECLAIM = 0
POLL_RECORDS = 8  # fp_poll: records to read
POLL_WAKE = 4  # fp_poll: the wake descriptor (Python's own epoll set) is readable

_PVM = struct.Struct("=BIHIdIB")
_SVM = struct.Struct("=BHdI")
_BACK = struct.Struct("=BB12sqqqqqdII")
_HELD = struct.Struct("=IqqdIB")
_KEPT = struct.Struct("=qI")
_COUNTS = struct.Struct("=II")

_lib: Any = None
_ffi: Any = None


def available() -> bool:
    """A compiled fast path matching these sources exists and loads."""
    return _load()


def _load() -> bool:
    global _lib, _ffi
    if _lib is not None:
        return True
    path = _build.find()
    if path is None:
        return False
    spec = importlib.util.spec_from_file_location(_build.MODULE, path)
    if spec is None or spec.loader is None:
        return False
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _lib, _ffi = mod.lib, mod.ffi
    return True


@dataclass(frozen=True, slots=True)
class SlowPvm:
    packet_id: int
    hw_protocol: int
    cap_len: int
    at: float
    payload: bytes
    gso: bool = False  # a GSO super-packet (the kernel's NFQA_SKB_GSO)

    @property
    def truncated(self) -> bool:
        return self.cap_len > len(self.payload)


@dataclass(frozen=True, slots=True)
class SlowSvm:
    ethertype: int
    at: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class GivenBack:
    """A lent flow's state, for Comparator.take_back (SVM segments without ids yet)."""

    reason: int
    key: bytes
    matched: int
    p_top: int
    s_top: int
    s_ack: int
    p_amax: int
    s_prog: float  # when the SVM last sent new bytes while lent, -1.0 if it did not
    held: list[tuple[int, int, int, float, bool]]  # id, end, ACK offset, arrival, GSO
    p_segs: list[tuple[int, bytes]]
    s_kept: list[tuple[int, bytes]]


Record = SlowPvm | SlowSvm | GivenBack


class FastPath:
    """One C fast path: its flow table, and once attached, the sockets and verdicts."""

    def __init__(self, max_flow_packets: int, max_flow_bytes: int, max_flows: int = 65536) -> None:
        if not _load():
            raise RuntimeError("no fast path build matches the sources (scripts/build-fastpath)")
        self._p = _ffi.gc(_lib.fp_new(max_flow_packets, max_flow_bytes, max_flows), _lib.fp_free)
        if self._p == _ffi.NULL:
            raise MemoryError("fp_new")
        self._n = _ffi.new("size_t *")

    @staticmethod
    def _check(rc: int, what: str) -> int:
        if rc < 0:
            raise OSError(-rc, f"fast path: {what} failed")
        return rc

    # -- the core --------------------------------------------------------------------
    def lend(self, key: bytes, lent: LentFlow) -> bool:
        """Take a flow the comparator lent; False if the table is full (not taken)."""
        f = _ffi.new("fp_facts *")
        f.p_base, f.s_base, f.p_abase, f.s_abase = lent.p_base, lent.s_base, lent.p_abase, \
            lent.s_abase
        f.matched, f.s_ack, f.p_amax = lent.matched, lent.s_ack, lent.p_amax
        f.p_top, f.s_top, f.s_prog = lent.p_top, lent.s_top, lent.s_prog
        state = lend_state(lent) if lent.held or lent.s_kept else b""
        return self._check(_lib.fp_lend(self._p, key, f, state, len(state)), "lend") == 1

    def pvm(self, packet_id: int, packet: bytes, now: float, gso: bool = False) -> bool:
        """True if the fast path took this PVM packet (core only, for tests)."""
        return self._check(
            _lib.fp_pvm(self._p, packet_id, packet, len(packet), now, 1 if gso else 0), "pvm"
        ) == 1

    def svm(self, packet: bytes, now: float) -> bool:
        return self._check(_lib.fp_svm(self._p, packet, len(packet), now), "svm") == 1

    def reclaim_all(self) -> None:
        self._check(_lib.fp_reclaim_all(self._p, RECLAIM), "reclaim")

    def expire(self, before: float) -> None:
        self._check(_lib.fp_expire(self._p, before), "expire")

    @property
    def lent_flows(self) -> int:
        return int(_lib.fp_lent_flows(self._p))

    @property
    def held_packets(self) -> int:
        """PVM packets held and SVM packets kept (as Comparator.held_packets counts)."""
        return int(_lib.fp_held_packets(self._p)) + int(_lib.fp_kept_packets(self._p))

    def released(self) -> list[int]:
        ptr = _lib.fp_released(self._p, self._n)
        return list(_ffi.unpack(ptr, self._n[0])) if self._n[0] else []

    def records(self) -> list[Record]:
        """What Python must handle, in arrival order; clears the records and releases."""
        ptr = _lib.fp_out(self._p, self._n)
        n = self._n[0]
        data = bytes(_ffi.buffer(ptr, n)) if n else b""
        _lib.fp_out_clear(self._p)
        return parse_records(data)

    def stats(self) -> dict[str, int]:
        s = _lib.fp_get_stats(self._p)
        out = {name: int(getattr(s, name)) for name in (
            "pvm_packets", "svm_packets", "released", "slow_pvm", "slow_svm", "lent",
            "enobufs", "svm_errors", "svm_non_ip", "verdict_msgs")}
        for i, reason in enumerate(BACK_REASONS):
            out[f"handbacks_{reason}"] = int(s.handbacks[i])
        return out

    # -- the sockets -----------------------------------------------------------------
    def attach(self, nfq_fd: int, queue: int, svm_fd: int, wake_fd: int, batch: int) -> None:
        self._check(_lib.fp_attach(self._p, nfq_fd, queue, svm_fd, wake_fd, batch), "attach")

    def poll(self, timeout: float, hold_limit: float, busy_us: int) -> int:
        """Serve in C until Python has work; POLL_* bits, 0 when the timeout passed."""
        ms = max(0, int(timeout * 1e3 + 0.999))
        return self._check(_lib.fp_poll(self._p, ms, hold_limit, busy_us), "poll")

    def wait(self, timeout: float) -> int:
        return self._check(_lib.fp_wait(self._p, max(0, int(timeout * 1e3 + 0.999))), "wait")

    def read(self, hold_limit: float) -> None:
        self._check(_lib.fp_read(self._p, hold_limit), "read")

    def decide(self, accept: Sequence[int], drop: Sequence[int] = (),
               requeue: Sequence[int] = ()) -> None:
        if requeue:
            self.requeue(requeue)
        a = _ffi.new("uint32_t[]", list(accept))
        d = _ffi.new("uint32_t[]", list(drop))
        self._check(_lib.fp_decide(self._p, a, len(a), d, len(d)), "verdict")

    def resegment(self, lag: float, to_queue: int) -> None:
        """Give back flows whose oldest held packet is a super-packet held `lag` seconds (0:
        never); `requeue` sends ids to `to_queue`, the segmenting queue."""
        _lib.fp_set_resegment(self._p, lag, to_queue)

    def requeue(self, ids: Sequence[int]) -> None:
        r = _ffi.new("uint32_t[]", list(ids))
        self._check(_lib.fp_requeue(self._p, r, len(r)), "verdict")

    def decide_all(self, accept: bool) -> None:
        self._check(_lib.fp_decide_all(self._p, 1 if accept else 0), "verdict")

    # The proxy's Queue protocol: with the fast path attached, every verdict goes through
    # its planner (a batch verdict must not pass over a packet held in C).
    def accept_all(self) -> None:
        self.decide_all(True)

    def drop_all(self) -> None:
        self.decide_all(False)

    def receive(self, limit: int = 64) -> list[Any]:
        raise RuntimeError("with the fast path attached, packets come as its records")

    @property
    def enobufs(self) -> int:
        return int(_lib.fp_get_stats(self._p).enobufs)

    @property
    def outstanding(self) -> int:
        return int(_lib.fp_outstanding(self._p))


def lend_state(lent: LentFlow) -> bytes:
    """A lend's held packets and kept segments in the layout of a give-back record."""
    out = [_COUNTS.pack(len(lent.held), len(lent.s_kept))]
    for pid, end, aoff, t, gso, data in lent.held:
        out += (_HELD.pack(pid, end, aoff, t, len(data), gso), data)
    for start, data in lent.s_kept:
        out += (_KEPT.pack(start, len(data)), data)
    return b"".join(out)


def parse_records(data: bytes) -> list[Record]:
    out: list[Record] = []
    off = 0
    n = len(data)
    while off < n:
        kind = data[off]
        if kind == 1:
            _, pid, hw, cap, t, ln, gso = _PVM.unpack_from(data, off)
            off += _PVM.size
            out.append(SlowPvm(pid, hw, cap, t, data[off : off + ln], bool(gso)))
            off += ln
        elif kind == 2:
            _, eth, t, ln = _SVM.unpack_from(data, off)
            off += _SVM.size
            out.append(SlowSvm(eth, t, data[off : off + ln]))
            off += ln
        elif kind == 3:
            _, reason, key, m, ptop, stop, sack, pamax, sprog, nh, nk = _BACK.unpack_from(
                data, off)
            off += _BACK.size
            held: list[tuple[int, int, int, float, bool]] = []
            psegs: list[tuple[int, bytes]] = []
            for _ in range(nh):
                pid, end, aoff, t, dlen, gso = _HELD.unpack_from(data, off)
                off += _HELD.size
                held.append((pid, end, aoff, t, bool(gso)))
                if dlen:
                    psegs.append((end - dlen, data[off : off + dlen]))
                    off += dlen
            kept: list[tuple[int, bytes]] = []
            for _ in range(nk):
                start, dlen = _KEPT.unpack_from(data, off)
                off += _KEPT.size
                kept.append((start, data[off : off + dlen]))
                off += dlen
            out.append(GivenBack(reason, key, m, ptop, stop, sack, pamax, sprog, held, psegs,
                                   kept))
        else:
            raise ValueError(f"fast path record of unknown kind {kind} at {off}")
    return out
