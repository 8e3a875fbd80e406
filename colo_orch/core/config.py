"""The orchestrator's per-host configuration: one TOML file, checked at load.

Every error names the field and the fix. Timing invariants (in the manner of
Patroni's `loop_wait + 2 * retry_timeout <= ttl`) are checked here, because a
bad combination shows only as a failover that happens too late or too eagerly.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from colo_orch.core.disks import ID_RE, Disk

ROLES = ("primary", "secondary")
ARBITERS = ("local", "etcd")
# How long the loop takes to make its proxy hold output once it sees the lease is no
# longer certain: one command over the proxy's local control socket.
FENCE_ALLOWANCE_S = 0.2
# How soon the etcd keeper retries a failed request.
RETRY_S = 0.1
BACKENDS = ("qemu", "xen")
_INF = float("inf")


class ConfigError(ValueError):
    """A configuration problem: str() names the file, the field and the fix."""


@dataclass(frozen=True)
class Timing:
    loop_wait: float = 0.05  # seconds between reconciliation cycles
    heartbeat_interval: float = 0.1
    heartbeat_timeout: float = 1.0  # peer lost after this long without a heartbeat
    # The checkpoint budget (colo_orch.core.decide.checkpoint_wait): a token bucket of
    # checkpoint_burst checkpoints, refilled by one every checkpoint_min_interval, or
    # more slowly when the checkpoints are long: a storm keeps the PVM paused at most
    # checkpoint_max_pause_share of the time (decide.refill_interval).
    checkpoint_min_interval: float = 0.05
    checkpoint_burst: float = 3.0
    checkpoint_max_pause_share: float = 0.5
    checkpoint_max_interval: float = 10.0  # periodic safety-net checkpoint
    qmp_timeout: float = 5.0  # a QMP command that takes longer marks the VM hung
    lease_ttl: float = 3.0  # arbiter lease lifetime (etcd: whole seconds); renewed every ttl/3
    # The holder's hold ends this long before the store could expire its lease: the time
    # to notice and fence (see _check_lease_timing).
    lease_margin: float = 1.0
    # An API client has this long to send its request and read the answer; then the
    # connection is cut (a slow client holds no worker: docs/ORCHESTRATOR.md).
    api_timeout: float = 5.0
    # The first copy of a protection, whose time grows with the VM: the disks' resync
    # (every byte of each replicated image to the secondary) and the memory's (the COLO
    # migration up to COLO state). A 35 GB disk takes about 300 s at 1 Gbit/s, 4 GB of
    # memory about 35 s. Past the limit the protection fails (DEGRADED, retried later).
    resync_timeout: float = 1800.0
    sync_timeout: float = 600.0
    # QEMU's max-bandwidth for the memory copy, in MB/s (0 = QEMU's default, 128 MiB/s in
    # QEMU 7.2: slower than a 10 Gbit/s control link can take).
    migration_bandwidth: float = 0.0
    # QEMU's downtime-limit for that copy, in seconds (0 = QEMU's default, 300 ms): the
    # longest the PVM may stay stopped for the last pass. QEMU stops it once what is left
    # to send fits in that time at the measured rate, so the clients wait up to this long
    # each time a protection starts. Lower needs more passes, and a guest that dirties
    # memory faster than the link sends it never converges (sync_timeout ends it).
    migration_downtime: float = 0.0
    # Seconds the new SVM runs after COLO's entry, its output not yet compared, before a
    # checkpoint starts the protection (0 = none: compared from the entry on). Under TCG a
    # new QEMU process translates the guest's code as it first runs it, and the clients
    # waited for its first answers (colo_orch.daemon.actions.Actions._warm_up).
    colo_warmup: float = 0.0
    # backend = "xen", xen_create_paused: how long the primary's domain, created paused,
    # waits for a secondary before it is unpaused to serve alone. Both orchestrators
    # usually start within seconds of each other; a minute also covers a secondary host
    # that boots or restarts its unit late, which matters, because a domain that has run
    # can be protected only after a restart of it (decide.XEN_REPROTECT). Past that, the
    # service's availability wins: clients wait at most this long at a cold start without
    # a peer (and, with one, through the initial sync: 104 s for 256 MiB, docs/xen.md).
    paused_primary_wait: float = 60.0
    # How long a colo-proxy started (or found) by the orchestrator may take to answer its
    # hello: it compiles its BPF programs first, about 2 s on a host (0.2-0.3 s idle,
    # ../shared/notes/MEASURED.md), 1-4 min in a nested Xen dom0 under TCG (docs/xen.md).
    proxy_start_timeout: float = 20.0


@dataclass(frozen=True)
class Config:
    name: str  # the protected VM pair's name
    role: str  # initial role of this host
    heartbeat_listen: str  # "ADDR:PORT" this host receives heartbeats on
    peer_heartbeat: str  # "ADDR:PORT" of the peer's heartbeat listener
    incoming_uri: str  # where our VM waits when we are the secondary ("tcp:ADDR:PORT")
    # backend = "qemu" (required there): the command monitor socket of this host's VM and
    # a second one for events. Xen has none: libxl drives qemu-xen's monitor itself.
    qmp: str = ""
    qmp_events: str = ""
    # Where the peer's VM waits when the peer is secondary: the target of our COLO migration.
    # Required (see _check); from our own config, never from the wire, so a forged heartbeat
    # cannot choose where this host sends the VM's memory.
    peer_incoming_uri: str = ""
    # The pair's shared heartbeat secret (at least 16 bytes; each host keeps its own copy).
    # Required (see _check): only the peer may tell this host what state it is in.
    heartbeat_key_file: str = ""
    # The API (docs/ORCHESTRATOR.md, "API and coloctl"). api_listen ("" = none): GET /state
    # and the operator commands, which need the token of api_token_file (mode 0600); HTTPS
    # with api_tls_cert_file and api_tls_key_file. api_socket ("" = none): a unix socket
    # for the same, where root and api_socket_uids/_gids need no token (SO_PEERCRED).
    # metrics_listen ("" = none): read-only, GET /metrics, /healthz, /readyz, /state.
    api_listen: str = "127.0.0.1:7411"
    metrics_listen: str = "127.0.0.1:7413"
    api_token_file: str = ""
    api_socket: str = ""
    api_socket_uids: list[int] = field(default_factory=list)
    api_socket_gids: list[int] = field(default_factory=list)
    api_tls_cert_file: str = ""
    api_tls_key_file: str = ""
    proxy_socket: str = ""  # colo-proxy control socket ("" = no proxy)
    # When set, the orchestrator runs colo-proxy itself in the role this host has now,
    # and restarts it in the other role when a re-protection swaps the roles.
    proxy_primary_command: list[str] = field(default_factory=list)
    proxy_secondary_command: list[str] = field(default_factory=list)
    vm_command: list[str] = field(default_factory=list)  # argv to (re)start our VM
    vm_pidfile: str = ""  # QEMU's -pidfile: lets us fence (kill) a VM whose monitor hangs
    vm_log: str = ""  # the started VM's stdout/stderr ("" = the qmp path with suffix .log)
    auto_reprotect: bool = True
    # Commands run after this host took over, and before it starts a secondary VM
    # (like keepalived's notify scripts): e.g. to move a LAN uplink.
    on_takeover: list[str] = field(default_factory=list)
    on_secondary: list[str] = field(default_factory=list)
    # Run when this host must stop releasing output because it holds neither the arbiter's
    # lease nor the failsafe (like keepalived's notify_fault), and when it may again. The
    # proxy, when there is one, is told first (`fence`); without a proxy these hooks are
    # the only way to hold output, so one of the two is required (see _check).
    on_fence: list[str] = field(default_factory=list)
    on_unfence: list[str] = field(default_factory=list)
    backend: str = "qemu"  # "qemu" (QMP) or "xen" (xl remus -c, libxl proxy protocol)
    xen_domain: str = ""  # backend = "xen": the domain name
    xen_config: str = ""  # backend = "xen": the xl domain config (see colo_orch/backends/xen/domain.py)
    xen_checkpoint_listen: str = ""  # backend = "xen": colo_checkpoint_host:port of vif 0
    # backend = "xen": the only address libxl's connection may come from ("" = the listen
    # address: libxl runs on this host and connects to it, so that is its source).
    xen_checkpoint_peer: str = ""
    # backend = "xen": create the primary's domain paused (xl create -p), the only primary
    # libxl's COLO takes; it runs from COLO's first checkpoint, or alone once
    # timing.paused_primary_wait has passed with no secondary. false: it serves at once
    # and can never be protected (docs/xen.md). Refused with backend = "qemu".
    xen_create_paused: bool = True
    # "local": a lease file on this machine, for a pair whose two orchestrators run on ONE
    # machine only. "etcd": a leader key in etcd (two or more machines).
    arbiter: str = "local"
    arbiter_path: str = ""  # lease file of the local arbiter
    etcd_endpoints: list[str] = field(default_factory=list)  # "http(s)://HOST:PORT" each
    etcd_prefix: str = "/colo"  # the pair's keys live under {etcd_prefix}/{name}/
    etcd_ca_file: str = ""  # https: the CA that signed etcd's certificates ("" = system CAs)
    etcd_cert_file: str = ""  # https: our client certificate, with etcd_key_file
    etcd_key_file: str = ""
    etcd_user: str = ""  # etcd authentication, with etcd_password_file (mode 0600)
    etcd_password_file: str = ""
    timing: Timing = field(default_factory=Timing)
    # Replicated disks ([[disks]] tables, docs/DISKS.md) and the port of the
    # secondary's NBD server (on the host of its incoming_uri).
    disks: tuple[Disk, ...] = ()
    nbd_port: int = 10809
    # TLS for the VM's state between the hosts (docs/PORTS.md): COLO's migration stream
    # into incoming_uri and the secondary's NBD disk export (QEMU), the receiver of
    # `xl remus` (Xen). "" = none: whoever reaches those ports first may send the VM's
    # memory or write its disk, so `colo-orch check` warns. "x509": migration_tls_dir
    # holds QEMU's tls-creds-x509 files (ca-cert.pem, server-cert.pem, server-key.pem,
    # client-cert.pem, client-key.pem), both ends must present a certificate of that CA.
    # "psk" (QEMU only): it holds keys.psk, lines of "USER:HEXKEY", the same on both hosts.
    migration_tls: str = ""
    migration_tls_dir: str = ""
    # x509: the name the peer's server certificate must carry ("" = the host of
    # peer_incoming_uri, which may be an IP address in the certificate's subjectAltName).
    migration_tls_hostname: str = ""
    migration_tls_psk_user: str = "qemu"  # psk: the USER of the key in keys.psk


def _fail(path: str, key: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {problem}; {fix}")


def parse(text: str, path: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}; fix the syntax at that line") from exc
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(f"{path}: arrays or tables nested too deeply; no field of ours "
                          "nests more than two levels") from None
    return from_dict(data, path)


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}; check the path") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8, "
                          "save it as such") from exc
    return parse(text, str(p))


def from_dict(data: dict[str, Any], path: str = "<config>") -> Config:
    known = {f.name for f in fields(Config)}
    for key in data:
        if key not in known:
            raise _fail(path, key, "unknown field", f"remove it; known fields: {', '.join(sorted(known))}")
    timing_data = data.get("timing", {})
    if not isinstance(timing_data, dict):
        raise _fail(path, "timing", "must be a table", "write it as [timing]")
    tknown = {f.name for f in fields(Timing)}
    for key, value in timing_data.items():
        if key not in tknown:
            raise _fail(path, f"timing.{key}", "unknown field",
                        f"remove it; known: {', '.join(sorted(tknown))}")
        # Written so that NaN fails too (every comparison with it is false); an infinite
        # timeout would never fire.
        # An int past 2**53 s is no timeout either, and past 1e308 float() raises.
        if (not isinstance(value, int | float) or isinstance(value, bool)
                or not 0 < value < _INF or (isinstance(value, int) and value > 2**53)):
            unit, eg = (("MB/s", "1000 (or leave it out: QEMU's default)")
                        if key == "migration_bandwidth" else
                        ("seconds", "0.05 (or leave it out: QEMU's default, 0.3)")
                        if key == "migration_downtime" else
                        ("seconds", "1.0 (or leave it out: no warm-up)")
                        if key == "colo_warmup" else
                        ("seconds", str(getattr(Timing(), key))))
            raise _fail(path, f"timing.{key}",
                        f"must be a finite, positive number of {unit}, got {value!r:.40}",
                        f"e.g. {key} = {eg}")
    timing = Timing(**{k: float(v) for k, v in timing_data.items()})
    values: dict[str, Any] = {"timing": timing, "disks": _disks(data.get("disks", []), path)}
    for f in fields(Config):
        if f.name in ("timing", "disks"):
            continue
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise _fail(path, f.name, "missing", f"add {f.name} = ... (see docs/ORCHESTRATOR.md)")
            continue
        values[f.name] = data[f.name]
    cfg = Config(**values)
    _check(cfg, path)
    _check_xen_only(cfg, data, path)
    _no_infinite_floats(data, path, "")
    return cfg


def _check_xen_only(cfg: Config, data: dict[str, Any], path: str) -> None:
    """Options that mean something only on Xen are refused elsewhere: a QEMU operator who
    sets one expects an effect it cannot have."""
    timing = data.get("timing", {})
    for key, given in (("xen_create_paused", "xen_create_paused" in data),
                       ("timing.paused_primary_wait", "paused_primary_wait" in timing)):
        if given and cfg.backend != "xen":
            raise _fail(path, key, f'applies only with backend = "xen" (here "{cfg.backend}")',
                        "remove it: QEMU's COLO takes a running primary, so its VM is never "
                        "created paused")
    if not isinstance(cfg.xen_create_paused, bool):
        raise _fail(path, "xen_create_paused", "must be true or false",
                    "xen_create_paused = true (libxl's COLO takes only a domain created paused)")
    if cfg.backend == "xen" and cfg.timing.paused_primary_wait < cfg.timing.heartbeat_timeout:
        raise _fail(path, "timing.paused_primary_wait",
                    f"{cfg.timing.paused_primary_wait:g} s is shorter than heartbeat_timeout "
                    f"({cfg.timing.heartbeat_timeout:g} s): a secondary could not even be heard",
                    "raise it (60 s by default)")


def _no_infinite_floats(data: object, path: str, key: str) -> None:
    """TOML can write nan and inf; no field of ours means either. The last guard, for every
    float field present and future, after the checks each field has of its own."""
    if isinstance(data, float) and not -_INF < data < _INF:
        raise _fail(path, key, f"{data} is not a finite number",
                    "no field takes nan or inf: give the value docs/ORCHESTRATOR.md describes")
    items = (data.items() if isinstance(data, dict) else
             ((f"[{i}]", v) for i, v in enumerate(data)) if isinstance(data, list) else ())
    for k, v in items:
        _no_infinite_floats(v, path, f"{key}{k}" if k.startswith("[") or not key else f"{key}.{k}")


def _disks(data: object, path: str) -> tuple[Disk, ...]:
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise _fail(path, "disks", "must be an array of tables", "write each disk as [[disks]]")
    out: list[Disk] = []
    for i, d in enumerate(data):
        where = f"disks[{i}]"
        dknown = {f.name for f in fields(Disk)}
        for key in d:
            if key not in dknown:
                raise _fail(path, f"{where}.{key}", "unknown field",
                            f"remove it; known: {', '.join(sorted(dknown))}")
        d = {"id": f"disk{i}", **d}
        for key in dknown:
            v = d.get(key)
            if not isinstance(v, str) or not v:
                raise _fail(path, f"{where}.{key}", "missing or not a string",
                            f'add {key} = "..." (see docs/DISKS.md)')
            if key != "id" and not v.startswith("/"):
                raise _fail(path, f"{where}.{key}", f"{v!r} is not an absolute path",
                            "images are opened by QEMU from any directory: give the full path")
        if not ID_RE.fullmatch(d["id"]):
            raise _fail(path, f"{where}.id", f"{d['id']!r} is not a disk id",
                        "use up to 16 lower-case letters and digits, starting with a letter")
        if len({d["image"], d["active"], d["hidden"]}) != 3:
            raise _fail(path, where, "image, active and hidden must be three different files",
                        "give each its own path")
        out.append(Disk(**d))
    if len({d.id for d in out}) != len(out):
        raise _fail(path, "disks", "two disks have the same id", "give each disk its own id")
    return tuple(out)


def _addr(path: str, key: str, value: object) -> None:
    if not isinstance(value, str) or value.count(":") < 1:
        raise _fail(path, key, f"{value!r} is not ADDR:PORT", f'write it like {key} = "10.0.0.1:7410"')
    host, port = value.rsplit(":", 1)
    if not host:
        # ":7411" would bind every interface: say it on purpose (0.0.0.0) or not at all.
        raise _fail(path, key, f"{value!r} has no address (it would mean every interface)",
                    f'give this host\'s address, e.g. {key} = "10.0.0.1{value}", or '
                    f'"0.0.0.0{value}" to bind every interface on purpose')
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise _fail(path, key, f"port {port!r} is not 1-65535", "use a free TCP/UDP port")


# The patterns below are used with fullmatch: a `$` also matches before a final "\n".
# tcp:HOST:PORT with HOST a name or an IPv4 address, or an IPv6 address in brackets. Nothing
# else: the URI reaches QEMU's command line and, on Xen, a shell command run by xl.
_TCP_URI = re.compile(r"^tcp:(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})$")


def _tcp_uri(path: str, key: str, value: str, example: str) -> None:
    if not value:
        raise _fail(path, key, "missing", f'add {key} = "{example}"')
    m = _TCP_URI.fullmatch(value)
    if m is None or not 0 < int(m.group(1)) < 65536:
        raise _fail(path, key, f"{value!r} is not tcp:ADDR:PORT",
                    f'write it like {key} = "{example}"')


_IPV4 = re.compile(r"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])$")


def libxl_address_problem(host: str) -> str | None:
    """Why the libxl bridge may not listen on, or accept libxl from, `host`; None if it
    may. libxl reads colo_checkpoint_host with inet_addr (IPv4 only), and whoever gets
    through can release held output, so never every interface."""
    if not _IPV4.fullmatch(host):
        return f"{host!r} is not an IPv4 address (libxl reads colo_checkpoint_host with inet_addr)"
    if host == "0.0.0.0":
        return "0.0.0.0 takes libxl's connection from any network"
    return None


def _check(cfg: Config, path: str) -> None:
    for key in ("name", "qmp", "qmp_events", "incoming_uri", "peer_incoming_uri", "heartbeat_key_file",
                "proxy_socket", "arbiter_path", "vm_pidfile",
                "vm_log", "etcd_prefix", "etcd_ca_file", "etcd_cert_file", "etcd_key_file",
                "etcd_user", "etcd_password_file", "api_listen", "metrics_listen",
                "api_token_file", "api_socket", "api_tls_cert_file", "api_tls_key_file",
                "xen_checkpoint_peer"):
        if not isinstance(getattr(cfg, key), str):
            raise _fail(path, key, "must be a string", f'quote it: {key} = "..."')
    if not cfg.name or not cfg.name.replace("-", "").isalnum():
        raise _fail(path, "name", f"{cfg.name!r} is not a simple name", 'use letters, digits and "-"')
    if cfg.role not in ROLES:
        raise _fail(path, "role", f"{cfg.role!r} is not a role", 'use "primary" or "secondary"')
    if bool(cfg.proxy_primary_command) != bool(cfg.proxy_secondary_command):
        raise _fail(path, "proxy_primary_command", "set with proxy_secondary_command or neither",
                    "give both commands (roles swap at re-protection) or leave both out")
    if cfg.proxy_primary_command and not cfg.proxy_socket:
        raise _fail(path, "proxy_socket", "required when the orchestrator runs the proxy",
                    'add proxy_socket = "/run/colo/proxy.sock" (the proxy\'s --control-socket)')
    if cfg.backend not in BACKENDS:
        raise _fail(path, "backend", f"{cfg.backend!r} is not a backend", 'use "qemu" or "xen"')
    if cfg.backend == "xen":
        for key in ("xen_domain", "xen_config"):
            if not isinstance(getattr(cfg, key), str) or not getattr(cfg, key):
                raise _fail(path, key, 'required with backend = "xen"',
                            f'add {key} = "..." (docs/xen.md)')
        _addr(path, "xen_checkpoint_listen", cfg.xen_checkpoint_listen)
        problem = libxl_address_problem(cfg.xen_checkpoint_listen.rsplit(":", 1)[0])
        if problem:
            raise _fail(path, "xen_checkpoint_listen", problem,
                        "listen on the address the first vif names in colo_checkpoint_host, "
                        'e.g. xen_checkpoint_listen = "127.0.0.1:9911"')
        problem = cfg.xen_checkpoint_peer and libxl_address_problem(cfg.xen_checkpoint_peer)
        if problem:
            raise _fail(path, "xen_checkpoint_peer", problem,
                        "leave it out (libxl connects from the listen address) or give the "
                        "IPv4 address libxl connects from")
    else:
        for key, example in (("qmp", "vm.qmp"), ("qmp_events", "vm-events.qmp")):
            if not getattr(cfg, key):
                raise _fail(path, key, f'required with backend = "{cfg.backend}"',
                            f'add {key} = "/run/colo/{example}" (a QEMU -qmp unix socket), '
                            'or set backend = "xen" (docs/xen.md)')
    if cfg.arbiter not in ARBITERS:
        raise _fail(path, "arbiter", f"{cfg.arbiter!r} is not an arbiter",
                    'use "etcd" (with etcd_endpoints) or, with both orchestrators on one '
                    'machine, "local"')
    if cfg.arbiter == "etcd":
        _check_etcd(cfg, path)
    for key in ("heartbeat_listen", "peer_heartbeat"):
        _addr(path, key, getattr(cfg, key))
    _check_api(cfg, path)
    _tcp_uri(path, "incoming_uri", cfg.incoming_uri, "tcp:10.0.0.2:4444")
    _tcp_uri(path, "peer_incoming_uri", cfg.peer_incoming_uri, "tcp:10.0.0.1:4444")
    if not cfg.heartbeat_key_file:
        raise _fail(path, "heartbeat_key_file", "missing",
                    'add heartbeat_key_file = "/etc/colo/web.key" (the same secret on both hosts: '
                    "head -c 32 /dev/urandom | base64 > FILE, then copy it to the peer)")
    if not isinstance(cfg.auto_reprotect, bool):
        raise _fail(path, "auto_reprotect", "must be true or false", "auto_reprotect = true")
    for key in ("vm_command", "on_takeover", "on_secondary", "on_fence", "on_unfence",
                "proxy_primary_command", "proxy_secondary_command"):
        v = getattr(cfg, key)
        if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
            raise _fail(path, key, "must be a list of strings (an argv)",
                        f'write it like {key} = ["/usr/local/bin/x", "--flag"]')
    if not cfg.proxy_socket and not cfg.on_fence:
        raise _fail(path, "on_fence", "missing, and there is no proxy_socket: nothing could hold "
                    "the VM's output when this host loses the arbiter's lease",
                    'run colo-proxy (proxy_socket) or give a command that cuts the VM off from '
                    'its clients, e.g. on_fence = ["ip", "link", "set", "uplink0", "down"] '
                    'with on_unfence to undo it')
    if not isinstance(cfg.nbd_port, int) or isinstance(cfg.nbd_port, bool) or not (
            0 < cfg.nbd_port < 65536):
        raise _fail(path, "nbd_port", f"{cfg.nbd_port!r} is not a port", "e.g. nbd_port = 10809")
    _check_migration_tls(cfg, path)
    t = cfg.timing
    if t.heartbeat_timeout < 3 * t.heartbeat_interval:
        raise _fail(path, "timing.heartbeat_timeout",
                    f"{t.heartbeat_timeout} s is less than 3 x heartbeat_interval "
                    f"({t.heartbeat_interval} s): one late packet would look like a dead peer",
                    f"raise it to at least {3 * t.heartbeat_interval:g} or lower heartbeat_interval")
    if t.loop_wait > t.heartbeat_interval:
        raise _fail(path, "timing.loop_wait",
                    f"{t.loop_wait} s is longer than heartbeat_interval ({t.heartbeat_interval} s)",
                    "lower loop_wait: a cycle must run at least once per heartbeat")
    if t.heartbeat_timeout / 2 <= t.heartbeat_interval + t.loop_wait:
        # The failsafe (docs/ORCHESTRATOR.md, F2) trusts an echo younger than half the
        # timeout; a healthy echo is up to one interval plus one loop old.
        raise _fail(path, "timing.heartbeat_timeout",
                    f"{t.heartbeat_timeout} s: half of it must exceed heartbeat_interval + "
                    f"loop_wait ({t.heartbeat_interval + t.loop_wait:g} s), or the failsafe "
                    "would flap on a healthy pair",
                    f"raise it above {2 * (t.heartbeat_interval + t.loop_wait):g}")
    if t.lease_ttl < 2 * t.loop_wait + t.heartbeat_interval:
        raise _fail(path, "timing.lease_ttl",
                    f"{t.lease_ttl} s cannot be renewed in time (needs >= 2 x loop_wait + "
                    "heartbeat_interval)",
                    f"raise it to at least {2 * t.loop_wait + t.heartbeat_interval:g}")
    _check_lease_timing(cfg, path)
    if t.checkpoint_min_interval > t.checkpoint_max_interval:
        raise _fail(path, "timing.checkpoint_min_interval",
                    f"{t.checkpoint_min_interval} s exceeds checkpoint_max_interval "
                    f"({t.checkpoint_max_interval} s)", "make min <= max")
    if t.checkpoint_burst < 1:
        raise _fail(path, "timing.checkpoint_burst",
                    f"{t.checkpoint_burst:g} allows no checkpoint at all",
                    "make it at least 1 (1: a plain minimum interval between checkpoints)")
    if not 0.0 < t.checkpoint_max_pause_share <= 1.0:
        raise _fail(path, "timing.checkpoint_max_pause_share",
                    f"{t.checkpoint_max_pause_share:g} is not a share of the time",
                    "make it above 0 and at most 1 (0.5: a checkpoint storm keeps the PVM "
                    "running at least half the time; 1: no bound but checkpoint_min_interval)")


def _check_api(cfg: Config, path: str) -> None:
    for key in ("api_listen", "metrics_listen"):
        if getattr(cfg, key):
            _addr(path, key, getattr(cfg, key))
    if cfg.api_listen and cfg.api_listen == cfg.metrics_listen:
        raise _fail(path, "metrics_listen", f"the same address as api_listen ({cfg.api_listen})",
                    "give the read-only listener a port of its own, e.g. 7413")
    for key in ("api_token_file", "api_socket", "api_tls_cert_file", "api_tls_key_file"):
        v = getattr(cfg, key)
        if v and not v.startswith("/"):
            raise _fail(path, key, f"{v!r} is not an absolute path",
                        "give the full path: the daemon does not run in your directory")
    for key in ("api_socket_uids", "api_socket_gids"):
        v = getattr(cfg, key)
        if not isinstance(v, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v):
            raise _fail(path, key, "must be a list of numeric ids",
                        f"write it like {key} = [1000] (see id -u, getent group)")
        if v and not cfg.api_socket:
            raise _fail(path, key, "has no effect without api_socket",
                        'add api_socket = "/run/colo/NAME-api.sock", or remove ' + key)
    if bool(cfg.api_tls_cert_file) != bool(cfg.api_tls_key_file):
        raise _fail(path, "api_tls_key_file" if cfg.api_tls_cert_file else "api_tls_cert_file",
                    "the certificate and its key go together",
                    "set both api_tls_cert_file and api_tls_key_file, or neither")
    if cfg.api_tls_cert_file and not cfg.api_listen:
        raise _fail(path, "api_tls_cert_file", "TLS is for api_listen, which is off",
                    "set api_listen, or remove api_tls_cert_file and api_tls_key_file")


MIGRATION_TLS = ("x509", "psk")
# These reach QEMU option strings (-object ...,username=U; drive_add ...,tls-hostname=H),
# where a comma would start another option: names and addresses only.
_TLS_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,253}$")


def _check_migration_tls(cfg: Config, path: str) -> None:
    for key in ("migration_tls", "migration_tls_dir", "migration_tls_hostname",
                "migration_tls_psk_user"):
        if not isinstance(getattr(cfg, key), str):
            raise _fail(path, key, "must be a string", f'quote it: {key} = "..."')
    kind = cfg.migration_tls
    if kind == "":
        for key in ("migration_tls_dir", "migration_tls_hostname"):
            if getattr(cfg, key):
                raise _fail(path, key, "set without migration_tls",
                            f'add migration_tls = "x509" (or "psk"), or remove {key}')
        return
    if kind not in MIGRATION_TLS:
        raise _fail(path, "migration_tls", f"{kind!r} is not a kind of TLS credentials",
                    'use "x509" (certificates) or "psk" (a pre-shared key), or leave it out')
    if kind == "psk" and cfg.backend == "xen":
        raise _fail(path, "migration_tls", 'TLS-PSK is not available with backend = "xen"',
                    'use "x509": the Xen receiver\'s TLS is Python\'s ssl module, which has '
                    "no PSK before Python 3.13")
    d = cfg.migration_tls_dir
    if not d or not d.startswith("/"):
        files = ("ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, "
                 "client-key.pem" if kind == "x509" else "keys.psk")
        raise _fail(path, "migration_tls_dir",
                    "missing" if not d else f"{d!r} is not an absolute path",
                    f'give the directory that holds {files}: migration_tls_dir = "/etc/colo/tls"')
    if cfg.migration_tls_hostname and (kind != "x509"
                                       or not _TLS_NAME.fullmatch(cfg.migration_tls_hostname)):
        raise _fail(path, "migration_tls_hostname",
                    f"{cfg.migration_tls_hostname!r} is not a host name"
                    + (" (x509 only)" if kind != "x509" else ""),
                    "give the DNS name or address in the peer's server certificate, or "
                    "leave it out to use the host of peer_incoming_uri")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", cfg.migration_tls_psk_user):
        raise _fail(path, "migration_tls_psk_user",
                    f"{cfg.migration_tls_psk_user!r} is not a user name",
                    'use letters, digits, "_", "." and "-" (the USER of keys.psk)')


_ENDPOINT = re.compile(r"^(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})/?$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9._-]+)+$")


def _check_etcd(cfg: Config, path: str) -> None:
    eps = cfg.etcd_endpoints
    example = 'etcd_endpoints = ["http://10.0.0.5:2379", "http://10.0.0.6:2379"]'
    if not eps:
        raise _fail(path, "etcd_endpoints", 'required with arbiter = "etcd"',
                    f"list the client URLs of the etcd members: {example}")
    if not isinstance(eps, list) or not all(isinstance(e, str) for e in eps):
        raise _fail(path, "etcd_endpoints", "must be a list of strings", f"write it like {example}")
    for e in eps:
        m = _ENDPOINT.fullmatch(e)
        if m is None or not 0 < int(m.group(3)) < 65536:
            raise _fail(path, "etcd_endpoints", f"{e!r} is not http(s)://HOST:PORT",
                        f"write it like {example}")
    if len(set(eps)) != len(eps):
        raise _fail(path, "etcd_endpoints", "lists an endpoint twice", "list each member once")
    schemes = {e.split(":", 1)[0] for e in eps}
    if len(schemes) > 1:
        raise _fail(path, "etcd_endpoints", "mixes http:// and https://",
                    "use https:// for every member (or http:// for every member)")
    if not _PREFIX.fullmatch(cfg.etcd_prefix):
        raise _fail(path, "etcd_prefix", f"{cfg.etcd_prefix!r} is not a key prefix",
                    'start it with "/", no trailing "/", letters, digits, ".", "_", "-": '
                    'etcd_prefix = "/colo"')
    tls = ("etcd_ca_file", "etcd_cert_file", "etcd_key_file")
    for key in (*tls, "etcd_password_file"):
        v = getattr(cfg, key)
        if v and not v.startswith("/"):
            raise _fail(path, key, f"{v!r} is not an absolute path",
                        "give the full path: the daemon does not run in your directory")
    if bool(cfg.etcd_cert_file) != bool(cfg.etcd_key_file):
        raise _fail(path, "etcd_cert_file" if not cfg.etcd_cert_file else "etcd_key_file",
                    "the client certificate and its key go together",
                    "set both etcd_cert_file and etcd_key_file, or neither")
    if schemes == {"http"}:
        for key in tls:
            if getattr(cfg, key):
                raise _fail(path, key, "TLS files need https:// endpoints",
                            "write etcd_endpoints as https://HOST:PORT, or remove " + key)
    if bool(cfg.etcd_user) != bool(cfg.etcd_password_file):
        raise _fail(path, "etcd_password_file" if cfg.etcd_user else "etcd_user",
                    "etcd_user and etcd_password_file go together",
                    "set both (the password file holds the password alone, mode 0600), "
                    "or neither")
    t = cfg.timing
    if t.lease_ttl != int(t.lease_ttl) or t.lease_ttl < 2:
        raise _fail(path, "timing.lease_ttl",
                    f"{t.lease_ttl:g} s is not a whole number of seconds >= 2 (etcd grants "
                    "leases in whole seconds, at least 2 with its default election timeout)",
                    "use e.g. lease_ttl = 3")


def _check_lease_timing(cfg: Config, path: str) -> None:
    """The holder must fence before etcd can let the peer acquire, and keep its hold
    through one failed keep-alive. See docs/ORCHESTRATOR.md, "The arbiter".

    The holder's hold is certain until safe_until = (send time of its last successful
    keep-alive) + ttl - lease_margin, while etcd cannot expire the lease before that send
    time + ttl. Past safe_until the loop notices within a cycle (<= 2 x loop_wait,
    counting the cycle under way) and makes its proxy hold output (FENCE_ALLOWANCE_S):

        lease_margin >= 2 x loop_wait + FENCE_ALLOWANCE_S

    A keep-alive is sent every ttl/3 and may time out after ttl/4; its retry, RETRY_S
    later, must still land before safe_until:

        ttl/3 + ttl/4 + RETRY_S + lease_margin <= ttl, i.e. lease_margin <= 5/12 ttl - RETRY_S

    The local arbiter renews every cycle instead: lease_margin + 2 x loop_wait < ttl.
    """
    t = cfg.timing
    need = 2 * t.loop_wait + FENCE_ALLOWANCE_S
    if t.lease_margin < need - 1e-9:
        raise _fail(path, "timing.lease_margin",
                    f"{t.lease_margin:g} s is too short to fence before the lease can pass to "
                    f"the peer (needs >= 2 x loop_wait + {FENCE_ALLOWANCE_S:g} s to hold "
                    f"output = {need:g} s)",
                    f"raise it to at least {need:g} or lower loop_wait")
    if cfg.arbiter != "etcd":
        if t.lease_margin + 2 * t.loop_wait >= t.lease_ttl:
            raise _fail(path, "timing.lease_margin",
                        f"{t.lease_margin:g} s leaves no time to renew the lease (needs "
                        f"lease_margin + 2 x loop_wait < lease_ttl = {t.lease_ttl:g} s)",
                        "lower it or raise lease_ttl")
        return
    most = 5 * t.lease_ttl / 12 - RETRY_S
    if t.lease_margin > most + 1e-9:
        ttl_need = -int(-12 * (t.lease_margin + RETRY_S) // 5)  # ceil
        raise _fail(path, "timing.lease_margin",
                    f"{t.lease_margin:g} s leaves a healthy holder no time to retry a failed "
                    f"keep-alive (needs <= 5/12 x lease_ttl - {RETRY_S:g} s = {most:.3g} s: "
                    "a keep-alive every lease_ttl/3 may time out after lease_ttl/4)",
                    f"lower it to at most {most:.3g}, or raise lease_ttl to at least {ttl_need}")
