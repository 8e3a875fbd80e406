"""Configuration of the comparator: timeouts, bounds, policies, pass-through flows."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from colo_proxy.compare.events import Flow

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Policy(enum.StrEnum):
    """What to do with traffic the comparator does not compare as TCP/UDP/ICMP.

    COMPARE: per datagram, the whole L3 payload (safe and usually quiet).
    PASS: release PVM packets and drop SVM packets at once, counted (for known-noisy traffic).
    CHECKPOINT: hold the PVM packet, request a checkpoint and release it after the checkpoint
    (always safe, costly if frequent).
    """

    COMPARE = "compare"
    PASS = "pass"
    CHECKPOINT = "checkpoint"


@dataclass(frozen=True, slots=True)
class FlowMatch:
    """One allow-list entry: flows matching every given field are not compared.

    ``src``/``sport`` are the VM's side (VM output is what the comparator sees), ``dst`` and
    ``dport`` the peer's. A field left at None matches anything.
    """

    proto: int | None = None
    src: IPNetwork | None = None
    sport: int | None = None
    dst: IPNetwork | None = None
    dport: int | None = None

    def matches(self, flow: Flow) -> bool:
        if self.proto is not None and flow.proto != self.proto:
            return False
        if self.sport is not None and flow.sport != self.sport:
            return False
        if self.dport is not None and flow.dport != self.dport:
            return False
        if self.src is not None and not _in(flow.src, self.src):
            return False
        return self.dst is None or _in(flow.dst, self.dst)


def _in(addr: str, net: IPNetwork) -> bool:
    try:
        return ipaddress.ip_address(addr) in net
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class CompareConfig:
    """Tunables; every default is explained in docs/COMPARE.md."""

    # A PVM packet held this long (seconds) without its SVM twin requests a checkpoint.
    compare_timeout: float = 1.0
    # Bounds on held data (PVM + SVM, payload bytes and packets); reaching one requests a
    # checkpoint "queue_full".
    max_flow_packets: int = 2048
    max_flow_bytes: int = 4 * 1024 * 1024
    max_total_packets: int = 65536
    max_total_bytes: int = 128 * 1024 * 1024
    # UDP/ICMP/other datagrams may arrive reordered by up to this many per side.
    datagram_window: int = 16
    # Flow table: idle flows are forgotten after idle_timeout, closed ones after
    # closed_timeout; at max_flows the least recently used idle flow goes first.
    idle_timeout: float = 300.0
    closed_timeout: float = 10.0
    max_flows: int = 262144
    other_policy: Policy = Policy.COMPARE
    fragment_policy: Policy = Policy.COMPARE
    unparseable_policy: Policy = Policy.CHECKPOINT
    pass_through: tuple[FlowMatch, ...] = ()
    # A held GSO super-packet (copy=SUPER) whose bytes the SVM has not all sent after this
    # long (seconds) is sent back to be segmented (Resegment), with every packet held
    # behind it; 0: never (the adapter has no segmenting queue). See docs/PROXY.md.
    resegment_after: float = 0.01

    def __post_init__(self) -> None:
        for name in ("compare_timeout", "idle_timeout", "closed_timeout"):
            # Written so that NaN fails too; infinity would hold output forever.
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(
                    f"{name} must be a finite number of seconds > 0, got {getattr(self, name)!r}")
        if not 0 <= self.resegment_after < float("inf"):
            raise ValueError("resegment_after must be a finite number of seconds >= 0 "
                             f"(0: never), got {self.resegment_after!r}")
        for name in (
            "max_flow_packets",
            "max_flow_bytes",
            "max_total_packets",
            "max_total_bytes",
            "datagram_window",
            "max_flows",
        ):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("other_policy", "fragment_policy", "unparseable_policy"):
            Policy(getattr(self, name))  # raises ValueError for an unknown policy
