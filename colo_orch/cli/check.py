"""`colo-orch check`: can this host run a protected VM? Each line says what and how to fix.

The test bed (`colo-lab`) knows where its patched QEMU is and runs the two-VM smoke
check; the product only runs it as a command, so that it installs and runs without it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from colo_orch.core.config import Config, ConfigError, load

Check = tuple[str, Callable[[], str | None]]  # (what, fn -> None if fine, else the fix)


class Warn(str):
    """A check's finding that leaves the host able to run, but open: printed, not failed."""


def _bpf(proc: Path = Path("/proc")) -> str | None:
    if not (proc / "sys" / "kernel" / "unprivileged_bpf_disabled").exists():
        return "kernel without the bpf() system call: use a kernel with CONFIG_BPF_SYSCALL"
    if (proc / "sys" / "net" / "core" / "bpf_jit_enable").exists():
        return None
    # net.core.bpf_jit_enable exists in the host's network namespace only: run in another
    # one (ip netns exec, a container), ask the kernel's symbols for the JIT compiler.
    try:
        with open(proc / "kallsyms", "rb") as syms:
            if any(line.split()[2].split(b".")[0] == b"bpf_int_jit_compile"
                   for line in syms if len(line.split()) >= 3):
                return None
    except OSError:
        return None  # unreadable: the bpf() call exists, and the proxy will say the rest
    return "kernel without BPF JIT: use a kernel with CONFIG_BPF_JIT"


def _bcc() -> str | None:
    if importlib.util.find_spec("bcc") is None:
        return "apt-get install python3-bpfcc and use a venv with --system-site-packages"
    build = Path(f"/lib/modules/{os.uname().release}/build")
    if not build.exists():
        return f"{build} missing: run scripts/bootstrap (links Debian's kernel headers)"
    return None


def _br_netfilter() -> str | None:
    if not Path("/proc/sys/net/bridge").exists() and not Path("/sys/module/br_netfilter").exists():
        return "br_netfilter not available: modprobe br_netfilter (needed to queue bridged output)"
    return None


def _tool(name: str, pkg: str) -> Callable[[], str | None]:
    return lambda: None if shutil.which(name) else f"apt-get install {pkg}"


LAB_MISSING = ("colo-lab (the test bed) is installed neither in {bindir} nor on PATH: "
               "install the colo source tree with scripts/bootstrap (or pip install -e . in it)")


def lab_command(python: str = sys.executable) -> list[str] | None:
    """The test bed's command, if installed: beside this Python (a venv's bin), else on PATH."""
    beside = Path(python).with_name("colo-lab")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("colo-lab")
    return [found] if found else None


def smoke_command(lab: list[str]) -> list[str]:
    return [*lab, "smoke", "--name", "check", "--checkpoints", "5"]


