"""Which frames colo_lab.mac_sampler counts for a port."""

from __future__ import annotations

from colo_lab.mac_sampler import PACKET_OUTGOING, counts_for

MAC = bytes.fromhex("525400c01001")
FRAME = bytes.fromhex("ffffffffffff") + MAC + b"\x08\x00" + b"x" * 50
OTHER = bytes.fromhex("ffffffffffff" + "525400aaaaaa") + b"\x08\x00" + b"x" * 50


def test_only_the_ports_own_received_frames_from_the_mac_count() -> None:
    assert counts_for("p-sec", ("p-sec", 3, 0, 1, b""), FRAME, MAC)
    assert not counts_for("p-sec", ("p-pri", 3, 0, 1, b""), FRAME, MAC)
    assert not counts_for("p-sec", ("p-sec", 3, PACKET_OUTGOING, 1, b""), FRAME, MAC)
    assert not counts_for("p-sec", ("p-sec", 3, 0, 1, b""), OTHER, MAC)
