"""Two nested Xen hosts on the lab's network (`colo-lab up --xen`).

Each host is a QEMU TCG guest (the lab's own QEMU 7.2 build, `colo_lab.qemu_build`, whose
SVM emulation carries a fix the hosts' HVM guests need; XEN-NESTED.md measured Debian's)
that boots Xen 4.17 and a Debian dom0 from the cached
`colo_lab.xen_build` output. It sits in its host namespace of the lab (`colo_lab.lab`)
with three NICs, each on a bridge of that namespace:

```
  pri ns: br0    (lan0 to the LAN)     ── xlan ── dom0 eth0 (xenbr0, guests' bridge)
          brfwd  (fwd0, forward link)  ── xfwd ── dom0 eth1 (no address)
          brctl  (ctl0, control link)  ── xctl ── dom0 eth2 (DOM0_CTL_IP)
```

Xen's console (com1) carries the dom0's console (hvc0) and a root shell on it; it is one
unix socket per host (for `console()`), logged whole to a file that `up` waits on.

The project's own Python packages reach the dom0s on a read-only disk made at each `up`
from the checkout that runs it (`make_source_disk`; the dom0 mounts it on /opt/colo), not
inside the cached dom0 image: the image is keyed by its inputs, and a copy of the source
among them would rebuild it (minutes) at every commit, most of which never touch the Xen
path; the disk takes about a second and is never stale.
"""

from __future__ import annotations

import functools
import hashlib
import lzma
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from colo_lab import etcd_net, kernel_symbols, netns
from colo_lab.cmd import need, run
from colo_lab.errors import LabError
from colo_lab.guest import Guest
from colo_lab.lab import LAN_PLEN, VM_IP, VM_MAC, Lab, qemu_binary
from colo_lab.paths import PACKAGE_DIR
from colo_lab.qemu_build import FIRMWARE_ARGS
from colo_lab.wait import WaitTimeout, wait_until
from colo_lab.xen_build import XenLab
from colo_orch.backends.xen.domain import ColoDisk

# XEN-NESTED.md: without smap=0 smep=0 the dom0 dies at its first instruction under TCG
# (#PF in create_bounce_frame). noreboot keeps a crashed Xen's last words on the console.
# console_timestamps=boot: Xen's lines and its guests' (hvmloader's, SeaBIOS's) carry the
# seconds since Xen started, which date a guest's firmware phases (the dom0's own output
# has none).
XEN_ARGS = ("console=com1 com1=115200,8n1 dom0_mem=1536M,max:1536M smap=0 smep=0 noreboot "
            "console_timestamps=boot")
# net.ifnames=0: the initrd's udev would rename eth0-2 to enp0s1-3 (seen), and the init
# and the lab name the NICs by their order on the PCI bus (xlan, xfwd, xctl).
DOM0_ARGS = "root=/dev/vda rw console=hvc0 net.ifnames=0 init=/sbin/colo-dom0-init"
# The dom0's programs crash now and then on the nested hosts (docs/xen.md runs L-P: python3,
# xl, expr, ld.so; a corrupted register or stack word each time, never the kernel). Taking
# AVX away did not stop it (Debian's QEMU 7.2 is the first whose TCG emulates AVX; run N's
# `expr` faulted in glibc's AVX2 strcmp; run O crashed without it), nor did one TCG thread
# per host (run P; and run Q's PVM then stalled at its sixth checkpoint, so the hosts are
# back on a thread per vcpu). AVX stays off: glibc then takes the SSE string functions that
# the project's other VMs (QEMU's default CPU model) have always run. XSAVE is off too
# (run AH): a dom0 process's registers are then saved and restored at Xen's context switch
# by FXSAVE/FXRSTOR, not by TCG's XSAVE family; the crashes looked like registers lost
# there, and in run AH, the first without XSAVE, no dom0 program crashed (runs AF and AG,
# with it, had a sh and a python3 die). One run: a likely cause, not a proven one.
HOST_CPU = "max,avx=off,avx2=off,xsave=off"
HOST_ACCEL = "tcg"
HOST_MEM_MB = 3072
HOST_CPUS = 2
READY = "colo-dom0: ready"
XL_OK = "colo-dom0: xl info ok"
# Alone, a host reached READY ~90 s after QEMU started (XEN-NESTED.md); two at once on two
# shared cores take longer.
BOOT_TIMEOUT_S = 600.0
DOM0_LAN_IP = {"primary": "10.99.0.11", "secondary": "10.99.0.12"}
DOM0_CTL_IP = {"primary": "10.99.1.11", "secondary": "10.99.1.12"}
NICS = ("xlan", "xfwd", "xctl")
CONSOLE_CHUNK = 32
# A typed chunk's echo: given up after ECHO_TIMEOUT_S (a busy dom0 echoed nothing for 30 s,
# run BB); Xen and the host's QEMU are asked once it has been silent ECHO_PROBE_AFTER_S,
# while the silence lasts: run BP's dom0 stalled for about 140 s and BR's for 115 s, each
# back by itself before the deadline's dumps could see it.
ECHO_TIMEOUT_S = 120.0
ECHO_PROBE_AFTER_S = 45.0
# Xen's debug keys for a hung dom0 and the first words each one's dump prints
# (xen/common/keyhandler.c, sched/, timer.c, event_channel.c): run queues, every event
# channel (pending, masked), dom0's registers, the CPUs' clocks, the timer queues, each
# vCPU's poll port, upcall flags and pause flags, each CPU's Xen stack. 'q' next to last:
# it ends by sending every vCPU a VIRQ_DEBUG, which may wake one stuck in a poll (whether
# the stall ends there says so); 'd' last: it waits for every CPU to answer an IPI.
XEN_DUMPS = ((b"r", b"CPUs info"), (b"e", b"dumping event-channel info"),
             (b"0", b"Dumping Dom0"), (b"t", b"Synced stime skew"),
             (b"a", b"Dumping timer queues"), (b"q", b"dumping domain info"),
             (b"d", b"dumping registers"))
