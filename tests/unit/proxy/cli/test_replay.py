"""``colo-proxy replay`` on pcaps written here (no root, no network)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import dpkt
import pytest

from colo_proxy.cli.main import main
from colo_proxy.cli.replay import ReplayError, read_capture, replay_files
from tests.support.packets import ACK, FIN, PSH, SYN, tcp

C_ISN = 4000


def eth(ip: bytes, vlan: int | None = None) -> bytes:
    macs = bytes(6) + bytes([2, 0, 0, 0, 0, 1])
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    etype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return macs + tag + struct.pack("!H", etype) + ip


def write(
    path: Path, frames: list[tuple[float, bytes]], linktype: int = dpkt.pcap.DLT_EN10MB
) -> str:
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=linktype)
        for ts, frame in frames:
            w.writepkt(frame, ts=ts)
    return str(path)


def server_output(
    isn: int, client_isn: int, chunks: list[bytes], t0: float, dport: int = 40000
) -> list[tuple[float, bytes]]:
    """What a server sends on one connection: SYN-ACK, the response in chunks, FIN."""
    out = [(t0, tcp(isn, client_isn + 1, SYN | ACK, dport=dport))]
    off = 0
    for i, chunk in enumerate(chunks):
        out.append(
            (
                t0 + 0.001 * (i + 1),
                tcp(isn + 1 + off, client_isn + 11, ACK | PSH, chunk, dport=dport),
            )
        )
        off += len(chunk)
    out.append((t0 + 0.01, tcp(isn + 1 + off, client_isn + 11, ACK | FIN, dport=dport)))
    return out


def test_two_runs_with_different_isns_and_segmentation_match(tmp_path: Path) -> None:
    body = bytes(range(256)) * 20
    p = server_output(1000, C_ISN, [body[:1448], body[1448:2896], body[2896:]], 100.0)
    s = server_output(777_777, C_ISN + 5000, [body[:500], body[500:]], 5000.0)
    # The secondary's capture has VLAN tags and an ARP frame; the primary is raw IP.
    s_frames = [(t, eth(ip, vlan=7)) for t, ip in s] + [
        (5000.02, bytes(12) + b"\x08\x06" + bytes(28))
    ]
    report = replay_files(
        write(tmp_path / "p.pcap", p, dpkt.pcap.DLT_RAW), write(tmp_path / "s.pcap", s_frames)
    )
    assert [f.status for f in report.flows] == ["matched"]
    assert report.diverged == [] and report.skipped_frames == 1
    assert report.stats["parse_errors"] == 0


def test_injected_difference_is_reported_with_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = b"A" * 3000
    bad = body[:2000] + b"B" + body[2001:]
    p = server_output(1000, C_ISN, [body[:1448], body[1448:2896], body[2896:]], 0.0)
    s = server_output(9, C_ISN, [bad[:1000], bad[1000:]], 0.0)
    ok_p = server_output(50, C_ISN, [b"same"], 0.0, dport=40001)
    ok_s = server_output(60, C_ISN, [b"sa", b"me"], 0.0, dport=40001)
    pp = write(tmp_path / "p.pcap", [(t, eth(x)) for t, x in sorted(p + ok_p)])
    sp = write(tmp_path / "s.pcap", [(t, eth(x)) for t, x in sorted(s + ok_s)])
    assert main(["replay", "--primary", pp, "--secondary", sp, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    diverged = [f for f in out["flows"] if f["status"] == "diverged"]
    assert [(f["dport"], f["reason"], f["offset"]) for f in diverged] == [(40000, "payload", 2000)]
    assert out["totals"]["matched"] == 1 and out["totals"]["checkpoints"] == 1
    assert main(["replay", "-p", pp, "-s", sp]) == 1
    text = capsys.readouterr().out
    assert "diverged  payload  2000" in text and "totals: 2 flows, 1 matched, 1 diverged" in text


def test_missing_secondary_output_times_out(tmp_path: Path) -> None:
    p = server_output(1000, C_ISN, [b"hello"], 0.0)
    s = p[:1]  # the secondary answered the handshake and then said nothing
    report = replay_files(
        write(tmp_path / "p.pcap", [(t, eth(x)) for t, x in p]),
        write(tmp_path / "s.pcap", [(t, eth(x)) for t, x in s]),
    )
    assert [(f.reason, f.offset) for f in report.flows] == [("timeout", None)]


def test_bad_files_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture")
    with pytest.raises(ReplayError, match="not a readable pcap"):
        read_capture(str(junk))
    assert main(["replay", "-p", str(junk), "-s", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("colo-proxy replay: error: ") and err.count("\n") == 1
    assert main(["replay", "-p", str(tmp_path / "nope"), "-s", str(junk)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--help"])
    assert exc.value.code == 0
    assert "examples:" in capsys.readouterr().out
