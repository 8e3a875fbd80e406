"""Drive arguments, [[disks]] config, image preparation and comparison (no QEMU, no root)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from colo_lab.wait import wait_until
from colo_orch.backends.qemu.blk.images import ImageError, compare, create_raw, parse_size, prepare
from colo_orch.backends.qemu.blk.spec import drive_args, uri_host
from colo_orch.cli.disk import main as disk_main
from colo_orch.core.config import ConfigError, parse
from colo_orch.core.disks import Disk

D = Disk("disk0", "/i/a,b.raw", "/i/act.qcow2", "/i/hid.qcow2")
BASE = """name = "web"
role = "primary"
qmp = "/q"
qmp_events = "/e"
heartbeat_listen = "10.0.0.1:7410"
peer_heartbeat = "10.0.0.2:7410"
incoming_uri = "tcp:10.0.0.1:4444"
peer_incoming_uri = "tcp:10.0.0.2:4444"
heartbeat_key_file = "/etc/colo/web.key"
on_fence = ["true"]
"""
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="no qemu-img")


def test_primary_args_are_a_quorum_over_the_image() -> None:
    assert drive_args([D], secondary=False) == [
        "-drive", "if=none,id=colo-disk0,driver=quorum,read-pattern=fifo,vote-threshold=1,"
        "children.0.driver=raw,children.0.file.filename=/i/a,,b.raw",
        "-device", "virtio-blk-pci,drive=colo-disk0,id=disk0-dev"]


def test_secondary_args_chain_active_hidden_parent_and_share_the_device() -> None:
    argv = drive_args([D], secondary=True)
    assert argv[1] == "if=none,id=disk0-parent,driver=raw,file.filename=/i/a,,b.raw"
    assert "mode=secondary,top-id=colo-disk0" in argv[3]
    assert "file.file.filename=/i/act.qcow2" in argv[3]
    assert "file.backing.file.filename=/i/hid.qcow2,file.backing.backing=disk0-parent" in argv[3]
    assert argv[5].endswith("children.0=disk0-childs")
    assert argv[-2:] == drive_args([D], secondary=False)[-2:]


def test_uri_host() -> None:
    assert uri_host("tcp:10.99.1.2:4444") == "10.99.1.2"
    assert uri_host("tcp:[fd00::2]:4444") == "fd00::2"


def test_config_disks_parse_and_default_id() -> None:
    cfg = parse(BASE + '[[disks]]\nimage = "/a.raw"\nactive = "/a1.qcow2"\nhidden = "/a2.qcow2"\n')
    assert cfg.disks == (Disk("disk0", "/a.raw", "/a1.qcow2", "/a2.qcow2"),)
    assert cfg.nbd_port == 10809
    assert parse(BASE).disks == ()


@pytest.mark.parametrize(("disk", "words"), [
    ('image = "a.raw"\nactive = "/b"\nhidden = "/c"', "absolute path"),
    ('image = "/a"\nactive = "/a"\nhidden = "/c"', "three different files"),
    ('image = "/a"\nactive = "/b"', "hidden: missing"),
    ('image = "/a"\nactive = "/b"\nhidden = "/c"\nsize = 3', "unknown field"),
    ('id = "Bad-Id"\nimage = "/a"\nactive = "/b"\nhidden = "/c"', "not a disk id"),
])
def test_config_disk_errors_name_the_field(disk: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse(BASE + "[[disks]]\n" + disk + "\n")


def test_parse_size() -> None:
    assert parse_size("64M") == 64 << 20 and parse_size("2GiB") == 2 << 30
    with pytest.raises(ImageError):
        parse_size("lots")


def _img(path: Path, size: int, patches: dict[int, bytes] | None = None) -> str:
    create_raw(str(path), size)
    with open(path, "r+b") as f:
        for off, data in (patches or {}).items():
            f.seek(off)
            f.write(data)
    return str(path)


def test_compare_equal_then_first_differing_range(tmp_path: Path) -> None:
    a = _img(tmp_path / "a", 4 << 20, {100: b"x"})
    b = _img(tmp_path / "b", 4 << 20, {100: b"x"})
    assert compare(a, b).equal
    with open(b, "r+b") as f:
        f.seek((2 << 20) + 5)
        f.write(b"corrupt")
    c = compare(a, b)
    assert c.first_diff == 2
    assert c.sentence() == "differ: first differing range #2 (bytes 2097152-3145727)"


def test_compare_refuses_mismatched_sizes_and_missing_images(tmp_path: Path) -> None:
    a, b = _img(tmp_path / "a", 1 << 20), _img(tmp_path / "b", 2 << 20)
    with pytest.raises(ImageError, match="sizes differ"):
        compare(a, b)
    with pytest.raises(ImageError, match="missing"):
        compare(a, str(tmp_path / "none"))


def test_verify_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _img(tmp_path / "a", 2 << 20)
    b = _img(tmp_path / "b", 2 << 20, {(1 << 20) + 7: b"!"})
    assert disk_main(["verify", a, a]) == 0
    assert disk_main(["verify", a, b, "--settle", "0.1"]) == 1
    assert "range #1" in capsys.readouterr().out
    assert disk_main(["verify", a, str(tmp_path / "gone")]) == 2
    assert "missing" in capsys.readouterr().err


def test_verify_under_a_steady_stream_of_replicated_writes_is_equal(tmp_path: Path) -> None:
    # Replication as the guest sees it: each write lands on the primary's image, then on
    # the secondary's, back to back, with no pause between writes to the same range.
    a = _img(tmp_path / "a", 8 << 20)
    b = _img(tmp_path / "b", 8 << 20)
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        with open(a, "r+b") as fa, open(b, "r+b") as fb:
            while not stop.is_set():
                rec = writes[0].to_bytes(8, "big") * 64
                for f in (fa, fb):
                    f.seek(8192)
                    f.write(rec)
                    f.flush()
                writes[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        # The stream runs before verify starts and until it has returned.
        wait_until(lambda: writes[0] >= 10, 30, "ten replicated writes", every=0.01)
        assert disk_main(["verify", a, b, "--settle", "5"]) == 0
        during = writes[0]
        wait_until(lambda: writes[0] > during, 30, "the writes to go on", every=0.01)
    finally:
        stop.set()
        t.join()
    # A write that reached only the primary is a real difference, in its range.
    with open(a, "r+b") as fa:
        fa.seek((5 << 20) + 3)
        fa.write(b"lost")
    assert disk_main(["verify", a, b, "--settle", "0.2"]) == 1


@needs_qemu_img
def test_prepare_copies_creates_layers_and_checks_sizes(tmp_path: Path) -> None:
    src = _img(tmp_path / "pri", 2 << 20, {4096: b"data"})
    sec = str(tmp_path / "sec")
    done = prepare(sec, str(tmp_path / "act"), str(tmp_path / "hid"), copy_from=src, primary=src)
    assert done[0].startswith("copied") and "equal" in done[1]
    assert compare(src, sec).equal
    other = _img(tmp_path / "small", 1 << 20)
    with pytest.raises(ImageError, match="sizes"):
        prepare(other, str(tmp_path / "a2"), str(tmp_path / "h2"), copy_from=src)
    with pytest.raises(ImageError, match="missing"):
        prepare(str(tmp_path / "nothing"), str(tmp_path / "a3"), str(tmp_path / "h3"))
