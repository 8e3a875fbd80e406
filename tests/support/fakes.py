"""In-memory stand-ins for the primary proxy's two inputs: the NFQUEUE that holds the PVM's
packets and the packet socket that carries the SVM's frames."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from colo_proxy.kernel.packet_socket import Frame
from colo_proxy.wire.nfqueue_msgs import QueuedPacket


def _ethertype(packet: bytes) -> int:
    return 0x86DD if packet[:1] and packet[0] >> 4 == 6 else 0x0800


def queued(packet_id: int, packet: bytes, gso: bool = False) -> QueuedPacket:
    """A packet as NFQUEUE hands it over: whole, not GSO unless told, no devices."""
    return QueuedPacket(packet_id, _ethertype(packet), packet, gso, len(packet), 0, 0)


def frame(packet: bytes) -> Frame:
    """A frame as the SVM's packet socket hands it over (from the L3 header on)."""
    return Frame(_ethertype(packet), packet)


@dataclass
class FakeQueue:
    """Stands in for the NFQUEUE: packets pushed by the test, verdicts recorded."""

    incoming: list[QueuedPacket] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    held: set[int] = field(default_factory=set)
    requeued: list[int] = field(default_factory=list)  # sent on to the segmenting queue
    enobufs: int = 0

    def push(self, packet_id: int, packet: bytes, gso: bool = False) -> None:
        self.incoming.append(queued(packet_id, packet, gso))

    def receive(self, limit: int = 256) -> list[QueuedPacket]:
        out, self.incoming = self.incoming[:limit], self.incoming[limit:]
        self.held |= {p.packet_id for p in out}
        return out

    def decide(self, accept: Iterable[int], drop: Iterable[int] = (),
               requeue: Iterable[int] = ()) -> None:
        accept, drop, requeue = list(accept), list(drop), list(requeue)
        self.accepted += accept
        self.dropped += drop
        self.requeued += requeue
        self.held -= {*accept, *drop, *requeue}

    def accept_all(self) -> None:
        self.decide(sorted(self.held))

    def drop_all(self) -> None:
        self.decide((), sorted(self.held))


@dataclass
class FakeSource:
    """Stands in for the SVM's packet socket: frames pushed by the test."""

    incoming: list[Frame] = field(default_factory=list)

    def push(self, packet: bytes) -> None:
        self.incoming.append(frame(packet))

    def receive(self, limit: int = 256) -> list[Frame]:
        out, self.incoming = self.incoming[:limit], self.incoming[limit:]
        return out
