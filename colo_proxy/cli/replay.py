"""``colo-proxy replay``: run two captured VM outputs through the comparator.

Each capture holds what one replica sent (pcap or pcapng; Ethernet with or without VLAN tags,
Linux cooked, BSD loopback or raw IP). Packets are fed in time order, packet time as ``now``;
a requested checkpoint is taken as instantaneous and the flow it names is reported once and
no longer compared. This tells an operator how often a workload would diverge before
deploying it.

Replay does not call ``checkpoint_done``: a real checkpoint restarts the SVM from the PVM's
state, so the comparator discards SVM output it kept. Here the secondary's capture goes on as
recorded, and discarding its output for the other flows (output it will not produce again)
would turn them into false timeouts. Instead the diverged flow alone stops being compared,
which is what an instantaneous checkpoint means for it.

The two captures normally come from two separate runs, so the replicas' TCP ISNs differ and
so do the clients' ISNs. In production the secondary's rewriter puts SVM output into the
PVM's sequence space before the comparator sees it; replay does the same from the handshakes
in the two captures, so that the comparator's "after a checkpoint both sides share the PVM's
sequence space" holds here too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import dpkt

from colo_proxy.compare import (
    Command,
    Comparator,
    CompareConfig,
    Flow,
    RequestCheckpoint,
    Side,
    Wakeup,
    flow_of,
)
from colo_proxy.compare.parse import L4, locate

_ETH_IP = {0x0800, 0x86DD}
_ETH_VLAN = {0x8100, 0x88A8, 0x9100}
_DLT_NULL, _DLT_EN10MB, _DLT_RAW, _DLT_LOOP, _DLT_SLL, _DLT_SLL2 = 0, 1, 101, 108, 113, 276
_DLT_RAW_ALIASES = {12, 14, _DLT_RAW}
_TCP_SEQ_ACK = struct.Struct("!II")
_SYN, _ACK = 0x02, 0x10


class ReplayError(Exception):
    """A capture cannot be used; the message is one line for the operator."""


@dataclass
class FlowReport:
    flow: Flow
    primary_packets: int = 0
    secondary_packets: int = 0
    reason: str | None = None
    offset: int | None = None
    time: float | None = None

    @property
    def status(self) -> str:
        if self.reason is not None:
            return "diverged"
        if self.primary_packets and self.secondary_packets:
            return "matched"
        return "primary only" if self.primary_packets else "secondary only"

    def as_dict(self) -> dict[str, Any]:
        f = self.flow
        return {
            "flow": str(f),
            "proto": f.proto,
            "src": f.src,
            "sport": f.sport,
            "dst": f.dst,
            "dport": f.dport,
            "status": self.status,
            "reason": self.reason,
            "offset": self.offset,
            "time": self.time,
            "primary_packets": self.primary_packets,
            "secondary_packets": self.secondary_packets,
        }


@dataclass
class ReplayReport:
    flows: list[FlowReport]
    checkpoints: int = 0
    flowless_requests: list[tuple[str, float]] = field(default_factory=list)
    primary_packets: int = 0
    secondary_packets: int = 0
    skipped_frames: int = 0  # not IP (ARP, LLDP, ...) or unreadable link headers
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def diverged(self) -> list[FlowReport]:
        return [f for f in self.flows if f.reason is not None]

    def as_dict(self) -> dict[str, Any]:
        by_reason: dict[str, int] = {}
        for f in self.diverged:
            assert f.reason is not None
            by_reason[f.reason] = by_reason.get(f.reason, 0) + 1
        return {
            "flows": [f.as_dict() for f in self.flows],
            "totals": {
                "flows": len(self.flows),
                "matched": sum(f.status == "matched" for f in self.flows),
                "diverged": len(self.diverged),
                "diverged_by_reason": by_reason,
                "checkpoints": self.checkpoints,
                "requests_without_flow": [
                    {"reason": r, "time": t} for r, t in self.flowless_requests
                ],
                "primary_packets": self.primary_packets,
                "secondary_packets": self.secondary_packets,
                "skipped_frames": self.skipped_frames,
            },
            "comparator": self.stats,
        }

    def text(self) -> str:
        rows = [("flow", "status", "reason", "offset", "time", "pvm", "svm")]
        for f in self.flows:
            rows.append(
                (
                    str(f.flow),
                    f.status,
                    f.reason or "",
                    "" if f.offset is None else str(f.offset),
                    "" if f.time is None else f"{f.time:.6f}",
                    str(f.primary_packets),
                    str(f.secondary_packets),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        t = self.as_dict()["totals"]
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(t["diverged_by_reason"].items()))
        lines.append(
            f"totals: {t['flows']} flows, {t['matched']} matched, {t['diverged']} diverged"
            + (f" ({reasons})" if reasons else "")
            + f"; {self.checkpoints} checkpoints; {self.primary_packets} primary and "
            f"{self.secondary_packets} secondary packets; {self.skipped_frames} non-IP frames"
        )
        for reason, when in self.flowless_requests:
            lines.append(f"checkpoint without a flow: {reason} at {when:.6f}")
        return "\n".join(lines)


# -- reading captures ----------------------------------------------------------------------
def read_capture(path: str) -> list[tuple[float, bytes | None]]:
    """(time, IP packet) for every frame; None for frames that carry no IP packet."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
            fh.seek(0)
            if magic == b"\x0a\x0d\x0d\x0a":
                reader: Any = dpkt.pcapng.Reader(fh)
            else:
                reader = dpkt.pcap.Reader(fh)
            dlt = reader.datalink()
            return [(float(ts), _ip_of(dlt, bytes(frame))) for ts, frame in reader]
    except OSError as e:
        raise ReplayError(f"cannot read {path}: {e.strerror or e}") from e
    except (ValueError, dpkt.dpkt.Error, struct.error) as e:
        raise ReplayError(f"{path} is not a readable pcap/pcapng capture: {e}") from e