# Where the kernels' own addresses begin: Xen's and the dom0 kernel's symbols are named
# from here up (below: user space, and the dom0's per-CPU offsets, which are no code).
KERNEL_SPACE = 0xFFFF800000000000
# How many of a dom0 vCPU's stack addresses a hang report names.
STACK_NAMES = 12
# Where the dom0's libxl bridge listens: the service domain's colo_checkpoint_host:port.
LIBXL_BRIDGE = ("127.0.0.1", 9911)
# Where a dom0 serves a file for XenHost.fetch (on its control link address).
FETCH_PORT = 8765


def nic_mac(role: str, nic: int) -> str:
    """The MAC of NIC `nic` (0 LAN, 1 forward link, 2 control) of that host's QEMU."""
    return f"02:c0:10:{0x20 + nic:02x}:00:{1 if role == 'primary' else 2:02x}"


@dataclass(frozen=True)
class XenHost:
    """One nested Xen host of a lab; its files are in the lab's run directory."""

    role: str
    ns: str
    run_dir: Path
    build: XenLab
    # A read-only ext4 image with the lab guest's kernel and initrd (the dom0's /dev/vdb).
    guest_disk: Path | None = None
    # A read-only ext4 image labelled colo-src with the project's packages (/opt/colo).
    source_disk: Path | None = None
    # The host namespace's address on the control bridge: the dom0's router to the lab's
    # etcd cluster (wire), as a host's own network would route to its arbiter.
    gateway: str = ""
    # The host's qemu-system-x86_64; None: the lab's build (host_qemu), found at start.
    qemu: Path | None = None

    @property
    def tag(self) -> str:
        return "xen-" + self.role[:3]

    @property
    def disk(self) -> Path:
        return self.run_dir / f"{self.tag}-dom0.qcow2"

    @property
    def console_path(self) -> Path:
        return self.run_dir / f"{self.tag}.console"

    @property
    def serial_path(self) -> Path:
        return self.run_dir / f"{self.tag}-serial.log"

    @property
    def stderr_path(self) -> Path:
        return self.run_dir / f"{self.tag}-qemu.log"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / f"{self.tag}.pid"

    @property
    def monitor_path(self) -> Path:
        return self.run_dir / f"{self.tag}.monitor"

    @property
    def hang_path(self) -> Path:
        return self.run_dir / f"{self.tag}-hang.log"

    def mac(self, nic: int) -> str:
        return nic_mac(self.role, nic)

    def argv(self) -> list[str]:
        dom0 = (f"{DOM0_ARGS} colo.name={self.tag} "
                f"colo.ip={DOM0_LAN_IP[self.role]}/{LAN_PLEN} "
                f"colo.ip.eth2={DOM0_CTL_IP[self.role]}/24")
        if self.gateway:
            dom0 += f" colo.route={etcd_net.SUBNET}.0/24:{self.gateway}"
        # -initrd is Xen's multiboot module list: the dom0 kernel with its command line,
        # then its initrd (a comma separates modules, so no path may hold one).
        modules = f"{self.build.kernel} {dom0},{self.build.initrd}"
        argv = [
            str(self.qemu or host_qemu()), *FIRMWARE_ARGS,
            "-accel", HOST_ACCEL, "-machine", "q35", "-cpu", HOST_CPU,
            "-smp", str(HOST_CPUS), "-m", str(HOST_MEM_MB),
            # debug-threads: the vCPU threads are named ("CPU 0/TCG") for _probe_qemu.
            "-name", f"{self.tag},debug-threads=on",
            "-display", "none", "-nodefaults", "-no-reboot",
            "-kernel", str(self.build.hypervisor), "-append", XEN_ARGS, "-initrd", modules,
            "-drive", f"file={self.disk},if=virtio,format=qcow2",
            "-chardev", f"socket,id=con0,path={self.console_path},server=on,wait=off,"
            f"logfile={self.serial_path}",
            "-serial", "chardev:con0",
            "-monitor", f"unix:{self.monitor_path},server=on,wait=off",
            "-pidfile", str(self.pid_path),
        ]
        for extra in (self.guest_disk, self.source_disk):
            if extra is not None:
                argv += ["-drive", f"file={extra},if=virtio,format=raw,readonly=on"]
        for i, nic in enumerate(NICS):
            argv += ["-netdev", f"tap,id=n{i},ifname={nic},script=no,downscript=no,vhost=off",
                     "-device", f"virtio-net-pci,netdev=n{i},mac={self.mac(i)}"]
        return argv

    def start(self) -> None:
        # The cached image stays read-only; each host writes to its own overlay.
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
             str(self.build.rootfs), str(self.disk)])
        with open(self.stderr_path, "ab") as err:
            subprocess.Popen(["ip", "netns", "exec", self.ns, *self.argv()],
                             stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                             start_new_session=True)

    def serial(self) -> str:
        try:
            return self.serial_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        try:
            pid = int(self.pid_path.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return True

    def wait_serial(self, text: str, timeout: float, started: float) -> None:
        def said() -> bool:
            if text in self.serial():
                return True
            # The pid file appears once QEMU runs; give it a few seconds to get there.
            if time.monotonic() - started > 10 and not self.alive():
                raise LabError(f"{self.tag}'s QEMU exited before '{text}': "
                               f"{_tail(self.stderr_path)}", f"see {self.serial_path}")
            return False

        wait_until(said, timeout, f"'{text}' on {self.tag}'s console", every=0.5,
                   detail=lambda: "console: " + " | ".join(self.serial().splitlines()[-4:]))

    def console(self, command: str, timeout: float = 60.0) -> str:
        """Run a shell command in the dom0 on its console; its output (stdout+stderr).

        The reply is read from the socket as it comes: QEMU's serial port sends a byte at a
        time, an unread unix socket fills after a few hundred of them (each byte is a
        buffer of its own) and the port then waits, stalling the dom0's console (seen).
        The line is typed CONSOLE_CHUNK bytes at a time, each once its echo came back: a
        400-byte line sent at once lost bytes in the middle on the way to the dom0 (seen).
        The end marker is printed by printf from two arguments, so the console's echo of
        the typed line never contains it."""
        mark = f"colo-end-{time.monotonic_ns()}"
        line = f"{command} 2>&1; printf '%s-%s\\n' {mark} $?\n".encode()
        got = bytearray()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(self.console_path))
            s.settimeout(0.5)

            def read() -> None:
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    return
                if not chunk:
                    raise LabError(f"{self.tag}'s console closed (its QEMU exited?)",
                                   f"see {self.serial_path}")
                got.extend(chunk)

            def echoed(part: bytes, start: int) -> bool:
                read()
                # Without Xen's own lines: a dump of Xen's (asked while the dom0 is silent)
                # holds most bytes of any chunk in order.
                return _subsequence(part, bytearray(_without_xen_lines(got[start:])), 0)

            for i in range(0, len(line), CONSOLE_CHUNK):
                part = line[i:i + CONSOLE_CHUNK]
                start = len(got)
                s.sendall(part)
                # The tty echoes each byte typed, in order, with other output possibly
                # between them: a job's "Done" notice, the kernel's or Xen's lines. Counting
                # bytes took such a notice for the echo, and the next chunk, sent too soon,
                # lost 30 bytes (run AY).
                what = f"{self.tag}'s console to echo what was typed"
                deadline = time.monotonic() + ECHO_TIMEOUT_S
                try:
                    try:
                        wait_until(functools.partial(echoed, part, start), ECHO_PROBE_AFTER_S,
                                   what, every=0)
                    except WaitTimeout:
                        # Runs BP and BR: the dom0 came back by itself before the deadline's
                        # dumps: ask Xen and the host's QEMU while the console is still
                        # silent, and go on waiting (the echo is told from the dumps by
                        # leaving out Xen's lines).
                        said = self._ask_xen(s, got, read,
                                             why=f"no echo for {ECHO_PROBE_AFTER_S:.0f} s")
                        print(f"--- {self.tag}: {what}: none for "
                              f"{ECHO_PROBE_AFTER_S:.0f} s; {said}")
                        wait_until(functools.partial(echoed, part, start),
                                   max(0.0, deadline - time.monotonic()), what, every=0,
                                   detail=lambda: "console: "
                                   + got.decode(errors="replace")[-200:])
                except WaitTimeout as e:
                    raise LabError(f"{e}; {self._ask_xen(s, got, read)}",
                                   f"see {self.serial_path}") from e

            def answered() -> tuple[str, str] | None:
                read()
                return _after(got.decode(errors="replace"), mark)

            status, output = wait_until(
                answered, timeout, f"'{command}' to finish on {self.tag}'s console", every=0,
                detail=lambda: "console: " + got.decode(errors="replace")[-200:])
        if status != "0":
            raise LabError(f"{self.tag}: '{command}' exited {status}: {output[-300:]}")
        return output

    def _ask_xen(self, s: socket.socket, got: bytearray, read: Callable[[], None],
                 why: str = "silent console") -> str:
        """Whether Xen itself still answers when its dom0 does not: CTRL-a three times
        switches the serial input to Xen (xen/drivers/char/console.c, `conswitch`), whose
        debug keys (XEN_DUMPS) then write to the serial log;
        CTRL-a three times again gives the input back. Run BE's secondary host went silent
        in a checkpoint and nothing said whether Xen or its dom0 had hung."""
        def answers(keys: bytes, text: bytes, timeout: float) -> bool:
            start = len(got)

            def said() -> bool:
                read()
                return text in got[start:]

            try:
                s.sendall(keys)
                wait_until(said, timeout, f"Xen to say {text!r}", every=0)
            except (OSError, WaitTimeout, LabError):
                return False
            return True

        if not answers(b"\x01\x01\x01", b"input to Xen", 15.0):
            return ("Xen did not answer its console switch either (the nested host hung); "
                    + self._probe_qemu(why=why))
        up = self._qemu_uptime()
        # One key at a time, each once its dump has begun: all but 'd' are Xen's tasklet
        # keys, and a key typed before the tasklet ran replaces the one before it
        # (xen/common/keyhandler.c, `keypress_key`): run BR's "r0ta" in one write printed
        # only 'r' and 'a'. 't' (Xen's clocks) and 'a' (its timer queues), and the host's
        # QEMU's age beside the switch's "(XEN) [seconds]" stamp, say whether a timer that
        # never fired or Xen's time jumping left the dom0 without CPU.
        begun = len(got)
        dumped = [key.decode() for key, text in XEN_DUMPS if answers(key, text, 20.0)]
        missing = [key.decode() for key, _ in XEN_DUMPS if key.decode() not in dumped]
        # Everything Xen prints lands in the serial log; the switch back comes last.
        answers(b"\x01\x01\x01", b"input to DOM0", 60.0)
        stacks = self._dom0_stacks(got[begun:].decode(errors="replace"))
        with self.hang_path.open("a") as f:
            f.write(f"=== {time.strftime('%H:%M:%S')} ({why}): Xen's '0' dump, named: "
                    f"{stacks or 'none'}\n\n")
        return ("Xen answered its console switch (its dom0 hung, not Xen): its dumps "
                f"{', '.join(dumped) or 'none'} are in {self.serial_path}"
                + (f" ({', '.join(missing)} not begun in 20 s)" if missing else "")
                + f", its switch stamped in Xen's time when its QEMU had run {up}; "
                + (f"{stacks}; " if stacks else "") + self._probe_qemu(why=why))

    def _symbol(self, address: int, code_only: bool = False) -> str | None:
        """The symbol an address is in, if Xen's or the dom0 kernel's."""
        if address < KERNEL_SPACE:
            return None
        for table in _symbol_tables(self.build.hypervisor, self.build.kernel):
            name = table.name(address, code_only)
            if name is not None:
                return name
        return None

    def _named(self, address: str) -> str:
        """An address (hex) with the symbol it is in, if known."""
        name = self._symbol(int(address, 16))
        return f"{address} ({name})" if name else address

    def _dom0_stacks(self, dumps: str) -> str:
        """Each dom0 vCPU's place in Xen's '0' dump, named: its RIP, then the kernel
        text addresses its stack holds, innermost first (a guess, like Linux's own
        '?' lines: stale words are among them)."""
        out = []
        for vcpu, body in re.findall(r"Dumping Dom0 vcpu#(\d+) state: \*\*\*(.*?)"
                                     r"(?=Dumping Dom0 vcpu#|\Z)", dumps, re.S):
            rip = re.search(r"RIP:\s+[0-9a-f]+:\[<([0-9a-f]+)>\]", body)
            trace = body.split("Guest stack trace", 1)[-1]
            words = re.findall(r"\b(ffffffff8[0-9a-f]{7})\b", trace)
            called = [n for n in (self._symbol(int(w, 16), code_only=True) for w in words)
                      if n][:STACK_NAMES]
            out.append(f"d0v{vcpu} at {self._named(rip.group(1)) if rip else '?'}"
                       f" (stack: {', '.join(called) or 'none read'})")
        return "; ".join(out)

    def _qemu_uptime(self) -> str:
        """How long the host's QEMU has run, by this machine's clock (its pid file's age)."""
        try:
            return f"{time.time() - self.pid_path.stat().st_mtime:.1f} s"
        except OSError as exc:
            return f"an unknown time ({exc.strerror})"

    def _probe_qemu(self, span: float = 3.0, why: str = "silent console") -> str:
        """What the host's QEMU itself is doing, added to hang_path: each thread's share
        of a core over `span` seconds (vCPU threads spinning, or all idle: a QEMU
        deadlock) and its monitor's `info registers -a` (each vCPU's RIP and CS, halted or
        not); one line of it returned. Run BE's host hung with nothing to tell a guest's
        hang from QEMU's."""
        try:
            pid = int(self.pid_path.read_text().strip())
            before = _thread_ticks(pid)
            time.sleep(span)  # a rate needs two samples; nothing to wait for
            after = _thread_ticks(pid)
        except (OSError, ValueError) as exc:
            return f"its QEMU could not be read ({exc})"
        hz = os.sysconf("SC_CLK_TCK")
        share = {t: (after[t][1] - before[t][1]) / hz / span
                 for t in after if t in before}
        busy = ", ".join(f"{after[t][0]} {share[t]:.0%}"
                         for t in sorted(share, key=lambda t: -share[t])[:4])
        registers = _monitor(self.monitor_path, "info registers -a")
        with self.hang_path.open("a") as f:
            f.write(f"=== {time.strftime('%H:%M:%S')} ({why}; QEMU up {self._qemu_uptime()})"
                    f": QEMU {pid}'s threads over {span:.1f} s: {busy}\n\n"
                    f"info registers -a:\n{registers}\n")
        # EIP in a vCPU's real or protected mode, RIP in long mode (Xen's and its guests').
        rips = ", ".join(self._named(rip) for rip in
                         re.findall(r"\b[RE]IP=([0-9a-f]+)", registers)) or "none read"
        # All halted with idle threads: Xen waits for a timer that does not come; running:
        # Xen (or a guest) is busy.
        halted = ", ".join(re.findall(r"\bHLT=(\d)", registers)) or "none read"
        return (f"its QEMU's busiest threads: {busy}; vCPU RIPs {rips}, halted {halted} "
                f"(see {self.hang_path})")

    def fetch(self, directory: str, names: list[str], dest: Path,
              timeout: float = 120.0) -> list[Path]:
        """Copy files of one dom0 directory into `dest` on this machine, over the control
        link: the dom0 serves the directory (Python's http.server) and curl in the host
        namespace reads each file. The console would take minutes for a core dump (115200
        baud, a byte per socket buffer: see console())."""
        pid, err = f"/tmp/fetch-{FETCH_PORT}.pid", f"/tmp/fetch-{FETCH_PORT}.err"
        ip = DOM0_CTL_IP[self.role]
        # No setsid: it forks when the shell made the job a process group leader, and $!
        # would be a pid that has already exited.
        self.console(f"python3 -m http.server {FETCH_PORT} --bind {ip} --directory "
                     f"{directory} > /dev/null 2> {err} < /dev/null & echo $! > {pid}")
        got = []
        try:
            for name in names:
                # The dom0's Python takes seconds to listen: curl retries until it does.
                run(["ip", "netns", "exec", self.ns, "curl", "-sSf", "--retry", "60",
                     "--retry-connrefused", "--retry-delay", "1", "--max-time", str(timeout),
                     "-o", str(dest / name), f"http://{ip}:{FETCH_PORT}/{name}"],
                    timeout=timeout + 10)
                got.append(dest / name)
        except LabError as exc:
            # Seen once (run G): the server had exited at once, status 1; say why.
            raise LabError(f"{exc}; the dom0's server said: "
                           f"{self.console(f'tail -n 3 {err}')[-300:]}") from exc
        finally:
            self.console(f"kill $(cat {pid}) 2>/dev/null; rm -f {pid}")
        return got