def _lab_qemu(lab: list[str] | None) -> str | None:
    """The lab's cached patched QEMU (it only reads its cache), or None."""
    if lab is None:
        return None
    try:
        res = subprocess.run([*lab, "qemu-path"], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = res.stdout.strip()
    return path if res.returncode == 0 and path else None


def _qemu(lab: list[str] | None = None) -> str | None:
    env = os.environ.get("COLO_QEMU")
    if env:
        return None if os.access(env, os.X_OK) else f"COLO_QEMU={env} is not executable"
    if _lab_qemu(lab) is None and not shutil.which("qemu-system-x86_64"):
        return "no QEMU: run 'colo-lab build' (patched QEMU) or install qemu-system-x86"
    return None


def _smoke(lab: list[str] | None) -> bool:
    """The two-VM COLO smoke check, run by the lab with its output going straight to ours."""
    if lab is None:
        print("FAIL QEMU can run COLO on this host: "
              + LAB_MISSING.format(bindir=Path(sys.executable).parent))
        return False
    print("running the two-VM COLO smoke check (colo-lab smoke)...", flush=True)
    proc = subprocess.Popen(smoke_command(lab))
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        # The lab got the same SIGINT: let it take its namespaces and VMs down first.
        rc = proc.wait()
    print(f"{'ok  ' if rc == 0 else 'FAIL'} QEMU can run COLO on this host"
          + ("" if rc == 0 else ": see the lines above; try the lab's patched QEMU"))
    return rc == 0


def is_local_address(host: str) -> bool | None:
    """Whether `host` (a name or an address) is an address of this machine: one we can bind
    to. None when the name does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except socket.gaierror:
        return None
    for family, _, _, _, addr in infos:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((addr[0], 0))
            except OSError:
                continue
            return True
    return False


def arbiter_problem(cfg: Config) -> str | None:
    """Why the configured arbiter cannot guard this pair, or None."""
    if cfg.arbiter == "local":
        host = cfg.peer_heartbeat.rsplit(":", 1)[0].strip("[]")
        local = is_local_address(host)
        if local:
            return None
        what = "does not resolve" if local is None else "is not an address of this machine"
        return (f'arbiter = "local" works only with both orchestrators on one machine, but '
                f"peer_heartbeat's host {host} {what}: use arbiter = \"etcd\" with "
                "etcd_endpoints (docs/ORCHESTRATOR.md, \"The arbiter\")")
    from colo_orch.daemon.etcd_arbiter import (
        EtcdClient,
        EtcdConfigError,
        EtcdError,
        settings_from_config,
    )

    try:
        settings = settings_from_config(cfg)
    except EtcdConfigError as exc:
        return str(exc)
    t = cfg.timing
    client = EtcdClient(settings, request_timeout=t.lease_ttl / 4)
    try:
        client.check(timeout=len(settings.endpoints) * t.lease_ttl / 4)
    except EtcdError as exc:
        return f"{exc}; start etcd or fix etcd_endpoints"
    return None


def api_problem(cfg: Config) -> str | None:
    """Why the API's token or TLS files cannot be used, or None."""
    from colo_orch.daemon.api import ApiError, read_token, tls_context

    try:
        if cfg.api_token_file:
            read_token(cfg.api_token_file)
        if cfg.api_tls_cert_file:
            tls_context(cfg.api_tls_cert_file, cfg.api_tls_key_file)
    except ApiError as exc:
        return str(exc)
    return None


X509_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem",
              "client-key.pem")


def migration_tls_problem(cfg: Config) -> str | None:
    """Whether the VM's state between the hosts is authenticated, and its files are there."""
    if not cfg.migration_tls:
        ports = cfg.incoming_uri.removeprefix("tcp:") + (
            f" and the NBD port {cfg.nbd_port}" if cfg.disks and cfg.backend == "qemu" else "")
        return Warn(f"migration_tls is not set: whoever reaches {ports} while this host waits "
                    "as secondary can send its VM any memory"
                    + (" and write its disks" if cfg.disks else "")
                    + '; set migration_tls = "x509" (or "psk") with migration_tls_dir, and load '
                    "the rules of colo-orch firewall (docs/PORTS.md)")
    d = Path(cfg.migration_tls_dir)
    files = X509_FILES if cfg.migration_tls == "x509" else ("keys.psk",)
    missing = [f for f in files if not (d / f).is_file()]
    if missing:
        return (f"migration_tls_dir {d} lacks {', '.join(missing)}: "
                + ("the pair's CA certificate and this host's server and client certificates "
                   "with their keys" if cfg.migration_tls == "x509" else
                   "a line USER:HEXKEY, the same on both hosts")
                + " (docs/PORTS.md)")
    for f in files:
        if (f.endswith("-key.pem") or f == "keys.psk") and (d / f).stat().st_mode & 0o077:
            return f"{d / f} is readable by other users: chmod 600 {d / f}"
    if cfg.migration_tls == "psk":
        user = cfg.migration_tls_psk_user
        try:
            lines = (d / "keys.psk").read_text().splitlines()
        except OSError as exc:
            return f"{d / 'keys.psk'}: {exc.strerror}"
        keys = [ln.split(":", 1)[1] for ln in lines if ln.startswith(user + ":")]
        if not keys or not all(c in "0123456789abcdefABCDEF" for c in keys[0]) or not keys[0]:
            return (f"{d / 'keys.psk'} has no line {user}:HEXKEY (migration_tls_psk_user); "
                    f'write one: echo "{user}:$(head -c 32 /dev/urandom | xxd -p -c 64)"')
    return None


