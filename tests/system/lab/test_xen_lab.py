"""The nested Xen lab (docs/xen.md): what `colo-lab build --xen` made has COLO where
Debian's Xen has none, two nested Xen hosts boot to a dom0 whose `xl` uses it, and the
lab's guest serves the lab's client from an HVM domain on one of them.

Skipped unless COLO_XEN_TESTS=1 (`make test-xen`, which builds first)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from colo_lab import etcd_net, kernel_symbols, netns, xen_lab, xen_orch
from colo_lab.errors import LabError
from colo_lab.guest import cached_guest, ensure_guest, pattern
from colo_lab.lab import VM_IP, Lab
from colo_lab.wait import wait_until
from colo_lab.xen_build import (
    DEBIAN_KEPT,
    DM_PATH,
    LIBDIR,
    LIBXENGUEST,
    LIBXL,
    XenLab,
    cached_xen,
    check_dm_has_replication,
    check_libxl_has_colo,
)

pytestmark = pytest.mark.xen


@pytest.fixture(scope="module")
def build() -> XenLab:
    got = cached_xen()
    assert got is not None, "no Xen lab build in the cache: run `colo-lab build --xen`"
    return got


def _image_file(image: Path, path: str) -> bytes:
    """A file of the dom0's ext4 image, read by debugfs (no mount, no root needed)."""
    return subprocess.run(["debugfs", "-R", f"cat /{path}", str(image)], capture_output=True,
                          check=True, timeout=60).stdout


def test_libxl_in_the_dom0_is_built_with_colo(build: XenLab) -> None:
    check_libxl_has_colo(build.libxl)
    needed = subprocess.run(["readelf", "-d", str(build.libxl)], capture_output=True,
                            text=True, check=True).stdout
    assert "libnl-route-3.so.200" in needed and "libnl-3.so.200" in needed
    # The dom0 runs this library, not Debian's stub build (kept aside, unused).
    assert _image_file(build.rootfs, f"{LIBDIR}/{LIBXL}") == build.libxl.read_bytes()
    debian = _image_file(build.rootfs, f"{DEBIAN_KEPT}/{LIBXL}")
    assert b"COLO is not supported" in debian


def test_libxenguest_in_the_dom0_sends_the_svms_dirty_pages(build: XenLab) -> None:
    # xen-4.17-colo-svm-dirty-bitmap.patch's message: the dom0 runs the patched libxc,
    # without which the SVM's dirty-pfn lists are empty (docs/xen.md, run AE).
    ours = _image_file(build.rootfs, f"{LIBDIR}/{LIBXENGUEST}")
    assert b"COLO: dirty bitmap sized for" in ours
    assert ours == (build.dir / LIBXENGUEST).read_bytes()
    assert b"COLO: dirty bitmap sized for" not in _image_file(
        build.rootfs, f"{DEBIAN_KEPT}/{LIBXENGUEST}")


def test_device_model_has_the_replication_driver(build: XenLab) -> None:
    check_dm_has_replication(build.device_model)
    assert _image_file(build.rootfs, DM_PATH) == build.device_model.read_bytes()


