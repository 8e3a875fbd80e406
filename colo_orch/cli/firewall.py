"""`colo-orch firewall`: print the nftables rules that keep this host's ports to its peer.

The rules come from colo_orch.core.ports; here the peer's names are resolved and the
proxy's metrics address is read from its command line (or its config file).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import tomllib
from collections.abc import Sequence

from colo_orch.core.config import Config, ConfigError, load
from colo_orch.core.ports import listeners, nft_ruleset, split_hostport


class FirewallError(ValueError):
    """str() says what could not be worked out, and how to give it."""


def resolve(host: str, what: str) -> list[str]:
    """The addresses of a name or an address (an address is itself)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FirewallError(f"{what}: {host!r} does not resolve ({exc.strerror}); give the "
                            "peer's addresses with --peer ADDR") from exc
    return sorted({str(info[4][0]) for info in infos})


def peer_addresses(cfg: Config) -> list[str]:
    """Where the peer connects from: the hosts of its heartbeat and migration addresses."""
    out: list[str] = []
    for key in ("peer_heartbeat", "peer_incoming_uri"):
        for a in resolve(split_hostport(getattr(cfg, key))[0], key):
            if a not in out:
                out.append(a)
    return out


def _flag(argv: Sequence[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def proxy_metrics(cfg: Config) -> list[tuple[str, str]]:
    """(command key, ADDR:PORT) of colo-proxy's metrics endpoint in each proxy command:
    --metrics-listen, else metrics_listen in the [proxy] table of its -c/--config file."""
    out: list[tuple[str, str]] = []
    for key in ("proxy_primary_command", "proxy_secondary_command"):
        argv = getattr(cfg, key)
        addr = _flag(argv, "--metrics-listen")
        path = _flag(argv, "-c", "--config")
        if addr is None and path is not None:
            try:
                with open(path, "rb") as f:
                    addr = tomllib.load(f).get("proxy", {}).get("metrics_listen") or None
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise FirewallError(f"{key}: cannot read the proxy's config {path} ({exc}) "
                                    "for its metrics_listen") from exc
        if addr and all(addr != a for _, a in out):
            out.append((key, addr))
    return out


def ruleset(cfg: Config, peers: Sequence[str] = (), admins: Sequence[str] = ()) -> str:
    for a in admins:
        try:
            ipaddress.ip_network(a, strict=False)
        except ValueError as exc:
            raise FirewallError(f"--admin {a!r} is not an address or prefix "
                                "(e.g. 10.0.9.5 or 10.0.9.0/24)") from exc
    for a in peers:
        try:
            ipaddress.ip_address(a)
        except ValueError as exc:
            raise FirewallError(f"--peer {a!r} is not an address") from exc
    return nft_ruleset(cfg, listeners(cfg, proxy_metrics(cfg)),
                       list(peers) or peer_addresses(cfg), admins)


def run_firewall(config: str, peers: Sequence[str], admins: Sequence[str]) -> int:
    try:
        cfg = load(config)
        print(ruleset(cfg, peers, admins), end="")
    except (ConfigError, FirewallError) as exc:
        print(f"colo-orch: error: {exc}", file=sys.stderr)
        return 2
    return 0