@functools.lru_cache(maxsize=2)
def _symbol_tables(hypervisor: Path,
                   kernel: Path) -> tuple[kernel_symbols.SymbolTable, ...]:
    """Xen's and the dom0 kernel's symbols, read from the images the hosts boot (about
    2 s, once); those that cannot be read are left out, said once (a report goes on
    without names)."""
    tables = []
    for read, image in ((kernel_symbols.xen_symbols_of, hypervisor),
                        (kernel_symbols.linux_symbols_of, kernel)):
        try:
            tables.append(read(image))
        except (OSError, LabError, lzma.LZMAError) as exc:
            print(f"--- no symbols from {image}: {exc}")
    return tuple(tables)


def name_kernel_addresses(text: str, table: kernel_symbols.SymbolTable) -> str:
    """Text (xenctx's registers and stack of a guest vCPU) with each line that holds
    kernel code addresses followed by their names (run BV's former SVM: `rip:
    ffffffff8107141c  # read_hpet+0x6c`). The service domain boots nokaslr, so its
    addresses are those of its kernel's own table."""
    out = []
    for line in text.splitlines():
        names = [n for n in (table.name(int(a, 16), code_only=True)
                             for a in re.findall(r"\b(ffffffff8[0-9a-f]{7})\b", line)) if n]
        out.append(f"{line}  # {', '.join(names)}" if names else line)
    return "\n".join(out) + "\n"


