"""What one host of a pair listens on for others, and the nftables rules that keep each
port to the hosts that need it (`colo-orch firewall`, docs/PORTS.md).

Pure: the command line resolves names and reads files; this module gets addresses.
The rules live in a table of their own (`inet colo_<pair>`) whose input chain only drops:
a packet it accepts still passes through the host's other tables, so loading it never
opens anything, and `nft delete table inet colo_<pair>` takes it out again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields

from colo_orch.core.config import Config

# Who may connect: the peer host's orchestrator or QEMU; operators and Prometheus (the
# peer, plus the addresses given with --admin); or this host alone (over loopback).
PEER, OPERATOR, LOCAL = "peer", "operator", "local"


@dataclass(frozen=True)
class Listener:
    what: str  # a short name: "migration", "nbd", ...
    key: str  # the config field (or command) it comes from
    proto: str  # "tcp" or "udp"
    host: str  # the bind address; "" or a wildcard = every address of this host
    port: int
    allow: str  # PEER, OPERATOR or LOCAL
    why: str  # one line: who connects, and what it can do


def split_hostport(value: str) -> tuple[str, int]:
    """"ADDR:PORT", "[V6]:PORT" or "tcp:ADDR:PORT" as (ADDR, PORT)."""
    rest = value.removeprefix("tcp:")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


# Config fields that are addresses this host binds. A field ending in _listen that is not
# named here is still listed (as an operator port): a listener added later is never left
# out of the rules unnoticed.
_KNOWN = ("heartbeat_listen", "api_listen", "metrics_listen", "incoming_uri", "nbd_port",
          "xen_checkpoint_listen")


def listeners(cfg: Config, proxy_metrics: Sequence[tuple[str, str]] = ()) -> list[Listener]:
    """This host's listeners reachable from other hosts. proxy_metrics: (command key,
    ADDR:PORT) of the colo-proxy metrics endpoints its commands configure."""
    out: list[Listener] = []
    h, p = split_hostport(cfg.heartbeat_listen)
    out.append(Listener("heartbeat", "heartbeat_listen", "udp", h, p, PEER,
                        "the peer's orchestrator; each datagram carries an HMAC under the "
                        "pair's key"))
    h, p = split_hostport(cfg.incoming_uri)
    tls = f"TLS {cfg.migration_tls}" if cfg.migration_tls else "no TLS"
    if cfg.backend == "xen":
        out.append(Listener("migration", "incoming_uri", "tcp", h, p, PEER,
                            f"the peer's xl remus: the VM's memory and disk while this host "
                            f"is secondary ({tls})"))
    else:
        out.append(Listener("migration", "incoming_uri", "tcp", h, p, PEER,
                            f"the peer's QEMU: COLO's migration stream, the VM's memory, "
                            f"while this host is secondary ({tls})"))
        if cfg.disks:
            out.append(Listener("nbd", "nbd_port", "tcp", h, cfg.nbd_port, PEER,
                                f"the peer's QEMU: writes to this host's disk images while "
                                f"this host is secondary ({tls})"))
    if cfg.backend == "xen" and cfg.xen_checkpoint_listen:
        h, p = split_hostport(cfg.xen_checkpoint_listen)
        out.append(Listener("libxl", "xen_checkpoint_listen", "tcp", h, p, LOCAL,
                            "libxl on this host asks when to checkpoint"))
    if cfg.api_listen:  # "" = off
        h, p = split_hostport(cfg.api_listen)
        out.append(Listener("api", "api_listen", "tcp", h, p, OPERATOR,
                            "coloctl: the orchestrator's commands (bearer token) and state"))
    if cfg.metrics_listen:
        h, p = split_hostport(cfg.metrics_listen)
        out.append(Listener("metrics", "metrics_listen", "tcp", h, p, OPERATOR,
                            "Prometheus: the orchestrator's /metrics and health (read only)"))
    for f in fields(Config):
        value = getattr(cfg, f.name)
        if f.name.endswith("_listen") and f.name not in _KNOWN and isinstance(value, str) and value:
            h, p = split_hostport(value)
            out.append(Listener(f.name.removesuffix("_listen"), f.name, "tcp", h, p, OPERATOR,
                                "an HTTP listener of the orchestrator"))
    for key, addr in proxy_metrics:
        h, p = split_hostport(addr)
        out.append(Listener("proxy-metrics", key, "tcp", h, p, OPERATOR,
                            "Prometheus: colo-proxy's /metrics (read only)"))
    return out


def is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _family(addr: str) -> str:
    return "ip6" if ":" in addr else "ip"


def table_name(pair: str) -> str:
    return "colo_" + re.sub(r"[^A-Za-z0-9_]", "_", pair)


def nft_ruleset(cfg: Config, found: Sequence[Listener], peers: Sequence[str],
                admins: Sequence[str] = ()) -> str:
    """An `nft -f` file: each listener accepts from whom it must and drops the rest.

    peers: the peer host's addresses (those it connects from); admins: addresses or
    prefixes of operators and Prometheus, for the OPERATOR listeners.
    """
    table = table_name(cfg.name)
    lines = [
        f"# colo-orch firewall: pair {cfg.name!r}, this host's initial role {cfg.role}.",
        f"# Peer: {', '.join(peers)}. Operators (API, metrics): "
        f"{', '.join(admins) if admins else 'the peer only (add --admin ADDR)'}.",
        "# Load: nft -f FILE (replaces the table); remove: "
        f"nft delete table inet {table}",
        f"table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "\tchain input {",
        "\t\ttype filter hook input priority filter - 10; policy accept;",
        "\t\t# this host itself (coloctl, a probe) reaches every port over loopback",
        '\t\tiifname "lo" accept',
    ]
    for ln in found:
        lines.append(f"\t\t# {ln.what} ({ln.proto.upper()} {ln.port}, {ln.key}): {ln.why}")
        if is_loopback(ln.host):
            lines.append("\t\t#   bound to loopback: no other host can reach it")
            continue
        dst = "" if _wildcard(ln.host) else f"{_family(ln.host)} daddr {ln.host} "
        port = f"{ln.proto} dport {ln.port}"
        allowed = {PEER: peers, OPERATOR: [*peers, *admins], LOCAL: []}[ln.allow]
        for fam in ("ip", "ip6"):
            if dst and not dst.startswith(fam + " "):
                continue  # bound to an address of the other family
            # A rule per source: an anonymous set would refuse a peer inside an admin prefix.
            lines += [f"\t\t{dst}{port} {fam} saddr {a} accept"
                      for a in allowed if _family(a) == fam]
        lines.append(f"\t\t{dst}{port} drop")
    lines += ["\t}", "}", ""]
    return "\n".join(lines)
