"""The proxy's configuration: a TOML file (see contrib/colo-proxy.toml) plus flags.

Every value is checked where it enters, against one table (`SPECS`): a TOML value must
already have its field's type (`queue = "0"` is refused, not converted), a flag's text is
parsed as that type, and both are range-checked; no float may be NaN or infinite. Unknown
tables and keys are refused with the nearest known name. Each error is one line,
`SOURCE: KEY: problem; fix`, SOURCE being the file (or "command line") and KEY the TOML key
(`proxy.queue`) or the flag (`--queue`), so that a misspelt `[proxi]` stops the proxy at
start instead of leaving it on the lab's defaults.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from colo_proxy.compare import CompareConfig, FlowMatch, Policy
from colo_proxy.service.permit import ENFORCE as PERMIT_ENFORCE

DEFAULT_SOCKET = "/run/colo-proxy/control.sock"
BUSY_POLL_US = 0  # set from docs/BENCHMARKS.md's measurements
FLAGS = "command line"  # the SOURCE of errors in flag values
TABLES = ("proxy", "compare")


class ConfigError(ValueError):
    """A configuration problem: str() is `SOURCE: KEY: problem; fix`."""


@dataclass(frozen=True)
class ProxySettings:
    role: str = "primary"
    tap: str = "tapP"  # the VM's tap (bridge port) on this host
    forward: str = "fwd0"  # the forward link to the other host
    # The host's port toward the clients (on the VM's bridge). As primary, connections
    # carried over a role swap are rewritten there; "" = none (they break at the swap).
    uplink: str = ""
    vm_mac: str = "52:54:00:c0:10:01"
    # The other host's forward-link MAC (required): the secondary learns the PVM's ISNs and
    # takes announcements only from it, the primary compares only its frames as the SVM's
    # output. Anything else on the link is counted and dropped.
    peer_mac: str = ""
    # The pair's key (the orchestrators' heartbeat_key_file): carried-flow announcements on
    # the forward link are authenticated with it. "" = none: carried flows break at the
    # next failover after a role swap.
    key_file: str = ""
    control_socket: str = DEFAULT_SOCKET
    instance: str = "colo"  # this VM's proxy: tag of our iptables rules, name of our lock
    # The `pair` and `host` labels on every metric (colo-orch passes its pair's name and
    # its host id). "": the instance name, and this machine's host name.
    pair: str = ""
    host: str = ""
    lock_dir: str = "/run/colo-proxy"  # where each instance's lock lives (one per host)
    queue: int = 0  # NFQUEUE number (primary)
    # What the primary does with the PVM's output: "compare" it with the SVM's (COLO), or
    # "buffer" all of it until the next checkpoint has copied the state that produced it
    # (Remus; the SVM's output is not used, the orchestrator's periodic checkpoints release).
    output: str = "compare"
    # Proxy process dead: "closed" holds the PVM's output (the consistent default),
    # "open" lets it pass uncompared (iptables --queue-bypass).
    on_crash: str = "closed"
    # Kernel queue full: "drop" (TCP retransmits) or "accept" uncompared (NFQA_CFG_F_FAIL_OPEN).
    on_queue_full: str = "drop"
    queue_maxlen: int = 8192
    # Whole GSO super-packets through the queue (NFQA_CFG_F_GSO). Off: the kernel splits
    # them into segments of one MSS before queueing (every one: slower). A held
    # super-packet is released only when the SVM has sent all of its bytes, and a bulk
    # flow whose SVM has a smaller congestion window than the PVM would stall until the
    # compare timeout; so a super-packet the SVM has not matched after
    # compare.resegment_after is sent on to a second queue, segment_queue, that segments
    # it (docs/PROXY.md, "Bulk transfers").
    gso: bool = True
    # The segmenting queue's NFQUEUE number (with gso); -1: queue + 1.
    segment_queue: int = -1
    # After any packet, keep polling the queue and the SVM socket without sleeping for this
    # many microseconds before blocking in epoll (waking a sleeping proxy costs more than
    # the hop itself). Bounded, and each empty poll yields the CPU; 0 disables.
    busy_poll_us: int = BUSY_POLL_US
    # Poll also while PVM packets wait for their SVM twins (off: the SVM needs the CPU).
    busy_poll_held: bool = False
    # Most packets read from each source per call (one NFQUEUE datagram = one packet).
    batch: int = 256
    # In-order TCP segments whose bytes match are released by the C fast path
    # (colo_proxy/fastpath) without waking Python, when its build is there; False runs
    # every packet through the Python loop (docs/PROXY.md, "The fast path").
    fast_path: bool = True
    metrics_listen: str = ""  # ADDR:PORT of the Prometheus /metrics endpoint; "" = none
    # ICMPv6 to link-local multicast (MLD reports, router solicitations, DAD) is timed by
    # random delays in each kernel and never reaches a client's connection state: pass the
    # PVM's, drop the SVM's, instead of checkpointing for it.
    pass_icmp6_multicast: bool = True
    # Start fenced (modes.initial): no output of our VM reaches a client until the
    # orchestrator sends `unfence`. Given by the orchestrator when it holds our output.
    fenced: bool = False
    # Release only under an unexpired permit renewed by the orchestrator (service.permit):
    # "auto" once its first permit came (a proxy run without an orchestrator is never
    # held), "required" from the start (nothing released before the first permit: what a
    # proxy started by colo-orch should say), "off" never.
    release_permit: str = "auto"
    compare: CompareConfig = field(default_factory=CompareConfig)

    @property
    def segmenting_queue(self) -> int | None:
        """The segmenting queue's number, or None when there is none (gso off, or
        resegment_after 0: super-packets wait for the SVM whole)."""
        if not self.gso or not self.compare.resegment_after:
            return None
        return self.queue + 1 if self.segment_queue < 0 else self.segment_queue


# --- checks of string values: each returns the problem, or None -------------------------

_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
_INSTANCE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")
LABEL_MAX = 128  # a pair name or host id: no dashboard shows more
# sun_path holds 108 bytes with the terminating NUL.
UNIX_PATH_MAX = 107


def _ifname(v: str) -> str | None:
    # The kernel's dev_valid_name(): below IFNAMSIZ (16), no "/", ":" or white space.
    if not v:
        return "is empty"
    if len(v.encode()) > 15:
        return f"{v!r} is longer than 15 bytes (a Linux interface name)"
    if v in (".", "..") or any(c in v for c in "/:") or any(c.isspace() for c in v):
        return f"{v!r} is not a Linux interface name"
    return None


def _ifname_or_none(v: str) -> str | None:
    return None if v == "" else _ifname(v)


def _mac(v: str) -> str | None:
    if not _MAC.fullmatch(v):
        return f"{v!r} is not a MAC address"
    if int(v[:2], 16) & 1:
        return f"{v!r} is a multicast address"
    return None


def _abs_path(v: str) -> str | None:
    return None if v.startswith("/") else f"{v!r} is not an absolute path"


def _abs_path_or_none(v: str) -> str | None:
    return None if v == "" else _abs_path(v)


def _socket_path(v: str) -> str | None:
    if not v.startswith("/"):
        return f"{v!r} is not an absolute path"
    if len(v.encode()) > UNIX_PATH_MAX:
        return f"is {len(v.encode())} bytes long, more than a unix socket's {UNIX_PATH_MAX}"
    return None


def _instance(v: str) -> str | None:
    return None if _INSTANCE.fullmatch(v) else f"{v!r} is not an instance name"


def _label_value(v: str) -> str | None:
    if len(v) > LABEL_MAX or any(ord(c) < 32 or ord(c) == 127 for c in v):
        return f"{v!r} is not a label value of at most {LABEL_MAX} printable characters"
    return None


def _listen(v: str) -> str | None:
    if v == "":
        return None
    host, colon, port = v.rpartition(":")
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not colon or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        return f"{v!r} is not ADDR:PORT with a port 1-65535"
    if not host:
        return f"{v!r} has no address: it would listen on every interface"
    if not _HOST.fullmatch(host):
        return f"{v!r} is not ADDR:PORT (an IPv6 address goes in brackets)"
    return None


@dataclass(frozen=True)
class Spec:
    """One setting: its table, type, bounds, and the fix an error gives.

    `fix` may hold {eg} (the example written the way of the error's source: `queue = 0` in a
    file, `--queue 0` on the command line).
    """

    table: str
    kind: type
    example: Any
    fix: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is out of range (seconds > 0)
    choices: tuple[str, ...] = ()
    check: Callable[[str], str | None] | None = None


def _seconds(table: str, example: float, what: str) -> Spec:
    return Spec(table, float, example, f"give {what} in seconds (> 0, finite), e.g. {{eg}}",
                lo=0, lo_open=True)


def _count(example: int, what: str) -> Spec:
    return Spec("compare", int, example, f"give {what} (a whole number >= 1), e.g. {{eg}}",
                lo=1)


_POLICY = tuple(p.value for p in Policy)
SPECS: dict[str, Spec] = {
    "role": Spec("proxy", str, "primary", "use {choices}", choices=("primary", "secondary")),
    "tap": Spec("proxy", str, "tapP", "give the VM's tap on this host's bridge as `ip link` "
                "shows it, e.g. {eg}", check=_ifname),
    "forward": Spec("proxy", str, "fwd0", "give the forward link to the other host as `ip "
                    "link` shows it, e.g. {eg}", check=_ifname),
    "uplink": Spec("proxy", str, "eth0", "give the host's bridge port toward the clients, "
                   "e.g. {eg}, or \"\" for none", check=_ifname_or_none),
    "vm_mac": Spec("proxy", str, "52:54:00:c0:10:01", "give the unicast MAC both VMs share, "
                   "e.g. {eg}", check=_mac),
    "peer_mac": Spec("proxy", str, "02:c0:10:f0:00:02", "give the other host's forward-link "
                     "MAC (`ip -br link show fwd0` there), e.g. {eg}", check=_mac),
    "key_file": Spec("proxy", str, "/etc/colo/web.key", "give the full path of the pair's key "
                     "(the orchestrators' heartbeat_key_file), e.g. {eg}, or \"\" for none",
                     check=_abs_path_or_none),
    "control_socket": Spec("proxy", str, DEFAULT_SOCKET, "give an absolute path of at most "
                           f"{UNIX_PATH_MAX} bytes, e.g. {{eg}}", check=_socket_path),
    "instance": Spec("proxy", str, "web", "use 1-64 letters, digits, '_', '.' or '-', not "
                     "starting with '.' (it names LOCK_DIR/INSTANCE.lock and tags the "
                     "iptables rules), e.g. {eg}", check=_instance),
    "pair": Spec("proxy", str, "web", "give the pair's name (colo-orch's `name`), or \"\" "
                 "for the instance name, e.g. {eg}", check=_label_value),
    "host": Spec("proxy", str, "pri", "give this host's id (colo-orch's --host-id), or \"\" "
                 "for the machine's host name, e.g. {eg}", check=_label_value),
    "lock_dir": Spec("proxy", str, "/run/colo-proxy", "give the full path: the daemon does not "
                     "run in your directory, e.g. {eg}", check=_abs_path),
    "queue": Spec("proxy", int, 0, "use an NFQUEUE number from 0 to 65535, e.g. {eg}",
                  lo=0, hi=65535),
    "output": Spec("proxy", str, "compare", "use {choices}", choices=("compare", "buffer")),
    "on_crash": Spec("proxy", str, "closed", "use {choices}", choices=("closed", "open")),
    "on_queue_full": Spec("proxy", str, "drop", "use {choices}", choices=("drop", "accept")),
    "queue_maxlen": Spec("proxy", int, 8192, "give the kernel queue's length in packets, from "
                         "1 to 4294967295, e.g. {eg}", lo=1, hi=2**32 - 1),
    "gso": Spec("proxy", bool, True, "use {eg} or false"),
    "segment_queue": Spec("proxy", int, 1, "use an NFQUEUE number from 0 to 65535 other than "
                          "queue's, or -1 for queue + 1, e.g. {eg}", lo=-1, hi=65535),
    "busy_poll_us": Spec("proxy", int, 0, "use 0 (off) to 10000 microseconds, e.g. {eg}",
                         lo=0, hi=10_000),
    "busy_poll_held": Spec("proxy", bool, False, "use {eg} or true"),
    "batch": Spec("proxy", int, 256, "use 1 to 65536 packets, e.g. {eg}", lo=1, hi=65536),
    "fast_path": Spec("proxy", bool, True, "use {eg} or false"),
    "metrics_listen": Spec("proxy", str, "10.0.0.1:7412", "write it like {eg} (an address of "
                           "this host, 0.0.0.0 for every interface), or \"\" for none",
                           check=_listen),
    "pass_icmp6_multicast": Spec("proxy", bool, True, "use {eg} or false"),
    "fenced": Spec("proxy", bool, False, "use {eg} or true"),
    "release_permit": Spec("proxy", str, "auto", "use {choices}",
                           choices=PERMIT_ENFORCE),
    "compare_timeout": _seconds("compare", 1.0, "how long a PVM packet waits for its SVM twin"),
    "max_flow_packets": _count(2048, "the packets held per flow"),
    "max_flow_bytes": _count(4 * 1024 * 1024, "the payload bytes held per flow"),
    "max_total_packets": _count(65536, "the packets held in all"),
    "max_total_bytes": _count(128 * 1024 * 1024, "the payload bytes held in all"),
    "datagram_window": _count(16, "how far datagrams may be reordered"),
    "idle_timeout": _seconds("compare", 300.0, "how long an idle flow is kept"),
    "closed_timeout": _seconds("compare", 10.0, "how long a closed flow is kept"),
    "resegment_after": Spec("compare", float, 0.01, "give how long a GSO super-packet waits "
                            "for the SVM before it is segmented, in seconds (0: never), e.g. "
                            "{eg}", lo=0),
    "max_flows": _count(262144, "the flows tracked"),
    "other_policy": Spec("compare", str, "compare", "use {choices}", choices=_POLICY),
    "fragment_policy": Spec("compare", str, "compare", "use {choices}", choices=_POLICY),
    "unparseable_policy": Spec("compare", str, "checkpoint", "use {choices}", choices=_POLICY),
}
# [[compare.pass_through]]: an array of tables, checked by _flow_match.
PASS_THROUGH = "pass_through"
_FLOW_KEYS = ("proto", "src", "sport", "dst", "dport")
_FLAG_NAMES = {"gso": "--gso"}


def flag_name(key: str) -> str:
    return _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))


def _known(table: str) -> list[str]:
    return [k for k, s in SPECS.items() if s.table == table] + (
        [PASS_THROUGH] if table == "compare" else [])


def _toml(v: object) -> str:
    """A value as it would be written in TOML (the way the operator wrote it)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