def _thread_ticks(pid: int) -> dict[str, tuple[str, int]]:
    """{tid: (thread name, user+system clock ticks)} of a process, from /proc."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[task.name] = parse_task_stat((task / "stat").read_text())
        except (OSError, ValueError):
            continue  # a thread that ended between the listing and the read
    return out


def parse_task_stat(stat: str) -> tuple[str, int]:
    """(name, utime + stime) of a /proc/PID/task/TID/stat line (proc(5): the name is
    between the first '(' and the last ')', it may hold spaces: QEMU's "CPU 0/TCG")."""
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    # Fields 14 and 15 of proc(5), counted from the pid; fields[0] here is field 3.
    return name, int(fields[11]) + int(fields[12])


def _monitor(path: Path, command: str, timeout: float = 20.0) -> str:
    """One HMP command's reply on a QEMU's monitor socket, or why there was none (a QEMU
    whose main loop is stuck does not answer: that says something too)."""
    prompt = b"(qemu) "
    got = bytearray()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            for send in (b"", command.encode() + b"\n"):
                s.sendall(send)
                start = len(got)
                while prompt not in got[start:]:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got.extend(chunk)
    except OSError as exc:
        return f"(the monitor did not answer: {exc}; read {bytes(got)[-200:]!r})"
    text = got.decode(errors="replace").replace("\r", "")
    return text.split(command, 1)[-1].rsplit("(qemu)", 1)[0].strip()


def _subsequence(part: bytes, got: bytearray, start: int) -> bool:
    """Whether the bytes of `part` occur in order in `got` from `start` on."""
    at = start
    for b in part:
        at = got.find(b, at)
        if at < 0:
            return False
        at += 1
    return True


def _without_xen_lines(out: bytes | bytearray) -> bytes:
    """A console's output without the lines Xen itself printed ("(XEN) ...")."""
    return re.sub(rb"\(XEN\) [^\n]*\n?", b"", bytes(out))


def _after(text: str, mark: str) -> tuple[str, str] | None:
    """(exit status, output) once the marker line is in text."""
    at = text.find(mark + "-")
    if at < 0:
        return None
    end = text.find("\n", at)
    if end < 0:
        return None
    # Xen's own console lines can land right after the status (seen: "0(d1) Allocated
    # Xen hypercall page"): the status is the number it starts with.
    rest = text[at + len(mark) + 1:end].strip()
    digits = re.match(r"\d+", rest)
    status = digits.group(0) if digits else rest
    body = text[:at].replace("\r", "")
    # Drop the echoed command line: output starts after the line that echoed the marker
    # (Xen's lines can come before it: a dump asked while the dom0 was silent), else
    # after the first newline.
    echo = body.rfind(f"{mark} $?")
    start = body.find("\n", echo) if echo >= 0 else body.find("\n")
    return status, body[start + 1:] if start >= 0 else ""


def grep_lines(output: str, pattern: str) -> str:
    """The lines of a console reply to `grep PATTERN` that grep printed: those holding one
    of the pattern's alternatives (`a\\|b`, literal text each). Xen's and the kernels'
    own lines land in a reply too (run BE: Xen's "HVM d1 save:" lines, while grep had
    matched nothing yet, taken for its output)."""
    alternatives = [a for a in pattern.split("\\|") if a]
    return "".join(line for line in output.splitlines(keepends=True)
                   if any(a in line for a in alternatives))


def grep_count(output: str) -> int:
    """The count of a console reply to `grep -c`: its one line of digits alone (Xen's
    lines can come before it)."""
    counts = [line.strip() for line in output.splitlines() if line.strip().isdigit()]
    return int(counts[-1]) if counts else 0


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no output)"
    return lines[-1] if lines else "(no output)"


