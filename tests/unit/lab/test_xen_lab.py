"""A nested Xen host's QEMU command line and the console's reply parsing (no QEMU)."""

from __future__ import annotations

import dataclasses
import json
import re
import resource
import select
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from colo_lab import kernel_symbols, xen_lab
from colo_lab.errors import LabError
from colo_lab.lab import VM_MAC
from colo_lab.qemu_build import FIRMWARE_ARGS
from colo_lab.wait import wait_until
from colo_lab.xen_build import XenLab
from colo_orch.backends.xen import xlu

# Any QEMU that starts does for the probe's test: Debian's, not the lab's build.
QEMU = "qemu-system-x86_64"
# What the dom0's console gave for a command (run dir of a real run, trimmed): the typed
# line echoed, the output, the marker line, CR CR LF line ends, the next prompt.
CONSOLE = (
    "# xl info | head -2 2>&1; printf '%s-%s\\n' colo-end-42 $?\r\r\n"
    "host                   : xen-pri\r\r\n"
    "release                : 6.1.0-50-amd64\r\r\n"
    "colo-end-42-0\r\r\n# "
)


def _host(tmp_path: Path, role: str = "primary") -> xen_lab.XenHost:
    c = tmp_path / "cache"
    build = XenLab(dir=c, hypervisor=c / "xen.elf", kernel=c / "vmlinuz",
                   initrd=c / "initrd.img", rootfs=c / "dom0.img", libxl=c / "libxl.so",
                   device_model=c / "dm")
    return xen_lab.XenHost(role, "colo-t-pri", tmp_path / "run", build,
                           qemu=c / "qemu-system-x86_64")


def test_a_reply_after_xen_s_lines_starts_after_the_echo_and_keeps_xl_dmesg_s() -> None:
    # A dump of Xen's before the echo (asked while the dom0 was silent); `xl dmesg`'s
    # own lines in the output look like Xen's and are the command's.
    said = ("(XEN) [  590.1] 'r' pressed -> dumping run queues\r\n(XEN) [  590.2] CPUs info:\r\n"
            "xl dmesg | tail -n 1 2>&1; printf '%s-%s\\n' colo-end-42 $?\r\n"
            "(XEN) [  6.7] Freed 668kB init memory\r\ncolo-end-42-0\r\n# ")
    assert xen_lab._after(said, "colo-end-42") == ("0", "(XEN) [  6.7] Freed 668kB init memory\n")


def test_console_reply_is_the_output_between_echo_and_marker() -> None:
    assert xen_lab._after(CONSOLE, "colo-end-42") == (
        "0", "host                   : xen-pri\nrelease                : 6.1.0-50-amd64\n")
    # The echo holds the marker followed by a space, never by '-': not yet an answer.
    assert xen_lab._after(CONSOLE.split("\r\r\n")[0], "colo-end-42") is None
    assert xen_lab._after("colo-end-42-1", "colo-end-42") is None  # the line is not whole


def test_a_typed_chunk_counts_as_echoed_only_once_its_bytes_came_back() -> None:
    part = b"cp --sparse=always /opt/colo/xen"
    # Run AY: a job's notice came first; as many bytes as typed, but not the echo.
    notice = bytearray(b"[1] + Done                       setsid python3 -m colo_orch.cli"
                       b".orch run 1>/tmp/orch.log 2>&1 0</dev/null\r\n")
    assert len(notice) >= len(part) and not xen_lab._subsequence(part, notice, 0)
    # The echo, with a line of Xen's in the middle of it, and after what came before.
    got = bytearray(b"old cp --sparse") + notice + b"=always /opt/(XEN) d1 up\r\ncolo/xen"
    assert xen_lab._subsequence(part, got, 4) and not xen_lab._subsequence(part, got, 5)


def test_a_xen_console_line_after_the_status_is_not_part_of_it() -> None:
    # Run H: Xen printed a guest's line right after the marker's status.
    got = xen_lab._after("kill 1\r\ncolo-end-42-0(d1) Allocated Xen hypercall page\r\n",
                         "colo-end-42")
    assert got is not None and got[0] == "0"
    assert xen_lab._after("x\r\ncolo-end-42-17\r\n", "colo-end-42") == ("17", "")


