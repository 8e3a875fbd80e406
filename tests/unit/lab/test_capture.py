"""colo_lab.capture's parts that run without root: the end condition and its arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from colo_lab import capture
from colo_lab.lab import Lab

VM = "10.99.0.10"
C = "10.99.0.2"


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def seg(t: float, src: str, sport: int, dst: str, dport: int, flags: str) -> str:
    return f"{t:.6f} IP {src}.{sport} > {dst}.{dport}: Flags [{flags}], seq 1, win 502, length 0"


def test_the_last_request_is_seen_by_its_syn_only(tmp_path: Path) -> None:
    cap = write(tmp_path / "client.txt",
                "tcpdump: listening on eth0",
                seg(1.0, C, 40000, VM, 80, "S"),
                seg(1.1, VM, 80, C, 40001, "S."),  # the server's SYN-ACK to another port
                seg(1.2, C, 40002, VM, 80, "P."))  # data, not a SYN
    assert capture.syn_seen(cap, 40000)
    assert not capture.syn_seen(cap, 40001)
    assert not capture.syn_seen(cap, 40002)
    assert not capture.syn_seen(cap, 40000, server="10.99.0.11")
    assert not capture.syn_seen(write(tmp_path / "empty.txt"), 40000)


@pytest.mark.parametrize("names", [("client", "tap0"), ("pvm", "svm"), ()])
def test_unknown_points_or_no_client_point_are_refused_before_any_capture(
        names: tuple[str, ...], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="client among them"):
        with capture.tcpdump(Lab("unitcap"), tmp_path / "out", names):
            pass
    assert not (tmp_path / "out").exists()