class _Source:
    """Where values come from: a TOML file, or the command line. Renders keys and examples
    the way that source writes them."""

    def __init__(self, name: str, is_file: bool) -> None:
        self.name, self.is_file = name, is_file

    def key(self, key: str) -> str:
        return f"{SPECS[key].table}.{key}" if self.is_file else flag_name(key)

    def eg(self, key: str, value: object) -> str:
        if self.is_file:
            return f"{key} = {_toml(value)}"
        if isinstance(value, bool):
            return flag_name(key)
        return f"{flag_name(key)} {value}"

    def show(self, value: object) -> str:
        return _toml(value) if self.is_file else repr(value)

    def fail(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.name}: {key}: {problem}; {fix}")


def _or(items: Sequence[str]) -> str:
    return " or ".join([", ".join(items[:-1]), items[-1]] if len(items) > 2 else items)


def _fix(src: _Source, key: str) -> str:
    spec = SPECS[key]
    choices = _or([src.eg(key, c) for c in spec.choices])
    return spec.fix.format(eg=src.eg(key, spec.example), choices=choices)


def _value(src: _Source, key: str, v: object) -> Any:
    """`v` checked against the spec of `key`; a flag's text is first parsed as its type."""
    spec = SPECS[key]
    where, fix = src.key(key), _fix(src, key)
    if spec.kind is bool:
        if not isinstance(v, bool):
            raise src.fail(where, f"must be true or false, not {src.show(v)}", fix)
        return v
    if spec.kind in (int, float) and not src.is_file and isinstance(v, str):
        try:
            v = int(v, 10) if spec.kind is int else float(v)
        except ValueError:
            a = "an integer" if spec.kind is int else "a number"
            raise src.fail(where, f"{v!r} is not {a}", fix) from None
    if spec.kind is int and (not isinstance(v, int) or isinstance(v, bool)):
        if isinstance(v, str) and re.fullmatch(r"[+-]?[0-9]+", v.strip()):
            raise src.fail(where, f"{_toml(v)} is a string, not an integer",
                           f"write it without quotes: {key} = {v.strip()}")
        raise src.fail(where, f"must be an integer, not {src.show(v)}", fix)
    if spec.kind is float:
        if isinstance(v, str) and _is_number(v):
            raise src.fail(where, f"{_toml(v)} is a string, not a number",
                           f"write it without quotes: {key} = {v.strip()}")
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise src.fail(where, f"must be a number, not {src.show(v)}", fix)
        if not math.isfinite(v):
            raise src.fail(where, f"{v} is not a finite number", fix)
        v = float(v)
    if spec.kind in (int, float):
        assert isinstance(v, int | float)
        low = spec.lo is not None and (v <= spec.lo if spec.lo_open else v < spec.lo)
        if low or (spec.hi is not None and v > spec.hi):
            shown = f"{v:g}" if isinstance(v, float) else str(v)
            raise src.fail(where, f"{shown} is out of range", fix)
        return v
    if not isinstance(v, str):
        raise src.fail(where, f"must be a string, not {src.show(v)}", fix)
    if spec.choices and v not in spec.choices:
        near = difflib.get_close_matches(v, spec.choices, n=1)
        raise src.fail(where, f"{src.show(v)} is not {_or(spec.choices)}",
                       f"did you mean {src.eg(key, near[0])}?" if near else fix)
    problem = spec.check(v) if spec.check else None
    if problem:
        raise src.fail(where, problem, fix)
    return v