def host_qemu() -> Path:
    """The hosts' QEMU: $COLO_QEMU, else the lab's patched build (built if its inputs
    changed). Debian's 7.2 delivers an interrupt that Xen injects into an HVM guest twice,
    the second time into the guest's own handler with interrupts off, so the guests hung
    (docs/xen.md, runs BY, BZ), and its VMRUN can lose a host IPI set at the same moment
    (the fixes and their evidence in patches/qemu-7.2-tcg-svm-vmrun.patch)."""
    return qemu_binary()


def hosts(lab: Lab, build: XenLab) -> dict[str, XenHost]:
    disk, src = guest_disk_path(lab), source_disk_path(lab)
    return {role: XenHost(role, h.ns, lab.run_dir, build, disk if disk.exists() else None,
                          src if src.exists() else None, h.ctl_ip)
            for role, h in lab.hosts.items()}


def guest_disk_path(lab: Lab) -> Path:
    return lab.run_dir / "xen-guest.img"


def make_guest_disk(lab: Lab, guest: Guest) -> Path:
    """The lab guest's kernel and initrd on a small ext4 image for the dom0s to mount."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(guest.kernel, Path(tmp) / "vmlinuz")
        shutil.copy(guest.initrd, Path(tmp) / "initrd.gz")
        run(["mkfs.ext4", "-q", "-F", "-d", tmp, str(guest_disk_path(lab)), "64M"])
    return guest_disk_path(lab)


def source_disk_path(lab: Lab) -> Path:
    return lab.run_dir / "xen-source.img"


# What the dom0 runs of the project: the bridge and the proxy's service code need all three
# (colo_lab for the dom0's stand-in proxy, xen_proxy.py). Only sources, no build output.
SOURCE_PACKAGES = ("colo_lab", "colo_orch", "colo_proxy")
SOURCE_SUFFIXES = (".py", ".c", ".h", ".sh")


def make_source_disk(lab: Lab, extra: Callable[[Path], None] | None = None) -> Path:
    """The project's packages on a small read-only ext4 image labelled colo-src (the
    dom0's init mounts it on /opt/colo), with a digest of them in its SOURCE file;
    `extra(root)` adds files of its own to the tree (colo_lab.xen_orch's configs)."""
    root = PACKAGE_DIR.parent
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        for package in SOURCE_PACKAGES:
            for path in sorted((root / package).rglob("*")):
                if path.suffix not in SOURCE_SUFFIXES or "__pycache__" in path.parts:
                    continue
                rel = path.relative_to(root)
                data = path.read_bytes()
                digest.update(str(rel).encode() + b"\0" + data + b"\0")
                (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / rel).write_bytes(data)
        (Path(tmp) / "SOURCE").write_text(digest.hexdigest()[:16] + "\n")
        if extra is not None:
            extra(Path(tmp))
        run(["mkfs.ext4", "-q", "-F", "-L", "colo-src", "-d", tmp,
             str(source_disk_path(lab)), "32M"])
    return source_disk_path(lab)


# The guest's console (its kernel's ttyS0) in the dom0, where a test's artefacts are taken
# from (*.log in /tmp): run I's PVM did not answer and nothing said how far it booted.
GUEST_CONSOLE = "/tmp/guest-console.log"
# The guest's kernel prints its warnings and worse (`loglevel=5`), from its first lines on
# (earlyprintk): with `quiet` (errors and worse) run X's SVM rebooted without a word. Its
# whole boot log is too dear under COLO: each byte to the emulated serial port is a round
# trip through the dom0's device model, and run R's PVM took 3-5 s a line (0.1-0.2 s without
# COLO, run N). Drop `loglevel` to see where a boot stops.
# The lab's guest as an HVM domain with direct kernel boot (XEN-NESTED.md: tsc_mode native
# or it reboots in a loop on RDTSCP). Its initramfs has virtio drivers only, hence the
# NIC model. `nopv`: Linux runs as a plain HVM guest, without Xen's PV interfaces. Once a
# Linux guest has set its Xen callback, libxl no longer pauses it for a checkpoint but asks
# it through xenstore to suspend itself (libxl_dom_suspend.c), and the COLO secondary
# resumes its copy of that suspend as a new domain (xc_domain_resume(fast=0)): run V's SVM
# then died at once (`BUG: kernel NULL pointer dereference`, panic, reboot) and COLO ended.
# Without PV, every checkpoint pauses the guest from outside, as QEMU's COLO does, and the
# kernel never unplugs its emulated NIC (it did by default for a PV netfront, before
# `xen_emul_unplug=never`). The VMs' MAC and IP: the client reaches it as the PVM.
# No VGA (`vga = "none"`): the guest's console is its serial port, and an emulated card
# only costs the dom0 (run N: the device model of a domain idling in SeaBIOS used half a
# dom0 vcpu). Its NIC names libxl's userspace COLO proxy (colo_orch/backends/xen/domain.py's keys):
# `xl remus -c -p` of it asks the libxl bridge on the dom0's 127.0.0.1:9911; without
# COLO libxl ignores the keys.
SERVICE_CFG = (
    'name = "service"\\ntype = "hvm"\\nmemory = 256\\nvcpus = 1\\nvnc = 0\\nvga = "none"\\n'
    f'serial = "file:{GUEST_CONSOLE}"\\ntsc_mode = "native"\\nkernel = "/mnt/guest/vmlinuz"\\n'
    'ramdisk = "/mnt/guest/initrd.gz"\\n'
    # nokaslr: Xen's dump of a guest that faulted (run BU's PVM, a triple fault under
    # COLO) and xenctx's (the artefacts) then give addresses of the guest kernel's own
    # table (colo_lab.kernel_symbols reads it from the guest's vmlinuz).
    f'extra = "console=ttyS0 earlyprintk=ttyS0,115200 loglevel=5 nokaslr nopv panic=-1 '
    f'colo.ip={VM_IP}/{LAN_PLEN}"\\n'
    f'vif = [ "mac={VM_MAC},bridge=xenbr0,model=virtio-net-pci,VIFNAME'
    f'colo_checkpoint_host={LIBXL_BRIDGE[0]},colo_checkpoint_port={LIBXL_BRIDGE[1]}" ]\\n')
SERVICE_TIMEOUT_S = 300.0
# Under COLO the guest boots paused at every checkpoint (libxl's own every 5 s, about
# 1 s each): run I's PVM did not answer within 300 s of the test's last checkpoint.
COLO_SERVICE_TIMEOUT_S = 380.0
# With colo-proxy in the dom0s (colo_lab.xen_orch) the PVM's output waits for the SVM's,
# and the secondary's proxy compiles its programs only once the COLO migration has made
# its tap: 4.3 min in a dom0 busy with the SVM. A request then took 0.5-3.8 s (run AU);
# 14-17 s while the forward link dropped the mirror and every packet waited for a
# checkpoint (runs AQ-AS).
PROXIED_SERVICE_TIMEOUT_S = 700.0
PROXIED_REQUEST_S = 60.0
SERVICE_CFG_PATH = "/tmp/service.cfg"


def mount_guest(x: XenHost) -> None:
    """The guest's kernel and initrd on /mnt/guest: where the service domain boots from,
    and where a COLO secondary's device model is told to load them from too."""
    x.console("mkdir -p /mnt/guest && mount -o ro /dev/vdb /mnt/guest")


# libxl's COLO disk (xl-disk-configuration(5)'s colo, colo-host, colo-port, colo-export,
# active-disk, hidden-disk; libxl_dm.c, libxl_colo_qdisk.c): an emulated IDE disk (libxl
# replicates emulated IDE and SCSI disks only). The primary's device model writes through a
# quorum to its own image and, from COLO's first checkpoint on, to a `replication` child
# that is an NBD client of the secondary; the secondary's device model serves that export
# (nbd-server-start on colo-host:colo-port) into its own image and runs the SVM on the
# `replication` secondary driver: the SVM's writes go to the active overlay, the old content
# of what the primary overwrites to the hidden one, both emptied at each checkpoint. libxl
# copies no disk: both images start equal (one ext4 image made on the host, copied to
# both dom0s). The paths are the same in both dom0s: the secondary's config is the primary's,
# from the stream. The NBD connection uses the control link, the migration stream's.
COLO_DISK_DIR = "/var/lib/colo-disk"
COLO_DISK_IMAGE = f"{COLO_DISK_DIR}/disk.img"
COLO_DISK_MB = 64
COLO_DISK_EXPORT = "colo-disk0"
COLO_DISK_PORT = 7421
COLO_DISK_OVERLAYS = ("active.qcow2", "hidden.qcow2")
OVERLAY_DIR = "xen-disk"  # on the source disk: /opt/colo/xen-disk
# libxl picks its qdisk backend for it (disk_try_backend refuses phy with colo), which
# libxl_colo_qdisk.c requires.
COLO_DISK_SPEC = ColoDisk(
    target=COLO_DISK_IMAGE, colo_host=DOM0_CTL_IP["secondary"], colo_port=COLO_DISK_PORT,
    colo_export=COLO_DISK_EXPORT, active_disk=f"{COLO_DISK_DIR}/{COLO_DISK_OVERLAYS[0]}",
    hidden_disk=f"{COLO_DISK_DIR}/{COLO_DISK_OVERLAYS[1]}").spec()


def write_colo_disk(root: Path) -> None:
    """The COLO disk's image, formatted ext4 (the guest's busybox has no ext4 mkfs), and
    the secondary's empty qcow2 overlays, as large as it, under `root` (the source disk's
    tree): made by the host's mkfs.ext4 and qemu-img, once, so that both dom0s copy the
    same bytes (two mkfs runs differ: UUID, hash seed, times)."""
    d = root / OVERLAY_DIR
    d.mkdir(parents=True, exist_ok=True)
    image = d / Path(COLO_DISK_IMAGE).name
    with open(image, "wb") as f:
        f.truncate(COLO_DISK_MB << 20)
    # Lazy init leaves the inode tables and the journal as holes: 0.4 MiB on the disk.
    run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(image)])
    for name in COLO_DISK_OVERLAYS:
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / name), f"{COLO_DISK_MB}M"])