@pytest.mark.timeout(900)
def test_two_nested_xen_hosts_boot_to_a_dom0_with_colo_libxl(build: XenLab) -> None:
    lab = Lab(f"xen{os.getpid() % 10000}")
    try:
        lab.up(vms=False)
        took = xen_lab.up(lab, build, cached_guest() or ensure_guest())
        assert set(took) == {"primary", "secondary"}
        for x in xen_lab.hosts(lab, build).values():
            info = x.console("xl info")
            assert re.search(r"^xen_version\s*:\s*4\.17", info, re.M), info
            assert re.search(r"^virt_caps\s*:.*\bhvm\b", info, re.M), info
            # Debian's xl wrapper runs /usr/lib/xen-4.17/bin/xl: the libxl it loads must be
            # the rebuilt one, byte for byte.
            loaded = x.console("sha256sum $(readlink -f $(ldd /usr/lib/xen-4.17/bin/xl "
                               "| grep -o '/[^ ]*libxenlight[^ ]*'))")
            assert loaded.split()[0] == hashlib.sha256(build.libxl.read_bytes()).hexdigest()
        # The control link between the two dom0s (migration and COLO run over it later).
        pri = xen_lab.hosts(lab, build)["primary"]
        pri.console(f"busybox ping -c 1 -W 5 {xen_lab.DOM0_CTL_IP['secondary']}")
        _hvm_domain_runs_on_the_rebuilt_device_model(pri)
        _xl_remus_c_reaches_libxl_colo_code(pri)
        # The check's domain, left suspended by libxl's failed COLO setup ("xc_domain_resume
        # failed"), goes before the service's. Run BR: it stayed, the console then echoed
        # nothing for 115 s and came back at the instant domain 1 was torn down by itself.
        pri.console("xl destroy colocheck")
        assert "colocheck" not in pri.console("xl list")
        # The lab's guest as an HVM domain on the primary, its service reached from the
        # lab's client across the LAN, the host namespace's bridge and the dom0's xenbr0.
        # The same guest without COLO, for comparison with the COLO test's: its console and
        # CPU time over time (watch_xen), kept with COLO_LAB_KEEP_LOGS.
        xen_lab.watch_xen(pri)
        took_s = xen_lab.start_service(lab, pri)
        print(f"--- service answered {took_s:.1f} s after xl create:\n"
              + pri.console("xl list"))
        assert lab.http("/blob/1000") == (200, pattern()[:1000])
        # Run BH: `xl remus` ended without resuming the primary's domain, suspended for a
        # checkpoint, and the orchestrator alone took it for running. Suspended as libxl
        # does it, the backend must see it stopped and its take-over resume it.
        out = pri.console("python3 -m colo_lab.xen_colo suspend --domain service",
                          timeout=240)
        assert "suspended: status=colo running=False" in out, out
        assert re.search(r"take_over: domain running \d+ ms after takeover \(resumed from "
                         r"suspend in \d+ ms\)", out), out
        assert "after the take-over: status=running running=True" in out, out
        lab.wait_http("/health", b"ok\n", timeout=120)
        assert lab.http("/blob/1000") == (200, pattern()[:1000])
    finally:
        _collect_dom0_artefacts(lab, build)
        lab.down()
    assert lab.leftovers() == []


# An HVM domain with no disk (SeaBIOS finds nothing to boot, the domain runs on) and one
# NIC carrying the userspace COLO proxy's address, as colo_orch/backends/xen/domain.py
# writes it; tsc_mode native: XEN-NESTED.md (RDTSCP under TCG).
HVM_CFG = ('name = "colocheck"\\ntype = "hvm"\\nmemory = 128\\nvcpus = 1\\nvnc = 0\\n'
           'serial = "pty"\\ntsc_mode = "native"\\nvif = [ "bridge=xenbr0,model=e1000,'
           'colo_checkpoint_host=127.0.0.1,colo_checkpoint_port=9911" ]\\n')
# xl remus -c -p to a receiver on the same dom0 (-s "": the host argument is the command).
REMUS = ("timeout 120 xl remus -c -p -s '' colocheck "
         "'xl migrate-receive --colo --userspace-colo-proxy -e' || true")


def _hvm_domain_runs_on_the_rebuilt_device_model(x: xen_lab.XenHost) -> None:
    x.console(f"printf '{HVM_CFG}' > /tmp/colocheck.cfg")
    x.console("xl create /tmp/colocheck.cfg", timeout=180)
    domid = x.console("xl domid colocheck").strip()
    assert domid.isdigit() and domid != "0"
    dms = x.console("ps -eo args | grep '^/usr/libexec/xen-qemu-system-i386' || true")
    assert re.search(rf"-xen-domid {domid}\b", dms), dms


def _xl_remus_c_reaches_libxl_colo_code(x: xen_lab.XenHost) -> None:
    """The rebuilt libxl runs its COLO setup (libxl_colo_save.c, libxl_colo_proxy.c) and
    stops where no proxy listens on 127.0.0.1:9911; Debian's stub build, loaded instead
    through LD_LIBRARY_PATH (Debian's xl has no RPATH), says COLO is not supported.
    The stub first: it fails before it touches the domain, while the rebuilt libxl's
    failed run may leave it without its device model, and xl then stops before libxl's
    COLO setup ("unable to retrieve domain configuration": run BL)."""
    x.console(f"mkdir -p /tmp/stub && ln -sf /{DEBIAN_KEPT}/{LIBXL} /tmp/stub/libxenlight.so.4.17")
    stub = x.console(f"LD_LIBRARY_PATH=/tmp/stub {REMUS}", timeout=240)
    assert "COLO is not supported" in stub, stub
    # The stub's receiver (its `xl migrate-receive`, with the stub too) may still be
    # failing after its sender: its lines would land in the next command's output.
    x.console("timeout 60 sh -c 'while pgrep -f \"xl migrate-[r]eceive\" > /dev/null; do "
              "sleep 1; done' || true", timeout=90)
    ours = x.console(REMUS, timeout=240)
    x.console("for d in $(xl list | awk 'NR > 1 && $1 ~ /incoming/ {print $2}'); do "
              "xl destroy $d; done")
    assert "COLO is not supported" not in ours, ours
    assert re.search(r"libxl_colo_\w+\.c:\d+:", ours), ours