def _is_number(text: str) -> bool:
    """Whether `text` is a finite number (so that writing it unquoted would do)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _unknown(src: _Source, where: str, key: str, known: Sequence[str], what: str,
             listing: str) -> ConfigError:
    near = difflib.get_close_matches(key, known, n=1)
    return src.fail(where, f"unknown {what}",
                    f"did you mean {near[0]}?" if near else f"remove it ({listing})")


def _from_file(path: str, data: dict[str, Any]) -> tuple[dict[str, Any], list[FlowMatch]]:
    src = _Source(path, is_file=True)
    values: dict[str, Any] = {}
    matches: list[FlowMatch] = []
    for top, body in data.items():
        if top in SPECS:
            table = SPECS[top].table
            raise src.fail(top, "is outside any table", f"move it under the [{table}] line")
        if top not in TABLES:
            near = difflib.get_close_matches(top, TABLES, n=1)
            fix = (f"did you mean [{near[0]}]?" if near else
                   "remove it (the tables are [proxy] and [compare])")
            raise src.fail(top, "unknown table", fix)
        if not isinstance(body, dict):
            raise src.fail(top, "must be a table", f"write it as a [{top}] line")
        for key, v in body.items():
            where = f"{top}.{key}"
            if top == "compare" and key == PASS_THROUGH:
                matches = _pass_through(src, v)
                continue
            if key in SPECS and SPECS[key].table != top:
                raise src.fail(where, f"belongs in [{SPECS[key].table}]",
                               f"move it under the [{SPECS[key].table}] line")
            if key not in SPECS:
                raise _unknown(src, where, key, _known(top), f"key in [{top}]",
                               "docs/PROXY.md lists every key")
            values[key] = _value(src, key, v)
    return values, matches


def _pass_through(src: _Source, entries: object) -> list[FlowMatch]:
    key = f"compare.{PASS_THROUGH}"
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise src.fail(key, "must be an array of tables",
                       f"write each entry as a [[{key}]] table")
    return [_flow_match(src, f"{key}[{i}]", e) for i, e in enumerate(entries)]


def _flow_match(src: _Source, where: str, m: dict[str, Any]) -> FlowMatch:
    """A [[compare.pass_through]] table: proto, src, sport, dst, dport (all optional)."""
    for k in m:
        if k not in _FLOW_KEYS:
            raise _unknown(src, f"{where}.{k}", k, _FLOW_KEYS, "key",
                           "the keys are " + ", ".join(_FLOW_KEYS))
    if not m:
        raise src.fail(where, "matches every flow: nothing would be compared",
                       "give at least one of proto, src, sport, dst, dport")
    ints: dict[str, int] = {}
    for k, hi, eg in (("proto", 255, "proto = 17 (6 TCP, 17 UDP, 58 ICMPv6)"),
                      ("sport", 65535, "sport = 53"), ("dport", 65535, "dport = 123")):
        if k not in m:
            continue
        v = m[k]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
            raise src.fail(f"{where}.{k}", f"{_toml(v)} is not a whole number from 0 to {hi}",
                           f"e.g. {eg}")
        ints[k] = v
    nets: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
    for k in ("src", "dst"):
        if k not in m:
            continue
        v = m[k]
        try:
            if not isinstance(v, str):
                raise ValueError(v)
            nets[k] = ipaddress.ip_network(v)
        except ValueError:
            raise src.fail(f"{where}.{k}", f"{_toml(v)} is not an address or network "
                           "(with no host bits set)",
                           f'write it like {k} = "10.0.0.0/24", "10.0.0.5" or "fd00::/64"'
                           ) from None
    return FlowMatch(proto=ints.get("proto"), src=nets.get("src"), sport=ints.get("sport"),
                     dst=nets.get("dst"), dport=ints.get("dport"))


def _from_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    src = _Source(FLAGS, is_file=False)
    return {k: _value(src, k, v) for k, v in flags.items() if v is not None}


def flag_value(key: str, text: str) -> Any:
    """One flag's text, checked as the setting `key` (for commands with flags of their own,
    such as replay's --compare-timeout)."""
    return _value(_Source(FLAGS, is_file=False), key, text)