def service_cfg(vifname: str = "", disk: bool = False) -> str:
    """SERVICE_CFG (printf's escapes), its NIC named `vifname` if given (its tap then
    `<vifname>-emu`), else libxl's default `vif<domid>.0`; with `disk`, the COLO disk
    (the guest keeps its key-value store there: colo.disk=sda)."""
    cfg = SERVICE_CFG.replace("VIFNAME", f"vifname={vifname}," if vifname else "")
    if disk:
        cfg = cfg.replace("nopv panic=-1 ", "nopv panic=-1 colo.disk=sda ")
        cfg += f'disk = [ "{COLO_DISK_SPEC}" ]\\n'
    return cfg


def write_service_config(x: XenHost, vifname: str = "", disk: bool = False) -> str:
    """The lab's guest as the HVM domain `service`: its config in the dom0 (and the guest
    disk mounted, whence it boots); with `disk`, the COLO disk's image and overlays copied
    afresh from the source disk (write_colo_disk). Returns the config's path."""
    mount_guest(x)
    if disk:
        x.console(f"rm -rf {COLO_DISK_DIR} && mkdir -p {COLO_DISK_DIR} && "
                  f"cp --sparse=always /opt/colo/{OVERLAY_DIR}/* {COLO_DISK_DIR}/")
    x.console(f"printf '{service_cfg(vifname, disk)}' > {SERVICE_CFG_PATH}")
    return SERVICE_CFG_PATH