# What the dom0s run for COLO (docs/xen.md, "The nested Xen lab"): the stand-in proxy
# (the proxy's service core without bcc) and XenBackend in both, driven by colo_lab.xen_colo.
PROXY_SOCK = "/run/colo/proxy.sock"
COLO_CHECKPOINTS = 10
# A 256 MiB HVM domain's initial sync took 104 s here, a checkpoint a few seconds; both
# dom0s share 2 cores with the other host's and everyone's work.
COLO_TIMEOUT_S = 600.0
# Where a dom0's kernel writes a core dump (%e: the program, %p: its pid).
CORE_PATTERN = "/tmp/core.%e.%p"
# Where the failover test tells the secondary's xen_colo that the primary is lost.
TAKE_OVER = "/tmp/take-over"


# One lock hold; the pytest-timeout signal runs lab.down unless it comes inside the finally
# (run AA: 690 s ran out while the dom0s' files were taken, and the lab was left up).
@pytest.mark.timeout(780)
def test_xl_remus_colo_with_the_backend_in_both_dom0s(build: XenLab) -> None:
    """COLO on real Xen: XenBackend in the secondary dom0 receives (`xl migrate-receive
    --colo --userspace-colo-proxy`), XenBackend in the primary dom0 creates the service
    domain paused and enters COLO (`xl remus -c -p`) with its libxl bridge answering libxl
    for the stand-in proxy; 10 checkpoints asked of libxl, each SVM resume read from the back
    channel, a divergence fed to the proxy checkpoints at once, the client is served."""
    lab = Lab(f"xen{os.getpid() % 10000}")
    try:
        _colo_serving(lab, build)
    finally:
        try:
            _show_dom0_logs(lab, build)
            _collect_dom0_artefacts(lab, build)
        finally:
            lab.down()
    assert lab.leftovers() == []


# The failover test is the COLO test and then a failover: one lock hold of up to 15 min.
@pytest.mark.timeout(900)
def test_xl_remus_colo_fails_over_to_the_svm_when_the_primary_host_dies(build: XenLab) -> None:
    """The COLO test's pair, serving; a persistent HTTP connection from the client, idle
    across a whole checkpoint; then the primary Xen host's QEMU is killed (SIGKILL): the
    secondary's libxl fails over (`COLO Failover`), the SVM serves, and the same
    connection gets its next answer from it."""
    lab = Lab(f"xen{os.getpid() % 10000}")
    conn = None
    try:
        pri, sec = _colo_serving(lab, build)
        conn = _PersistentClient(lab)
        assert conn.get("/health") == (200, b"ok\n")
        # The SVM resumes from the PVM's state at each checkpoint: once one has completed
        # after the exchange, the SVM's TCP state is what the client knows. Without the
        # real colo-proxy in the dom0 nothing holds the PVM's output until a checkpoint,
        # so an exchange after the last one would be lost at the failover.
        done = _count(pri, "COLO_CHECKPOINT from libxl")
        wait_until(lambda: _count(pri, "COLO_CHECKPOINT from libxl") >= done + 2, 60,
                   "a whole checkpoint after the client's exchange", every=2)
        _assert_svm_nic_works(sec)
        killed = time.monotonic()
        os.kill(int(pri.pid_path.read_text().strip()), signal.SIGKILL)
        # colo-orch's heartbeat would say the primary is lost; the test says it (run AB:
        # without it libxl waited on a stream that a dead host never closes).
        sec.console(f"touch {TAKE_OVER}")
        # grep, not the whole log: xl -vvv's is too long for the console (run AB).
        wait_until(lambda: _count(sec, "took over:\\|failed: take over"), 120,
                   "the secondary to take over", every=3)
        took = time.monotonic() - killed
        said = _grep(sec, "took over:\\|failed: take over\\|COLO Failover\\|receive ended")
        assert "took over:" in said and "COLO Failover" in said, said
        # The orchestrator's part at a failover: the new primary's side joins the LAN,
        # then tells it where the SVM is (XenBackend.announce). Without that the LAN sent
        # the client's frames to the dead primary's port until the client's ARP entry
        # expired and it asked again, which may come after TCP's retransmission at 51 s
        # and before the next at 102 s, past the client's 90 s (run CF1: the SVM idle, the
        # request timed out).
        lab.set_uplink("secondary", True)
        sec.console("xl qemu-monitor-command service announce_self")
        assert conn.get("/health") == (200, b"ok\n")
        served = time.monotonic() - killed
        assert conn.opened() == 1, "the connection was reopened"
        assert lab.http("/blob/1000") == (200, pattern()[:1000])
        print(f"failover: xl said so {took:.1f} s after the kill, the SVM served the "
              f"persistent connection {served:.1f} s after it")
        assert "service" in sec.console("xl list")
    finally:
        _end(lab, build, conn)
    assert lab.leftovers() == []


