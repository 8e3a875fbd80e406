"""One connection's sequence and timestamp offsets between the PVM's and the SVM's spaces.

The record the secondary's BPF offset map holds, the handover file carries across a role
swap and the carry announcement repeats on the forward link: data, so it lives with the
codecs, and the kernel adapter fills it from the map.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Offset:
    vm_ip: str  # dotted IPv4 or compressed IPv6 (the map holds IPv4 v4-mapped)
    vm_port: int
    peer_ip: str
    peer_port: int
    pvm_isn: int
    svm_isn: int
    offset: int
    complete: bool
    ts_offset: int | None = None  # TSval offset; None unless both handshakes had timestamps

    @property
    def vm(self) -> str:
        """`addr:port`, the address bracketed when IPv6 (`[fd99::10]:80`)."""
        return endpoint(self.vm_ip, self.vm_port)

    @property
    def peer(self) -> str:
        return endpoint(self.peer_ip, self.peer_port)

    @property
    def shifts(self) -> bool:
        """Both handshakes seen and the spaces differ: the flow needs rewriting to move."""
        return self.complete and bool(self.offset or self.ts_offset)


def endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