def _ip_of(dlt: int, frame: bytes) -> bytes | None:
    if dlt == _DLT_EN10MB:
        off, etype = 12, 0
        while off + 2 <= len(frame):
            etype = int.from_bytes(frame[off : off + 2], "big")
            if etype not in _ETH_VLAN:
                break
            off += 4  # 802.1Q/802.1ad tag: strip it, compare what is inside
        return frame[off + 2 :] if etype in _ETH_IP else None
    if dlt in _DLT_RAW_ALIASES:
        return frame
    if dlt == _DLT_SLL:
        ok = len(frame) >= 16 and int.from_bytes(frame[14:16], "big") in _ETH_IP
        return frame[16:] if ok else None
    if dlt == _DLT_SLL2:
        ok = len(frame) >= 20 and int.from_bytes(frame[0:2], "big") in _ETH_IP
        return frame[20:] if ok else None
    if dlt in (_DLT_NULL, _DLT_LOOP):
        return frame[4:] if len(frame) > 4 and frame[4] >> 4 in (4, 6) else None
    raise ReplayError(f"unsupported link type {dlt} (want Ethernet, Linux cooked, raw IP)")


# -- sequence space alignment --------------------------------------------------------------
def _tcp_fields(pkt: bytes) -> tuple[bytes, int, int, int, int] | None:
    """(flow key, offset of the TCP header, seq, ack, flags) of a TCP packet."""
    kind, proto, addrs, l4, tot, _ = locate(pkt)
    if kind != L4 or proto != 6 or tot - l4 < 20:
        return None
    seq, ack = _TCP_SEQ_ACK.unpack_from(pkt, l4 + 4)
    return addrs + pkt[l4 : l4 + 4], l4, seq, ack, pkt[l4 + 13]


def _handshakes(pkts: list[tuple[float, bytes | None]]) -> dict[bytes, tuple[int, int | None]]:
    """Per flow, the first SYN's sequence number and (SYN-ACK) acknowledgement number."""
    out: dict[bytes, tuple[int, int | None]] = {}
    for _, pkt in pkts:
        fields = _tcp_fields(pkt) if pkt is not None else None
        if fields is not None and fields[4] & _SYN and fields[0] not in out:
            key, _, seq, ack, flags = fields
            out[key] = (seq, ack if flags & _ACK else None)
    return out