def create_service(x: XenHost) -> None:
    """`xl create` of the domain `service`; returns as it boots."""
    x.console(f"xl create {write_service_config(x)}", timeout=180)


def start_service(lab: Lab, x: XenHost) -> float:
    """Start the lab's guest on a host as an HVM domain; seconds until the client gets
    its service's answer."""
    t0 = time.monotonic()
    create_service(x)
    lab.wait_http("/health", b"ok\n", timeout=SERVICE_TIMEOUT_S)
    return time.monotonic() - t0


# What Xen says over time in a dom0 (watch_xen): its domains with their CPU time, where their
# vcpus run, the dom0's busiest processes (run L: both dom0 vcpus ran all the time), and
# Xen's message ring, which holds only 16 KiB (each read empties it, so the
# log keeps the whole). A vcpu's CPU time tells a guest that boots slowly (it grows about
# as fast as the clock) from one that waits for something (it hardly grows). The dom0's
# /proc/stat tells, after a stall, how its vCPUs spent it: run BP's orchestrator was
# charged 140 s of a 146 s stall that Xen ran both dom0 vCPUs for 17.5 s, so its vCPU
# either waited runnable for Xen (the 8th number, steal, grows) or was blocked in Xen
# with the orchestrator current (a PV spinlock's poll: steal does not grow).
XEN_WATCH_LOG = "/tmp/xen-watch.log"
XEN_DMESG_LOG = "/tmp/xl-dmesg-all.log"
XEN_WATCH_EVERY_S = 10