def qemu_tls_problem(cfg: Config, qemu: str) -> str | None:
    """Whether this QEMU can create both credentials objects from migration_tls_dir: it
    needs GnuTLS, and it checks the certificates' usage and dates as it loads them."""
    from colo_orch.backends.qemu.tls import from_config

    tls = from_config(cfg.migration_tls, cfg.migration_tls_dir, cfg.migration_tls_hostname,
                      cfg.migration_tls_psk_user)
    assert tls is not None
    argv = [qemu, "-machine", "none", "-nodefaults", "-display", "none", "-qmp", "stdio",
            "-object", tls.object_arg("server"), "-object", tls.object_arg("client")]
    quit_ = '{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'
    try:
        res = subprocess.run(argv, input=quit_, capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {qemu}: {exc}"
    if res.returncode == 0:
        return None
    err = res.stderr.strip().splitlines()[-1:] or [f"exit {res.returncode}"]
    if "GNUTLS" in err[0]:
        return (f"{qemu} is built without GnuTLS ({err[0]}): use a QEMU built with "
                "--enable-gnutls (the lab's build has it: colo-lab build)")
    return f"{qemu}: {err[0]}"


def _vm_qemu(cfg: Config, lab: list[str] | None) -> str | None:
    """The QEMU the VM runs (vm_command's first word), else the one `QEMU binary` found."""
    if cfg.vm_command:
        return shutil.which(cfg.vm_command[0]) or cfg.vm_command[0]
    return os.environ.get("COLO_QEMU") or _lab_qemu(lab) or shutil.which("qemu-system-x86_64")


def _qemu_tls(cfg: Config, lab: list[str] | None) -> str | None:
    if migration_tls_problem(cfg) is not None:
        return Warn("not checked: the TLS files are not in order (the line above)")
    qemu = _vm_qemu(cfg, lab)
    return qemu_tls_problem(cfg, qemu) if qemu else "no QEMU found (see the QEMU binary line)"


def xen_protection_problem(cfg: Config) -> str | None:
    """Whether a Xen primary's domain can be protected at all (docs/xen.md, "The
    orchestrator on Xen"): libxl's COLO takes only one created paused that never ran."""
    if cfg.backend != "xen" or cfg.xen_create_paused:
        return None
    return Warn("xen_create_paused = false: the primary's domain runs at once, and libxl's "
                "COLO takes only a domain created paused that has never run, so this pair "
                "is never protected while this host is its primary; remove the line "
                "(default true)")


def firewall_problem(cfg: Config) -> str | None:
    """Whether the rules of `colo-orch firewall` are loaded (its table exists)."""
    from colo_orch.core.ports import table_name

    if not shutil.which("nft"):
        return Warn("nft is not installed: the ports are open to every host that can reach "
                    "them; apt-get install nftables, then load the rules of colo-orch firewall")
    table = table_name(cfg.name)
    try:
        res = subprocess.run(["nft", "list", "table", "inet", table], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Warn(f"cannot ask nft for table inet {table}: {exc}")
    if res.returncode != 0:
        return Warn(f"no nftables table inet {table}: the ports are open to every host that can "
                    f"reach them; colo-orch firewall --config FILE > {cfg.name}.nft && "
                    f"nft -f {cfg.name}.nft (docs/PORTS.md)")
    return None


def run_check(config: str | None, *, smoke: bool = False) -> int:
    lab = lab_command()
    checks: list[Check] = [
        ("BPF in the kernel", _bpf),
        ("bcc and kernel headers", _bcc),
        ("bridge netfilter", _br_netfilter),
        ("iptables", _tool("iptables", "iptables")),
        ("iproute2 (ip, tc)", _tool("tc", "iproute2")),
        ("QEMU binary", lambda: _qemu(lab)),
    ]
    if config:
        try:
            cfg: Config | None = load(config)
            problem = None
        except ConfigError as exc:
            cfg, problem = None, str(exc)
        checks.insert(0, ("config", lambda: problem))  # the error itself names the file
        if cfg is not None:
            checks.insert(1, ("arbiter", lambda: arbiter_problem(cfg)))
            checks.insert(2, ("API credentials", lambda: api_problem(cfg)))
            checks.insert(3, ("TLS between the hosts", lambda: migration_tls_problem(cfg)))
            checks.insert(4, ("firewall", lambda: firewall_problem(cfg)))
            if cfg.backend == "xen":
                checks.insert(5, ("Xen protection", lambda: xen_protection_problem(cfg)))
            if cfg.migration_tls and cfg.backend == "qemu":
                checks.append(("QEMU loads the TLS credentials", lambda: _qemu_tls(cfg, lab)))
    failed = 0
    for what, fn in checks:
        problem = fn()
        status = "ok  " if problem is None else "WARN" if isinstance(problem, Warn) else "FAIL"
        print(f"{status} {what}" + (f": {problem}" if problem else ""))
        failed += problem is not None and not isinstance(problem, Warn)
    if smoke and not failed:
        failed += not _smoke(lab)
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}", file=sys.stderr)
    return 0 if not failed else 1