# QEMU 7.2's virtio_error() texts (hw/virtio/virtio.c; virtio-net's name the device), as
# the SVM's device model writes them to its log.
VIRTIO_ERRORS = ("virtio\\|Desc next is\\|Cannot map\\|Looped descriptor\\|Incorrect order"
                 "\\|Invalid size\\|Region caches\\|Guest index\\|Virtqueue size")
SVM_DM_LOG = "/var/log/xen/qemu-dm-service--incoming.log"


def _assert_svm_nic_works(sec: xen_lab.XenHost) -> None:
    """The SVM's virtio-net is not broken before the primary host is killed: a failover
    to a broken one loses the client (run BH: `virtio: zero sized buffers are not
    allowed`; runs BP's and BQ's `Desc next is 65535` were our own element query's,
    colo_lab.xen_virtio). Its device model is asked over QMP only if its log has a virtio
    error: libxl's own QMP calls at a checkpoint give up after 5 s on a monitor another
    client holds."""
    errors = _grep(sec, VIRTIO_ERRORS, SVM_DM_LOG)
    if not errors.strip():
        return
    said = sec.console("python3 -m colo_lab.xen_virtio --brief", timeout=120)
    print(f"--- the SVM's device model said: {errors.strip()}; now: {said.strip()}")
    assert "broken=False" in said and "broken=True" not in said, (errors, said)


def _orch_checkpoints(x: xen_lab.XenHost) -> int:
    st = xen_orch.state(x)
    return sum(int(n) for n in st["checkpoints"].values()) if st else -1


# A /random whose answers are released by one of libxl's own checkpoints (every 5 s)
# before the SVM's arrives is not compared: up to this many, until one diverged (run AW
# 3 of 3; with the COLO disk, run AZ 0 of 3, run BA 2 of 3).
DIVERGENT_TRIES = 8
# libxl's COLO disk (xen_lab.COLO_DISK_SPEC): run BA passed with it.
COLO_DISK = True


def _divergences(lab: Lab, x: xen_lab.XenHost) -> float:
    """The divergences the dom0's proxy has seen (its /metrics, from the host's namespace)."""
    url = f"http://{xen_lab.DOM0_CTL_IP[x.role]}:{xen_orch.PROXY_METRICS_PORT}/metrics"
    text = netns.sh(x.ns, ["curl", "-sSf", "--max-time", "10", url], timeout=20)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("colo_proxy_divergences_total{"))


def _image_has(x: xen_lab.XenHost, data: bytes) -> bool:
    """Whether the COLO disk's image in that dom0 holds `data` (hex: no quoting)."""
    out = x.console(f"grep -c -a {data.decode()} {xen_lab.COLO_DISK_IMAGE}; true", timeout=60)
    return any(line.strip().isdigit() and int(line) > 0 for line in out.splitlines())


def _proxy_status(x: xen_lab.XenHost) -> dict[str, object]:
    """`colo-proxy status` of the dom0's proxy (its control socket's status)."""
    out = x.console(f"python3 -m colo_proxy.cli.main status --control-socket "
                    f"{xen_orch.PROXY_SOCKET}", timeout=60)
    got = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert isinstance(got, dict), out
    return got