def test_a_thread_s_name_may_hold_spaces_and_its_cpu_time_is_user_plus_system() -> None:
    stat = "4242 (CPU 1/TCG) R 1 4240 4240 0 -1 4194368 9 0 0 0 1234 56 0 0 20 0 4 0 77"
    assert xen_lab.parse_task_stat(stat) == ("CPU 1/TCG", 1290)
    name, ticks = xen_lab.parse_task_stat(Path("/proc/self/stat").read_text())
    assert name == Path("/proc/self/comm").read_text().strip() and ticks >= 0


@pytest.mark.skipif(shutil.which(QEMU) is None, reason="no qemu-system-x86_64")
def test_a_silent_host_s_qemu_is_probed_for_its_threads_and_vcpu_registers(
        tmp_path: Path) -> None:
    # A real QEMU, paused before its first instruction (-S): both vCPUs at the reset
    # vector, its monitor on the socket that argv() gives the Xen hosts.
    host = _host(tmp_path)
    host.run_dir.mkdir(parents=True)
    monitor = host.argv()[host.argv().index("-monitor") + 1]
    qemu = subprocess.Popen([QEMU, "-accel", "tcg", "-machine", "q35", "-smp", "2",
                             "-name", host.argv()[host.argv().index("-name") + 1],
                             "-S", "-nodefaults", "-display", "none", "-monitor", monitor,
                             "-pidfile", str(host.pid_path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        # The monitor answers once the main loop runs, the vCPU threads made (the socket
        # and the pid file come before them).
        wait_until(lambda: "paused" in xen_lab._monitor(host.monitor_path, "info status"),
                   30.0, "QEMU's monitor to answer")
        said = host._probe_qemu(span=0.2)
    finally:
        qemu.kill()
        qemu.wait()
    assert "CPU 0/TCG" in said and "CPU 1/TCG" in said
    # The boot CPU at the reset vector; the other waits halted for its start-up IPI.
    assert "vCPU RIPs 0000fff0, 0000fff0, halted 0, 1" in said
    hang = host.hang_path.read_text()
    assert "CS =f000" in hang
    up = float(re.search(r"QEMU up ([0-9.]+) s\)", hang).group(1))  # type: ignore[union-attr]
    assert 0.0 <= up < 60.0, hang[:200]


def test_a_command_with_cores_runs_with_no_core_size_limit() -> None:
    # Started with cores off (soft limit 0), as the dom0's programs are by default.
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    if hard != resource.RLIM_INFINITY:
        pytest.skip("the hard core size limit here forbids raising it")
    limits = subprocess.run(["sh", "-c", xen_lab.with_cores("cat /proc/self/limits")],
                            capture_output=True, text=True, check=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE,
                                                                  (0, hard))).stdout
    assert re.search(r"Max core file size\s+unlimited", limits), limits


def test_a_monitor_that_is_not_there_is_said_so(tmp_path: Path) -> None:
    assert "monitor did not answer" in xen_lab._monitor(tmp_path / "none", "info cpus", 1.0)


def test_a_host_runs_the_lab_s_qemu_build_with_debian_s_firmware(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not Debian's qemu-system-x86_64 from PATH: its SVM delivers an injected interrupt
    # twice (patches/qemu-7.2-tcg-svm-vmrun.patch). The build has no firmware of its own.
    build = tmp_path / "qemu-lab" / "qemu-system-x86_64"
    monkeypatch.setattr(xen_lab, "qemu_binary", lambda: build)
    host = dataclasses.replace(_host(tmp_path), qemu=None)
    argv = host.argv()
    assert argv[0] == str(build)
    assert tuple(argv[1:1 + len(FIRMWARE_ARGS)]) == FIRMWARE_ARGS


def test_argv_boots_xen_with_the_dom0_as_a_multiboot_module(tmp_path: Path) -> None:
    argv = _host(tmp_path).argv()
    assert argv[argv.index("-kernel") + 1].endswith("xen.elf")
    assert "smap=0 smep=0" in argv[argv.index("-append") + 1]
    kernel, initrd = argv[argv.index("-initrd") + 1].split(",")
    assert kernel.split()[0].endswith("vmlinuz") and initrd.endswith("initrd.img")
    assert "net.ifnames=0" in kernel.split() and "colo.ip.eth2=10.99.1.11/24" in kernel.split()
    assert not [a for a in kernel.split() if a.startswith("colo.route=")]


def test_a_host_with_a_gateway_routes_its_dom0_to_the_etcd_cluster(tmp_path: Path) -> None:
    x = dataclasses.replace(_host(tmp_path), gateway="10.99.1.1")
    kernel = x.argv()[x.argv().index("-initrd") + 1].split(",")[0]
    assert "colo.route=10.99.2.0/24:10.99.1.1" in kernel.split()


def test_each_nic_has_its_tap_and_a_mac_of_its_own(tmp_path: Path) -> None:
    pri, sec = _host(tmp_path).argv(), _host(tmp_path, "secondary").argv()
    nets = [a for a in pri if a.startswith("tap,")]
    assert [n.split("ifname=")[1].split(",")[0] for n in nets] == list(xen_lab.NICS)
    macs = [a.split("mac=")[1] for argv in (pri, sec) for a in argv if "mac=" in a]
    assert len(macs) == 6 and len(set(macs)) == 6


@pytest.mark.skipif(not xlu.available(), reason="libxlutil not here (apt-get install libxen-dev)")
def test_service_domain_config_is_what_xl_parses() -> None:
    # The config goes to the dom0 as a printf format: its \n are newlines there.
    cfg = xen_lab.service_cfg().replace("\\n", "\n")
    assert cfg.count("\n") == 12 and "'" not in cfg  # one line each; safe in '...'
    # No emulated VGA (the guest's console is its serial port).
    assert 'vga = "none"' in cfg.splitlines()
    parsed = xlu.parse_config(cfg)
    # The first (only) NIC names the dom0's libxl bridge, as `xl remus -c -p` needs.
    assert parsed["vif"] == [f"mac={VM_MAC},bridge=xenbr0,model=virtio-net-pci,"
                             "colo_checkpoint_host=127.0.0.1,colo_checkpoint_port=9911"]
    assert parsed["disk"] == []
    # With the proxy its NIC is named, so its tap is the proxy's `colo0-emu`.
    named = xlu.parse_config(xen_lab.service_cfg("colo0").replace("\\n", "\n"))
    assert named["vif"] == [f"mac={VM_MAC},bridge=xenbr0,model=virtio-net-pci,vifname=colo0,"
                            "colo_checkpoint_host=127.0.0.1,colo_checkpoint_port=9911"]


def test_with_a_disk_the_domain_has_libxls_colo_disk_and_the_guest_uses_it() -> None:
    cfg = xen_lab.service_cfg("colo0", disk=True).replace("\\n", "\n")
    assert cfg.count("\n") == 13 and "'" not in cfg
    [spec] = xlu.parse_config(cfg)["disk"]
    assert xlu.parse_disk(spec) == {
        "vdev": "hda", "target": xen_lab.COLO_DISK_IMAGE, "format": "raw", "readwrite": "1",
        "colo": "1", "colo-host": xen_lab.DOM0_CTL_IP["secondary"],
        "colo-port": str(xen_lab.COLO_DISK_PORT), "colo-export": xen_lab.COLO_DISK_EXPORT,
        "active-disk": "/var/lib/colo-disk/active.qcow2",
        "hidden-disk": "/var/lib/colo-disk/hidden.qcow2"}
    # An emulated IDE disk: the guest's init loads ata_piix and keeps its store there.
    assert " colo.disk=sda " in cfg


@pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("mkfs.ext4") is None,
                    reason="needs qemu-img (qemu-utils) and mkfs.ext4")
def test_the_disk_is_ext4_and_the_overlays_empty_qcow2_as_large(tmp_path: Path) -> None:
    xen_lab.write_colo_disk(tmp_path)
    image = tmp_path / xen_lab.OVERLAY_DIR / "disk.img"
    assert image.stat().st_size == xen_lab.COLO_DISK_MB << 20
    assert image.stat().st_blocks * 512 < 4 << 20  # sparse: it fits on the source disk
    assert image.read_bytes()[1024 + 56:1024 + 58] == b"\x53\xef"  # ext2/3/4 magic
    for name in xen_lab.COLO_DISK_OVERLAYS:
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "--output=json", str(tmp_path / xen_lab.OVERLAY_DIR / name)],
            capture_output=True, text=True, check=True).stdout)
        assert info["format"] == "qcow2"
        assert info["virtual-size"] == xen_lab.COLO_DISK_MB << 20
        assert "backing-filename" not in info  # libxl's command line gives the backing