def _rewrite(pkt: bytes, shifts: dict[bytes, tuple[int, int]]) -> bytes:
    fields = _tcp_fields(pkt)
    if fields is None or fields[0] not in shifts:
        return pkt
    key, l4, seq, ack, _ = fields
    dseq, dack = shifts[key]
    out = bytearray(pkt)
    _TCP_SEQ_ACK.pack_into(out, l4 + 4, (seq - dseq) & 0xFFFFFFFF, (ack - dack) & 0xFFFFFFFF)
    return bytes(out)


# -- the replay ----------------------------------------------------------------------------
def replay(
    primary: list[tuple[float, bytes | None]],
    secondary: list[tuple[float, bytes | None]],
    config: CompareConfig | None = None,
    absolute_time: bool = False,
) -> ReplayReport:
    """Compare two captured outputs; times start at each capture's first packet unless
    ``absolute_time`` (for captures taken at the same time, e.g. from a running pair)."""
    cmp = Comparator(config)
    report = ReplayReport(flows=[])
    flows: dict[Flow, FlowReport] = {}
    done: set[Flow] = set()  # reported flows, no longer compared

    p_hs, s_hs = _handshakes(primary), _handshakes(secondary)
    shifts: dict[bytes, tuple[int, int]] = {}
    for key, (s_seq, s_ack) in s_hs.items():
        if key in p_hs:
            p_seq, p_ack = p_hs[key]
            dack = (s_ack - p_ack) if s_ack is not None and p_ack is not None else 0
            shifts[key] = (s_seq - p_seq, dack)

    events: list[tuple[float, int, int, bytes]] = []
    for side, pkts in ((Side.PRIMARY, primary), (Side.SECONDARY, secondary)):
        t0 = 0.0 if absolute_time or not pkts else pkts[0][0]
        for i, (ts, pkt) in enumerate(pkts):
            if pkt is None:
                report.skipped_frames += 1
                continue
            if side == Side.SECONDARY and shifts:
                pkt = _rewrite(pkt, shifts)
            events.append((ts - t0, int(side), i, pkt))
    events.sort(key=lambda e: (e[0], e[1], e[2]))

    wake: float | None = None

    def handle(cmds: list[Command], now: float) -> None:
        nonlocal wake
        for cmd in cmds:
            if isinstance(cmd, Wakeup):
                wake = cmd.at
            elif isinstance(cmd, RequestCheckpoint):
                _record(cmd, now)
                report.checkpoints += 1

    def _record(cmd: RequestCheckpoint, now: float) -> None:
        if cmd.flow is None or cmd.flow.proto == -1:
            report.flowless_requests.append((cmd.reason, now))
            return
        fr = flows.setdefault(cmd.flow, FlowReport(cmd.flow))
        if fr.reason is None:
            fr.reason, fr.offset, fr.time = cmd.reason, cmd.offset, now
        done.add(cmd.flow)

    for now, side_no, i, pkt in events:
        while wake is not None and wake <= now:
            at, wake = wake, None
            handle(cmp.tick(at), at)
        side = Side(side_no)
        flow = flow_of(pkt)
        if flow is not None:
            fr = flows.setdefault(flow, FlowReport(flow))
            if side == Side.PRIMARY:
                fr.primary_packets += 1
            else:
                fr.secondary_packets += 1
            if flow in done:
                continue
        if side == Side.PRIMARY:
            report.primary_packets += 1
        else:
            report.secondary_packets += 1
        handle(cmp.packet(side, i, pkt, now), now)
    # Let every packet still held time out: the SVM will produce nothing more.
    for _ in range(1_000_000):
        if wake is None:
            break
        at, wake = wake, None
        handle(cmp.tick(at), at)

    report.flows = sorted(
        flows.values(), key=lambda f: (f.time is None, f.time or 0.0, str(f.flow))
    )
    report.stats = cmp.stats.as_dict()
    return report


def replay_files(
    primary: str, secondary: str, config: CompareConfig | None = None, absolute_time: bool = False
) -> ReplayReport:
    return replay(read_capture(primary), read_capture(secondary), config, absolute_time)