@pytest.mark.timeout(1800)
def test_colo_orch_in_both_dom0s_protects_the_domain_and_fails_over(build: XenLab) -> None:
    """colo-orch and colo-proxy in both dom0s (the orchestrator's Xen backend, the lab's
    etcd cluster as the arbiter, heartbeats on the control link; the proxies' eBPF
    programs compiled by the dom0's bcc, the PVM's output held in NFQUEUE): the primary
    creates the domain paused and enters COLO once the secondary waits, both say
    PROTECTED, the orchestrator's checkpoints go through libxl, the PVM serves through
    its proxy, its answers compared with the SVM's, and a divergent one makes the proxy ask
    for a checkpoint; the guest's store on libxl's COLO disk reaches the secondary's image.
    Then the primary Xen host is killed: the secondary's orchestrator, by its heartbeat and
    the arbiter, takes over, and the SVM answers the same persistent connection and has
    the PVM's store."""
    lab = Lab(f"xen{os.getpid() % 10000}")
    conn = None
    try:
        lab.up(vms=False)
        # The guest as its inputs make it: an older cached one has no IDE driver.
        xen_lab.up(lab, build, ensure_guest(),
                   source_extra=lambda root: xen_orch.write_configs(
                       root, etcd_net.endpoints(lab), disk=COLO_DISK))
        hs = xen_lab.hosts(lab, build)
        pri, sec = hs["primary"], hs["secondary"]
        for x in (pri, sec):
            x.console(f"echo '{CORE_PATTERN}' > /proc/sys/kernel/core_pattern")
            xen_lab.watch_xen(x)
        entered = xen_orch.protect(hs, disk=COLO_DISK, cores=True)
        # The SVM, with the PVM's MAC and address, is off the LAN (on_secondary).
        assert sec.console("cat /sys/class/net/eth0/operstate").strip().endswith("down")
        # The PVM, created paused and run by libxl from COLO's first checkpoint, serves.
        lab.wait_http("/health", b"ok\n", timeout=xen_lab.PROXIED_SERVICE_TIMEOUT_S,
                      attempt=xen_lab.PROXIED_REQUEST_S)
        assert lab.http("/blob/1000", timeout=xen_lab.PROXIED_REQUEST_S) == (200, pattern()[:1000])
        # libxl's COLO disk: the guest keeps its store on its IDE disk (it says so on its
        # console); what the PVM writes reaches the secondary's image over NBD at once.
        # Without replication that image stays empty: the SVM writes to its overlay.
        value = secrets.token_hex(16).encode()
        if COLO_DISK:
            assert "kv=/data/kv" in pri.console(f"cat {xen_lab.GUEST_CONSOLE}")
            assert lab.http("/kv/disk", method="PUT", data=value,
                            timeout=xen_lab.PROXIED_REQUEST_S) == (200, b"stored 32\n")
            wait_until(lambda: _image_has(sec, value), 120,
                       "the PVM's write in the secondary's disk image", every=5)
        # The PVM's answers came through the primary's proxy, compared with the SVM's:
        # the SVM's output reached the comparator over the forward link.
        compare = _proxy_status(pri)["compare"]
        assert isinstance(compare, dict)
        assert compare["secondary_packets"] > 0 and compare["released_packets"] > 0, compare
        # /random's answers (a UUID and the uptime) differ between the replicas: the
        # comparator sees the payloads differ and asks for a checkpoint. Runs AR and AS saw
        # none: the mirror never reached the SVM (the forward link's NIC dropped frames
        # not addressed to it, until colo-proxy made it promiscuous; run AU).
        before = _divergences(lab, pri)
        tries = 0
        while tries < DIVERGENT_TRIES and _divergences(lab, pri) == before:
            assert lab.http("/random", timeout=xen_lab.PROXIED_REQUEST_S)[0] == 200
            tries += 1
        seen = _divergences(lab, pri) - before
        after = _proxy_status(pri)["compare"]
        print(f"compared before /random: {json.dumps(compare)}; after: {json.dumps(after)}; "
              f"divergences in {tries} /random: {seen:g}")
        assert seen >= 1, after
        done = _orch_checkpoints(pri)
        assert done >= COLO_CHECKPOINTS, xen_orch.describe(hs)
        conn = _PersistentClient(lab)
        assert conn.get("/health") == (200, b"ok\n")
        # Two of the orchestrator's checkpoints after the exchange: the SVM has its state.
        wait_until(lambda: _orch_checkpoints(pri) >= done + 2, 120,
                   "two more checkpoints after the client's exchange", every=3,
                   detail=lambda: xen_orch.describe(hs))
        st = xen_orch.state(pri)
        assert st is not None and st["state"] == "PROTECTED", xen_orch.describe(hs)
        checkpoint_s, by_reason = st["last_checkpoint_s"], st["checkpoints"]
        # The primary's own log, while its host still runs.
        for got in pri.fetch("/tmp", ["orch.log"], lab.run_dir):
            got.rename(got.with_name(f"{pri.tag}-{got.name}"))
        _assert_svm_nic_works(sec)
        killed = time.monotonic()
        os.kill(int(pri.pid_path.read_text().strip()), signal.SIGKILL)

        def took_over() -> dict[str, object] | None:
            got = xen_orch.state(sec)
            return got if got and got["role"] == "primary" and got["state"] == "ALONE" else None

        after = wait_until(took_over, 180, "the secondary's orchestrator to take over",
                           every=2, detail=lambda: xen_orch.describe(hs))
        noticed = time.monotonic() - killed
        assert conn.get("/health") == (200, b"ok\n")
        served = time.monotonic() - killed
        assert conn.opened() == 1, "the connection was reopened"
        assert lab.http("/blob/1000", timeout=xen_lab.PROXIED_REQUEST_S) == (200, pattern()[:1000])
        if COLO_DISK:  # the former SVM has the PVM's store and writes its disk on its own
            assert lab.http("/kv/disk", timeout=xen_lab.PROXIED_REQUEST_S) == (200, value)
            assert lab.http("/kv/after", method="PUT", data=b"x",
                            timeout=xen_lab.PROXIED_REQUEST_S) == (200, b"stored 1\n")
        # It stays the primary that serves, holding the lease (run AL's took itself for a
        # VM-less host 0.2 s after ALONE, on a look begun during the take-over).
        st = xen_orch.state(sec)
        assert st is not None and st["state"] == "ALONE" and st["lease_holder"] == "sec", (
            xen_orch.describe(hs))
        print(f"colo-orch on Xen: both PROTECTED {entered:.1f} s after the orchestrators "
              f"started, {done} checkpoints when the PVM served "
              f"({json.dumps(by_reason)}), the last "
              f"{checkpoint_s} s; take-over ALONE {noticed:.1f} s after the kill "
              f"(take-over {after['last_takeover_s']} s), the persistent connection "
              f"answered by the former SVM {served:.1f} s after it")
    finally:
        _end(lab, build, conn)
    assert lab.leftovers() == []