def test_the_guest_disk_stays_vdb_with_the_source_disk_after_it(tmp_path: Path) -> None:
    # start_service mounts /dev/vdb as the guest's disk; the dom0 finds the source by label.
    host = dataclasses.replace(_host(tmp_path), guest_disk=tmp_path / "guest.img",
                               source_disk=tmp_path / "src.img")
    argv = host.argv()
    drives = [argv[i + 1].split(",")[0] for i, a in enumerate(argv) if a == "-drive"]
    assert drives == [f"file={host.disk}", f"file={tmp_path / 'guest.img'}",
                      f"file={tmp_path / 'src.img'}"]


def _ext4_file(image: Path, path: str) -> bytes:
    return subprocess.run(["debugfs", "-R", f"cat /{path}", str(image)], capture_output=True,
                          check=True, timeout=60).stdout


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
                    reason="e2fsprogs not here")
def test_the_source_disk_holds_the_packages_and_the_digest_of_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = SimpleNamespace(run_dir=tmp_path)
    image = xen_lab.make_source_disk(lab)  # type: ignore[arg-type]
    bridge = "colo_orch/backends/xen/libxl/__main__.py"
    root = Path(xen_lab.__file__).resolve().parents[1]
    assert _ext4_file(image, bridge) == (root / bridge).read_bytes()
    assert _ext4_file(image, "colo_lab/xen_proxy.py") == (root / "colo_lab/xen_proxy.py").read_bytes()
    label = subprocess.run(["blkid", "-s", "LABEL", "-o", "value", str(image)],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert label == "colo-src"
    digest = _ext4_file(image, "SOURCE").decode().strip()
    # The same sources give the same digest; any source change gives another.
    xen_lab.make_source_disk(lab)  # type: ignore[arg-type]
    assert _ext4_file(image, "SOURCE").decode().strip() == digest
    fake = tmp_path / "tree"
    for package in xen_lab.SOURCE_PACKAGES:
        shutil.copytree(root / package, fake / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (fake / "colo_lab" / "added.py").write_text("# a change\n")
    monkeypatch.setattr(xen_lab, "PACKAGE_DIR", fake / "colo_lab")
    xen_lab.make_source_disk(lab)  # type: ignore[arg-type]
    assert _ext4_file(image, "SOURCE").decode().strip() != digest


# A reply to `grep -a 'diverge' /tmp/colo.log` before the line was written (run BE): only
# Xen's lines of a checkpoint, which the test took for grep's output.
XEN_NOISE = ("(XEN) [  167.843326] HVM d1v0 save: CPU\n"
             "(XEN) [  167.850122] HVM d1v0 save: CPU_MSR\n")


def test_xen_lines_in_a_grep_reply_are_not_its_matches() -> None:
    assert xen_lab.grep_lines(XEN_NOISE, "diverge") == ""
    got = xen_lab.grep_lines(XEN_NOISE + "diverge: released by checkpoint 12\n", "diverge")
    assert got == "diverge: released by checkpoint 12\n"
    said = ("xl: COLO Failover\n" + XEN_NOISE + "[ 9.1] took over: SVM running\n")
    assert xen_lab.grep_lines(said, "took over:\\|COLO Failover") == (
        "xl: COLO Failover\n[ 9.1] took over: SVM running\n")


def test_xen_lines_in_a_grep_count_reply_are_not_its_count() -> None:
    assert xen_lab.grep_count(XEN_NOISE + "13\n") == 13
    assert xen_lab.grep_count(XEN_NOISE) == 0
    assert xen_lab.grep_count("0\n") == 0


def _slow_dom0(path: Path, delay: float) -> threading.Thread:
    """A dom0's console on `path` that is silent for `delay` seconds, then echoes what was
    typed and answers each line with 'hello' and its marker's status 0."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            quiet_until = time.monotonic() + delay
            line = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                time.sleep(max(0.0, quiet_until - time.monotonic()))
                try:
                    line = _echo_and_answer(conn, data, line)
                except OSError:  # the console gave up on us first (broken pipe)
                    return

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def _echo_and_answer(conn: socket.socket, data: bytes, line: bytes) -> bytes:
    """A dom0 shell's side of what was typed: the tty's echo, and for each whole line
    'hello' and its marker's status 0. Returns the line typed so far."""
    conn.sendall(data)
    line += data
    if line.endswith(b"\n"):
        mark = line.split(b"' ")[-1].split(b" ")[0]
        conn.sendall(b"hello\r\n" + mark + b"-0\r\n# ")
        return b""
    return line


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Why Xen was asked each time (no Xen here), the first ask due at 0.2 s."""
    taken: list[str] = []
    monkeypatch.setattr(xen_lab, "ECHO_PROBE_AFTER_S", 0.2)

    def ask(self: Any, s: Any, got: Any, read: Any, why: str = "silent console") -> str:
        taken.append(why)
        return "Xen asked"

    monkeypatch.setattr(xen_lab.XenHost, "_ask_xen", ask)
    return taken


def test_a_console_silent_past_the_probe_time_asks_xen_once_and_still_answers(
        tmp_path: Path, probes: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    host = _host(tmp_path)
    host.run_dir.mkdir(parents=True)
    t = _slow_dom0(host.console_path, delay=0.8)
    assert host.console("echo hello", timeout=10) == "hello\n"
    t.join(5)
    # Runs BP and BR: the dom0 came back by itself; what Xen said while it was silent is
    # kept (the deadline's dumps came after it was back).
    assert probes == ["no echo for 0 s"]
    assert "xen-pri's console to echo what was typed: none for 0 s; Xen asked" in (
        capsys.readouterr().out)


def test_a_console_silent_to_the_end_asks_xen_again_at_the_deadline(
        tmp_path: Path, probes: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host(tmp_path)
    host.run_dir.mkdir(parents=True)
    monkeypatch.setattr(xen_lab, "ECHO_TIMEOUT_S", 0.6)
    _slow_dom0(host.console_path, delay=30.0)
    with pytest.raises(LabError, match=r"to echo what was typed.*Xen asked"):
        host.console("echo hello", timeout=10)
    assert probes == ["no echo for 0 s", "silent console"]


def test_xen_s_lines_are_not_taken_for_the_echo_of_what_was_typed(
        tmp_path: Path) -> None:
    """A Xen dump asked while the dom0 is silent holds a chunk's bytes in order; the next
    chunk goes only once the dom0 itself has echoed."""
    host = _host(tmp_path)
    host.run_dir.mkdir(parents=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(host.console_path))
    srv.listen(1)
    events: list[str] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            line = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                events.append(f"typed {len(data)}")
                if not line:
                    # Every byte of the chunk, in order, among Xen's words.
                    conn.sendall(b"(XEN) [ 590.1] " + b" ".join(bytes([c]) for c in data)
                                 + b"\r\n")
                    # Typing goes on only after the echo: nothing to read after a while.
                    time.sleep(0.5)
                    if select.select([conn], [], [], 0)[0]:
                        events.append("typed before the echo")
                    events.append("echoed")
                line = _echo_and_answer(conn, data, line)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert host.console("echo hello", timeout=10) == "hello\n"
    t.join(5)
    assert events[:2] == ["typed 32", "echoed"] and events[2].startswith("typed"), events


def test_without_xen_lines_keeps_a_dom0_line_that_a_xen_line_interrupts() -> None:
    out = b"abc(XEN) [  6.7] *** Serial input to Xen\r\ndef\r\n(XEN) [  6.8] x\r\n"
    assert xen_lab._without_xen_lines(out) == b"abcdef\r\n"


def _fake_xen_console(conn: socket.socket, dumps: dict[bytes, bytes],
                      keys: list[bytes]) -> threading.Thread:
    """Xen's console (xen/drivers/char/console.c): CTRL-a three times switches the serial
    input to Xen and back, each switch said on the serial line; a debug key in `dumps`
    prints its dump's first words. Each read is kept in `keys`: a key typed before the
    last one's dump began would arrive in the same read (Xen's tasklet keys then lose
    the first, xen/common/keyhandler.c)."""
    def serve() -> None:
        with conn:
            while True:
                data = conn.recv(64)
                if not data:
                    return
                keys.append(data)
                if data == b"\x01\x01\x01":
                    to = b"DOM0" if len(keys) > 1 else b"Xen"
                    conn.sendall(b"(XEN) [  590.1] *** Serial input to " + to + b" (...)\r\n")
                    if to == b"DOM0":
                        return
                elif data in dumps:
                    conn.sendall(b"(XEN) [  590.1] " + dumps[data] + b"\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def _reader(ours: socket.socket, got: bytearray) -> Any:
    def read() -> None:
        ours.settimeout(0.05)
        try:
            got.extend(ours.recv(4096))
        except TimeoutError:
            pass
    return read


def _ask_fake_xen(host: xen_lab.XenHost,
                  dumps: dict[bytes, bytes]) -> tuple[str, list[bytes]]:
    """What the host's Xen question says of a fake Xen console with these dumps, and the
    keys typed to it, one read each."""
    ours, xen = socket.socketpair()
    keys: list[bytes] = []
    t = _fake_xen_console(xen, dumps, keys)
    got = bytearray()
    with ours:
        said = host._ask_xen(ours, got, _reader(ours, got))
    t.join(5)
    return said, keys


def test_a_hung_dom0_s_xen_is_asked_for_its_queues_registers_clocks_and_timers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host(tmp_path)
    host.run_dir.mkdir(parents=True)
    host.pid_path.write_text("1\n")
    monkeypatch.setattr(xen_lab.XenHost, "_probe_qemu", lambda self, why="": "probed")
    said, keys = _ask_fake_xen(host, dict(xen_lab.XEN_DUMPS))
    # Each key alone, once the one before had begun its dump (run BR: "r0ta" in one
    # write lost '0' and 't').
    assert keys == [b"\x01\x01\x01", b"r", b"e", b"0", b"t", b"a", b"q", b"d",
                    b"\x01\x01\x01"]
    assert said.startswith("Xen answered its console switch (its dom0 hung, not Xen): "
                           "its dumps r, e, 0, t, a, q, d are in ")
    assert re.search(r"when its QEMU had run [0-9.]+ s; probed$", said), said


def test_a_dump_xen_does_not_begin_is_named_and_the_others_still_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host(tmp_path)
    host.run_dir.mkdir(parents=True)
    monkeypatch.setattr(xen_lab.XenHost, "_probe_qemu", lambda self, why="": "probed")
    waits: list[float] = []
    real_wait = xen_lab.wait_until

    def quick(cond: Any, timeout: float, what: str, **kw: Any) -> Any:
        waits.append(timeout)
        return real_wait(cond, min(timeout, 0.5), what, **kw)

    monkeypatch.setattr(xen_lab, "wait_until", quick)
    dumps = {k: v for k, v in xen_lab.XEN_DUMPS if k != b"t"}  # 't' says nothing
    said, keys = _ask_fake_xen(host, dumps)
    assert keys == [b"\x01\x01\x01", b"r", b"e", b"0", b"t", b"a", b"q", b"d",
                    b"\x01\x01\x01"]
    assert "its dumps r, e, 0, a, q, d are in " in said and "(t not begun in 20 s)" in said, said
    assert "when its QEMU had run an unknown time (No such file" in said, said  # no pid file


# Xen's '0' dump of run BP's primary dom0 (vCPU 1's stack cut short), as on its serial line.
DOM0_DUMP = """\
(XEN) [  590.129781] '0' pressed -> dumping Dom0's registers
(XEN) [  590.130817] *** Dumping Dom0 vcpu#0 state: ***
(XEN) [  590.131786] RIP:    e033:[<ffffffff81a391c0>]
(XEN) [  590.136990] Guest stack trace from rsp=ffffc90040663958:
(XEN) [  590.137441]    ffffffff81031146 ffff88805dc31c40 ffffc900406639e0 ffff888010668000
(XEN) [  590.138521]    ffff88800c77e100 ffffffff82413bb0 ffff88800c77ebc8 ffffffff81a4731d
(XEN) [  590.149579] *** Dumping Dom0 vcpu#1 state: ***
(XEN) [  590.149970] RIP:    e033:[<ffffffff81a39075>]
(XEN) [  590.151116]    0000000000000000 0000000000000000 ffffffff8165eebe 0000000c0000bf7d
(XEN) [  590.151092] fsb: 0000000000000000   gsb: ffff88805dd00000   gss: 0000000000000000
(XEN) [  590.151111] Guest stack trace from rsp=ffffc900400d0d10:
(XEN) [  590.151116]    0000000000000000 0000000000000000 ffffffff8165eebe 0000000c0000bf7d
(XEN) [  590.151149]    ffffffff8102c91f 0000000300000000 0000000000080000 0000000000000001
"""


def test_a_dom0_dump_is_named_each_vcpu_where_it_is_and_its_stack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The dom0 kernel's symbols around those addresses (Debian's 6.1.0-50, read from it).
    kernel = kernel_symbols.SymbolTable(
        (0xFFFFFFFF8102C8A0, 0xFFFFFFFF81031040, 0xFFFFFFFF8165EE40, 0xFFFFFFFF81A39070,
         0xFFFFFFFF81A391C0, 0xFFFFFFFF81A46FD0, 0xFFFFFFFF82413B00),
        ("xen_qlock_wait", "__switch_to", "xen_poll_irq", "xen_hypercall_pv",
         "__wrgsbase_inactive", "__schedule", "some_data"), "tTTttTd")
    monkeypatch.setattr(xen_lab, "_symbol_tables", lambda xen, linux: (kernel,))
    said = _host(tmp_path)._dom0_stacks(DOM0_DUMP)
    # vCPU 1 waits in a PV spinlock's poll; the data pointer on vCPU 0's stack is left out;
    # only the trace's words count (the register lines before it are not the stack).
    assert said == (
        "d0v0 at ffffffff81a391c0 (__wrgsbase_inactive+0x0) (stack: __switch_to+0x106, "
        "__schedule+0x34d); "
        "d0v1 at ffffffff81a39075 (xen_hypercall_pv+0x5) (stack: xen_poll_irq+0x7e, "
        "xen_qlock_wait+0x7f)")


def test_a_guest_vcpu_s_context_gets_its_kernel_s_names() -> None:
    # Run BV's former SVM after its triple fault (xenctx -a -S -C), cut short.
    xenctx = ("vcpu0:\nrip: ffffffff8107141c\nflags: 00000086 s nz p\n"
              "rdi: ffffffff82a39660\n"
              "Stack Trace:\n                  * [<ffffffff8107141c>] <--\n"
              "ffffffff82a03dd0:   [<ffffffff81148f9b>]\n"
              "ffffffff82a03dd8:     00000031f633fe00\n")
    table = kernel_symbols.SymbolTable(
        (0xFFFFFFFF810713B0, 0xFFFFFFFF81148F60, 0xFFFFFFFF82A39600),
        ("read_hpet", "ktime_get", "some_data"), "tTd")
    assert xen_lab.name_kernel_addresses(xenctx, table).splitlines() == [
        "vcpu0:", "rip: ffffffff8107141c  # read_hpet+0x6c", "flags: 00000086 s nz p",
        "rdi: ffffffff82a39660",  # data: not named
        "Stack Trace:", "                  * [<ffffffff8107141c>] <--  # read_hpet+0x6c",
        "ffffffff82a03dd0:   [<ffffffff81148f9b>]  # ktime_get+0x3b",
        "ffffffff82a03dd8:     00000031f633fe00"]