def watch_xen(x: XenHost) -> None:
    """Sample `xl list`, `xl vcpu-list` and Xen's ring into XEN_WATCH_LOG and XEN_DMESG_LOG
    in the dom0 until it goes down."""
    loop = (f"while :; do date +%T; xl list; xl vcpu-list; head -n 3 /proc/stat; "
            f"ps -eo time,args --sort=-time | head -n 8; xl dmesg -c >> {XEN_DMESG_LOG}; "
            f"sleep {XEN_WATCH_EVERY_S}; done")
    start_in_dom0(x, f"sh -c '{loop}'", XEN_WATCH_LOG)


def with_cores(command: str) -> str:
    """`command` (no single quotes in it) run so that it and its children (xl, the device
    models libxl starts) may dump cores where the dom0's core_pattern says."""
    return f"sh -c 'ulimit -c unlimited; exec {command}'"


def start_in_dom0(x: XenHost, command: str, log: str) -> None:
    """A long-running command in the dom0, in a session of its own (the console's shell
    goes on), its output in `log`."""
    x.console(f"setsid {command} > {log} 2>&1 < /dev/null &")


def wait_in_dom0(x: XenHost, log: str, text: str, timeout: float,
                 fail: tuple[str, ...] = ()) -> str:
    """Wait until a dom0 file holds `text`; LabError at once when it holds one of `fail`.
    Returns the file."""
    def seen() -> str | None:
        got = x.console(f"cat {log} 2>/dev/null || true")
        for bad in fail:
            if bad in got:
                raise LabError(f"{x.tag}: {bad!r} in {log}: {got[-600:]}")
        return got if text in got else None

    return wait_until(seen, timeout, f"{text!r} in {x.tag}'s {log}", every=5.0)


def wire(lab: Lab) -> None:
    """Taps for each host's three NICs, on bridges with the lab's links (lab.up made
    br0 with lan0, and fwd0, ctl0 between the host namespaces)."""
    for h in lab.hosts.values():
        for nic in NICS:
            netns.tap(h.ns, nic)
        netns.ip(h.ns, "link", "set", "xlan", "master", "br0")
        # ctl0's address moves to its bridge: a bridge port's own address stops working.
        netns.ip(h.ns, "addr", "flush", "dev", "ctl0")
        netns.bridge(h.ns, "brfwd", ["fwd0", "xfwd"])
        netns.bridge(h.ns, "brctl", ["ctl0", "xctl"])
        netns.ip(h.ns, "addr", "add", f"{h.ctl_ip}/24", "dev", "brctl")
        # The dom0's colo-orch reaches the lab's etcd cluster through its host's own link
        # to it (etcd0), masqueraded: the members route only their own network.
        netns.sysctl(h.ns, "net.ipv4.ip_forward", "1")
        netns.sh(h.ns, ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s",
                        f"{DOM0_CTL_IP[h.role]}/32", "-o", etcd_net.HOST_LINK, "-j",
                        "MASQUERADE"])
    # The lab starts the secondary's uplink down for a protected pair; both dom0s need it.
    lab.set_uplink("secondary", True)


def up(lab: Lab, build: XenLab, guest: Guest | None = None,
       source_extra: Callable[[Path], None] | None = None) -> dict[str, float]:
    """Start both hosts on a lab whose network is up; wait until both dom0s answer
    `xl info`. With a guest, both dom0s can mount it (start_service); `source_extra` adds
    files to the source disk (make_source_disk). Returns the seconds each host took from
    QEMU's start."""
    need("qemu-img")
    wire(lab)
    if guest is not None:
        make_guest_disk(lab, guest)
    make_source_disk(lab, source_extra)
    xs = hosts(lab, build)
    t0 = time.monotonic()
    for x in xs.values():
        x.start()
    took: dict[str, float] = {}
    for role, x in xs.items():
        x.wait_serial(READY, BOOT_TIMEOUT_S - (time.monotonic() - t0), t0)
        took[role] = time.monotonic() - t0
        if XL_OK not in x.serial():
            raise LabError(f"{x.tag}: dom0 is up but `xl info` failed: "
                           + next((ln for ln in x.serial().splitlines()
                                   if "xl info failed" in ln), "?"),
                           f"see {x.serial_path}")
    return took