def _end(lab: Lab, build: XenLab, conn: _PersistentClient | None) -> None:
    """A failover test's end, passed or not: the client closed, what the dom0s said shown
    and kept, the lab down."""
    try:
        if conn is not None:
            conn.close()
        _show_dom0_logs(lab, build)
        _collect_dom0_artefacts(lab, build)
    finally:
        lab.down()


class _PersistentClient:
    """One HTTP/1.1 connection from the client namespace, kept open between requests
    (colo_lab.client's Conn in a child process, one request per line on its stdin)."""

    SCRIPT = (
        "import json, sys\n"
        "from colo_lab.client import Conn\n"
        "c = Conn(sys.argv[1], float(sys.argv[2]))\n"
        "for line in sys.stdin:\n"
        "    try:\n"
        "        st, body = c.request('GET', line.strip())\n"
        "        out = {'status': st, 'body': body.decode('latin-1')}\n"
        "    except (OSError, ConnectionError, ValueError) as exc:\n"
        "        out = {'error': f'{type(exc).__name__}: {exc}'}\n"
        "        c.close()\n"
        "    out['opened'] = c.opened\n"
        "    print(json.dumps(out), flush=True)\n")

    def __init__(self, lab: Lab, timeout: float = 90.0) -> None:
        self.timeout = timeout
        self.last: dict[str, object] = {}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", self.SCRIPT,
             VM_IP, str(timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def get(self, path: str) -> tuple[int, bytes] | str:
        """(status, body), or the client's error."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(path + "\n")
        self.proc.stdin.flush()
        # The child's own socket timeout bounds this read.
        self.last = json.loads(self.proc.stdout.readline() or '{"error": "client died"}')
        if "error" in self.last:
            return str(self.last["error"])
        return int(str(self.last["status"])), str(self.last["body"]).encode("latin-1")

    def opened(self) -> int:
        return int(str(self.last.get("opened", 0)))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _colo_serving(lab: Lab, build: XenLab) -> tuple[xen_lab.XenHost, xen_lab.XenHost]:
    """The COLO test's steps: the pair in COLO with the guest booted and serving."""
    lab.up(vms=False)
    xen_lab.up(lab, build, cached_guest() or ensure_guest())
    hs = xen_lab.hosts(lab, build)
    pri, sec = hs["primary"], hs["secondary"]
    # The SVM has the PVM's MAC and address and no secondary proxy steers its output:
    # keep it off the LAN (the migration runs on the control link).
    lab.set_uplink("secondary", False)
    xen_lab.mount_guest(sec)
    config = xen_lab.write_service_config(pri)
    xen_lab.start_in_dom0(pri, "python3 -m colo_lab.xen_proxy serve --control "
                          f"{PROXY_SOCK}", "/tmp/proxy.log")
    # So that a failure says why: libxl's debug log on the receiver's stderr (xl -vvv),
    # a core of a crashing xl, the guest's own messages (hvmloader's among them) and
    # Xen's about it in Xen's log; _collect_dom0_artefacts takes them out.
    for x in (pri, sec):
        x.console(f"echo '{CORE_PATTERN}' > /proc/sys/kernel/core_pattern")
    # The guests' own messages (hvmloader's, SeaBIOS's): with Xen's timestamps they say
    # how far each firmware got and when. They go to the console the harness reads,
    # into the middle of its commands' output (run H: the PVM's broke a command's
    # status; the status is now read from the start of its line).
    for x in (pri, sec):
        x.console("xl set-parameters guest_loglvl=all || true")
    for x in (pri, sec):
        xen_lab.watch_xen(x)
    # Not under glibc's malloc checks (`--malloc-check`): with them run AA's SVM device
    # model could not load the state libxl wrote for it (docs/xen.md, runs Z and AA).
    xen_lab.start_in_dom0(sec, xen_lab.with_cores(
        f"python3 -m colo_lab.xen_colo secondary --xl-verbose --take-over-file {TAKE_OVER}"),
        "/tmp/colo.log")
    xen_lab.wait_in_dom0(sec, "/tmp/colo.log", "waiting for xl remus", 120)
    xen_lab.wait_in_dom0(pri, "/tmp/proxy.log", "stand-in primary proxy on", 120)
    # Created paused (libxl's COLO takes a domain that has not run), then COLO.
    # Not xl -vvv here: the primary's xl died in its debug logging (runs P and W: a
    # segfault in libc's stdio, the dom0 crash of docs/xen.md), which ends COLO; its
    # log cost the dom0 3 s of CPU every 14 s (run O). libxl's errors come without it.
    xen_lab.start_in_dom0(pri, xen_lab.with_cores(
        f"python3 -m colo_lab.xen_colo primary --config {config} --checkpoints "
        f"{COLO_CHECKPOINTS} --control {PROXY_SOCK} --diverge"), "/tmp/colo.log")
    fails = ("failed:", "xl remus ended", "Traceback")
    log = xen_lab.wait_in_dom0(pri, "/tmp/colo.log", f"checkpoint {COLO_CHECKPOINTS}:",
                               COLO_TIMEOUT_S, fails)
    assert re.search(r"in COLO after [\d.]+ s", log), log
    took = [int(t) for t in re.findall(r"checkpoint \d+: took (\d+) ms", log)]
    assert len(took) == COLO_CHECKPOINTS, log
    # The secondary saw the SVM resume on xl's back channel at the initial sync and at
    # the checkpoints since (wait_resume reports resumes that came together once).
    # The last count only: the whole log (xl -vvv's) lost lines on the way through the
    # console (run H: resumes 6 and 7 of 14).
    # -a: xl's log can hold a non-text byte, and grep then only says "binary file
    # matches" (run S).
    svm = sec.console("grep -ao 'SVM resumed ([0-9]*)' /tmp/colo.log | tail -n 1")
    resumed = re.search(r"SVM resumed \((\d+)\)", svm)
    assert resumed and int(resumed.group(1)) >= COLO_CHECKPOINTS, svm
    # A divergence fed to the proxy (by xen_colo after its checkpoints): DO_CHECKPOINT,
    # libxl checkpoints, output released.
    out = wait_until(functools.partial(_grep, pri, "diverge"), 120,
                     "the primary's divergence to end")
    assert "released by checkpoint" in out, out
    # The PVM, unpaused by libxl after the first checkpoint, serves under COLO.
    lab.wait_http("/health", b"ok\n", timeout=xen_lab.COLO_SERVICE_TIMEOUT_S)
    assert lab.http("/blob/1000") == (200, pattern()[:1000])
    # Still in COLO with the guest up: two more of libxl's checkpoints, and libxl never
    # hung up (run V's PVM served just as its SVM died at a checkpoint and COLO ended).
    # Counts, not the log: it may be long (xl's lines as they come).
    done = _count(pri, "COLO_CHECKPOINT from libxl")

    def two_more() -> bool:
        if _count(pri, "libxl disconnected\\|xl remus ended"):
            raise AssertionError(_grep(pri, "libxl disconnected\\|xl remus ended\\|error"))
        return _count(pri, "COLO_CHECKPOINT from libxl") >= done + 2

    wait_until(two_more, 60, "two more COLO checkpoints of the serving PVM", every=5)
    return pri, sec


def _count(x: xen_lab.XenHost, text: str, log: str = "/tmp/colo.log") -> int:
    """How many lines of a dom0 log hold `text` (a grep pattern)."""
    return xen_lab.grep_count(x.console(f"grep -ac '{text}' {log} || true"))


def _grep(x: xen_lab.XenHost, text: str, log: str = "/tmp/colo.log") -> str:
    """The lines of a dom0 log that hold `text` (grep -a: xl's lines can hold a non-text
    byte, run S); the log itself can be too long for the console."""
    return xen_lab.grep_lines(x.console(f"grep -a '{text}' {log} || true"), text)


def _collect_dom0_artefacts(lab: Lab, build: XenLab) -> None:
    """The dom0s' logs, their kernels' and Xen's messages and any core dump, as files of
    the lab's run directory (`<tag>-<name>`; COLO_LAB_KEEP_LOGS keeps them)."""
    for x in xen_lab.hosts(lab, build).values():
        if not x.alive():  # the failover test kills the primary host
            print(f"--- {x.tag}: its QEMU is not running, nothing to collect")
            continue
        try:
            # The device models' virtio queues (colo_lab.xen_virtio): run BH's broken
            # virtio-net left no other trace.
            # xenctx: each guest vCPU's registers and stack, from Xen (run BU's PVM had
            # triple-faulted and Xen's own dump of it gave Xen's registers, not its).
            x.console("python3 -m colo_lab.xen_virtio > /tmp/virtio.log 2>&1; "
                      "for d in $(xl list | awk 'NR > 2 {print $2}'); do "
                      "/usr/lib/xen-4.17/bin/xenctx -a -S -C $d > /tmp/xenctx-$d.log 2>&1; "
                      "done; xl dmesg > /tmp/xl-dmesg.log; dmesg > /tmp/dmesg.log; "
                      "for c in /tmp/core.*; do [ -e $c ] && mv $c $c.core; done; true",
                      timeout=180)
            # /var/log/xen: libxl's per-domain logs, the device models' among them.
            for where, files in (("/tmp", "*.log *.core"), ("/var/log/xen", "*.log")):
                listed = x.console(f"(cd {where} && ls {files}) 2>/dev/null || true").split()
                # Only file names: the console's echo of a long command can wrap into
                # its output (seen: "true" taken for a file).
                names = [n for n in listed if re.fullmatch(r"[\w.+-]+\.(log|core)", n)]
                for got in x.fetch(where, names, lab.run_dir):
                    got = got.rename(got.with_name(f"{x.tag}-{got.name}"))
                    if got.name.startswith(f"{x.tag}-xenctx-"):
                        _name_guest_addresses(got)
        # OSError: a killed host's console refuses (its QEMU a zombie until the lab is down).
        except (LabError, OSError) as exc:
            print(f"--- {x.tag}: artefacts not collected: {exc}")


def _name_guest_addresses(xenctx: Path) -> None:
    """Beside a guest vCPU's xenctx output, the same with its kernel's addresses named
    (`.named.log`), read from the lab guest's kernel."""
    guest = cached_guest()
    try:
        if guest is None:
            raise LabError("no cached guest")
        table = kernel_symbols.linux_symbols_of(guest.kernel)
    except (OSError, LabError) as exc:
        print(f"--- {xenctx.name}: its guest's addresses not named: {exc}")
        return
    xenctx.with_suffix(".named.log").write_text(
        xen_lab.name_kernel_addresses(xenctx.read_text(errors="replace"), table))


def _show_dom0_logs(lab: Lab, build: XenLab) -> None:
    """What the dom0s' programs said (pytest shows it for a failed test)."""
    for x in xen_lab.hosts(lab, build).values():
        if not x.alive():
            print(f"--- {x.tag}: its QEMU is not running")
            continue
        try:
            print(f"--- {x.tag}\n" + x.console(
                "tail -n 60 /tmp/colo.log /tmp/proxy.log /tmp/orch.log 2>/dev/null | grep -av 'control "
                "socket'; xl list || true", timeout=30))
        # OSError: a killed host's console refuses (its QEMU a zombie until the lab is down).
        except (LabError, OSError) as exc:
            print(f"--- {x.tag}: {exc}")
