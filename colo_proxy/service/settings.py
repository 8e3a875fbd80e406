"""The proxy's configuration: a TOML file (see contrib/colo-proxy.toml) plus flags."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from colo_proxy.compare import CompareConfig, FlowMatch

DEFAULT_SOCKET = "/run/colo-proxy/control.sock"
BUSY_POLL_US = 0  # set from docs/BENCHMARKS.md's measurements


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ProxySettings:
    role: str = "primary"
    tap: str = "tapP"  # the VM's tap (bridge port) on this host
    forward: str = "fwd0"  # the forward link to the other host
    # The host's port toward the clients (on the VM's bridge). As primary, connections
    # carried over a role swap are rewritten there; "" = none (they break at the swap).
    uplink: str = ""
    vm_mac: str = "52:54:00:c0:10:01"
    control_socket: str = DEFAULT_SOCKET
    instance: str = "colo"  # this VM's proxy: tag of our iptables rules, name of our lock
    lock_dir: str = "/run/colo-proxy"  # where each instance's lock lives (one per host)
    queue: int = 0  # NFQUEUE number (primary)
    # Proxy process dead: "closed" holds the PVM's output (the consistent default),
    # "open" lets it pass uncompared (iptables --queue-bypass).
    on_crash: str = "closed"
    # Kernel queue full: "drop" (TCP retransmits) or "accept" uncompared (NFQA_CFG_F_FAIL_OPEN).
    on_queue_full: str = "drop"
    queue_maxlen: int = 8192
    gso: bool = True
    # After any packet, keep polling the queue and the SVM socket without sleeping for this
    # many microseconds before blocking in epoll (waking a sleeping proxy costs more than
    # the hop itself). Bounded, and each empty poll yields the CPU; 0 disables.
    busy_poll_us: int = BUSY_POLL_US
    # Poll also while PVM packets wait for their SVM twins (off: the SVM needs the CPU).
    busy_poll_held: bool = False
    # Most packets read from each source per call (one NFQUEUE datagram = one packet).
    batch: int = 256
    metrics_listen: str = ""  # ADDR:PORT of the Prometheus /metrics endpoint; "" = none
    # ICMPv6 to link-local multicast (MLD reports, router solicitations, DAD) is timed by
    # random delays in each kernel and never reaches a client's connection state: pass the
    # PVM's, drop the SVM's, instead of checkpointing for it.
    pass_icmp6_multicast: bool = True
    compare: CompareConfig = field(default_factory=CompareConfig)

    def validate(self) -> ProxySettings:
        if self.role not in ("primary", "secondary"):
            raise ConfigError(f"role must be primary or secondary, not {self.role!r}")
        if self.on_crash not in ("closed", "open"):
            raise ConfigError(f"on_crash must be closed or open, not {self.on_crash!r}")
        if self.on_queue_full not in ("drop", "accept"):
            raise ConfigError(f"on_queue_full must be drop or accept, not {self.on_queue_full!r}")
        if not 0 <= self.queue <= 65535:
            raise ConfigError(f"queue must be 0..65535, not {self.queue}")
        if not 0 <= self.busy_poll_us <= 10_000:
            raise ConfigError(f"busy_poll_us must be 0..10000, not {self.busy_poll_us}")
        if not 1 <= self.batch <= 65536:
            raise ConfigError(f"batch must be 1..65536, not {self.batch}")
        port = self.metrics_listen.rpartition(":")[2]
        if self.metrics_listen and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"metrics_listen must be ADDR:PORT, not {self.metrics_listen!r}")
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", self.instance):
            raise ConfigError(f"instance must be letters, digits, '_', '.' or '-' (it names "
                              f"<lock_dir>/<instance>.lock), not {self.instance!r}")
        if not self.lock_dir.startswith("/"):
            raise ConfigError(f"lock_dir must be an absolute path, not {self.lock_dir!r}")
        if len(self.vm_mac.split(":")) != 6:
            raise ConfigError(f"vm_mac {self.vm_mac!r} is not a MAC address")
        return self


def load(path: str | Path | None, overrides: dict[str, Any]) -> ProxySettings:
    """Settings from a TOML file ([proxy] and [compare] tables), then flag overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    proxy = dict(data.get("proxy", {}))
    compare = dict(data.get("compare", {}))
    proxy.update({k: v for k, v in overrides.items() if v is not None and k != "compare"})
    compare.update(overrides.get("compare") or {})
    known = {f.name for f in fields(ProxySettings)} - {"compare"}
    unknown = set(proxy) - known
    if unknown:
        raise ConfigError(f"unknown [proxy] keys: {', '.join(sorted(unknown))}")
    cknown = {f.name for f in fields(CompareConfig)}
    if set(compare) - cknown:
        raise ConfigError(f"unknown [compare] keys: {', '.join(sorted(set(compare) - cknown))}")
    try:
        matches = [_flow_match(m) for m in compare.pop("pass_through", [])]
        if proxy.get("pass_icmp6_multicast", True):
            matches.append(ICMP6_MULTICAST)
        cmp_cfg = replace(CompareConfig(), pass_through=tuple(matches), **compare)
        return ProxySettings(**proxy, compare=cmp_cfg).validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


ICMP6_MULTICAST = FlowMatch(proto=58, dst=ipaddress.ip_network("ff02::/16"))


def _flow_match(m: Any) -> FlowMatch:
    """A [[compare.pass_through]] table: proto, src, sport, dst, dport (all optional)."""
    if not isinstance(m, dict) or set(m) - {"proto", "src", "sport", "dst", "dport"}:
        raise ConfigError(f"bad pass_through entry {m!r}: keys are proto, src, sport, dst, dport")
    net = {k: ipaddress.ip_network(m[k]) for k in ("src", "dst") if k in m}
    return FlowMatch(proto=m.get("proto"), sport=m.get("sport"), dport=m.get("dport"), **net)