def read(path: str | Path) -> dict[str, Any]:
    """The TOML file at `path`, or a ConfigError naming the file and the fix."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}; check the path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}; fix the syntax at that line") from exc
    except UnicodeDecodeError as exc:  # tomllib.load decodes before it parses
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8, "
                          "save it as such") from exc
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(f"{path}: arrays or tables nested too deeply; no key of ours "
                          "nests more than two levels") from None


def load(path: str | Path | None, flags: Mapping[str, Any]) -> ProxySettings:
    """Settings from a TOML file ([proxy] and [compare] tables), then flags over them.

    `flags` maps setting names to a flag's text (parsed as the setting's type), to a typed
    value, or to None (flag not given). ConfigError: `SOURCE: KEY: problem; fix`.
    """
    values: dict[str, Any] = {}
    matches: list[FlowMatch] = []
    if path is not None:
        values, matches = _from_file(str(path), read(path))
    for key in flags:
        if key not in SPECS:
            raise ValueError(f"no setting {key!r}")  # a caller's bug, not the operator's
    values.update(_from_flags(flags))
    _peer_mac(_Source(str(path), True) if path is not None else _Source(FLAGS, False), values)
    proxy = {k: v for k, v in values.items() if SPECS[k].table == "proxy"}
    compare: dict[str, Any] = {k: v for k, v in values.items() if SPECS[k].table == "compare"}
    for k in ("other_policy", "fragment_policy", "unparseable_policy"):
        if k in compare:
            compare[k] = Policy(compare[k])
    if proxy.get("pass_icmp6_multicast", True):
        matches.append(ICMP6_MULTICAST)
    cmp_cfg = replace(CompareConfig(), pass_through=tuple(matches), **compare)
    out = ProxySettings(**proxy, compare=cmp_cfg)
    _segment_queue(_Source(str(path), True) if path is not None else _Source(FLAGS, False),
                   out)
    return out


def _segment_queue(src: _Source, s: ProxySettings) -> None:
    seg = s.segmenting_queue
    if seg is not None and (seg == s.queue or seg > 65535):
        raise src.fail(src.key("segment_queue"), f"queue {seg} cannot be the segmenting "
                       f"queue (the comparing queue is {s.queue})", _fix(src, "segment_queue"))


def _peer_mac(src: _Source, values: Mapping[str, Any]) -> None:
    """peer_mac is required (nothing on the forward link is trusted without it), and is
    neither the VM's MAC nor given twice over."""
    peer = values.get("peer_mac", "")
    if not peer:
        raise src.fail(src.key("peer_mac"), "missing: the forward link's frames cannot be "
                       "told from forgeries without it", _fix(src, "peer_mac"))
    if peer.lower() == values.get("vm_mac", ProxySettings.vm_mac).lower():
        raise src.fail(src.key("peer_mac"), f"{src.show(peer)} is the VM's MAC",
                       _fix(src, "peer_mac"))


ICMP6_MULTICAST = FlowMatch(proto=58, dst=ipaddress.ip_network("ff02::/16"))

