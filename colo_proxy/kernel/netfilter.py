"""iptables rules that queue the PVM's bridged output, added and removed by comment tag.

This kernel has br_netfilter and xt NFQUEUE but no nft `queue` expression, so the PVM's
frames are sent through iptables' FORWARD chain and matched by the bridge port they came in
on. Only the tap's own bridge sends its frames there: its `nf_call_iptables` and
`nf_call_ip6tables` options (the bridge's own; br_netfilter ORs them with the host-wide
`net.bridge.bridge-nf-call-iptables` sysctls, which stay as they are). Turning the sysctls
on sent every bridged frame of the host through FORWARD, where a DROP policy (Docker's)
cut off other VMs. An orderly stop puts the bridge's options back as they were, unless
another colo-proxy instance still queues from a port of the same bridge; every rule
carries the bridge's original options for that (a second comment), so `cleanup` after a
crash puts them back too. Every rule carries the comment `colo-proxy:<instance>` so that
`cleanup` finds and removes it after a crash.

Fail-safe on process death: with `--queue-bypass` the kernel passes traffic when no
process is bound to the queue (fail-open); without it traffic is held, i.e. dropped and
retransmitted by the clients' TCP until a proxy binds again (fail-closed).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence

TAG = "colo-proxy:"
TOOLS = ("iptables", "ip6tables")
BRIDGE_OPTIONS = ("nf_call_iptables", "nf_call_ip6tables")  # /sys/class/net/BR/bridge/
# The bridge's options as they were before any colo-proxy turned them on, carried by every
# rule that queues from it (a second comment), so that whoever removes the last such rule
# puts them back, be it an orderly stop or `cleanup` after a crash.
BRIDGE_TAG = "colo-proxy-bridge:"
_BRIDGE_MARK = re.compile(re.escape(BRIDGE_TAG) + r"(\S+?)=([01]+)\b")


def _run(argv: Sequence[str], check: bool = True) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def rule_spec(tap: str, queue: int, instance: str, *, bypass: bool,
              bridge_mark: str = "") -> list[str]:
    spec = ["-m", "physdev", "--physdev-in", tap, "-j", "NFQUEUE", "--queue-num", str(queue)]
    if bypass:
        spec.append("--queue-bypass")
    spec += ["-m", "comment", "--comment", TAG + instance]
    if bridge_mark:
        spec += ["-m", "comment", "--comment", bridge_mark]
    return spec


def bridge_of(port: str) -> str:
    """The bridge that `port` is a port of; RuntimeError naming the fix when none."""
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{port}/master"))
    except OSError:
        raise RuntimeError(
            f"{port} is not a port of a bridge: the proxy queues the VM's output as it "
            f"crosses the host's bridge; add it (ip link set {port} master BRIDGE) or give "
            "the tap that is") from None


def _option_path(bridge: str, option: str) -> str:
    return f"/sys/class/net/{bridge}/bridge/{option}"


def bridge_netfilter(bridge: str) -> tuple[str, ...]:
    values = []
    for option in BRIDGE_OPTIONS:
        with open(_option_path(bridge, option)) as f:
            values.append(f.read().strip())
    return tuple(values)


def _set_bridge_netfilter(bridge: str, values: Sequence[str]) -> None:
    for option, value in zip(BRIDGE_OPTIONS, values, strict=True):
        with open(_option_path(bridge, option), "w") as f:
            f.write(value)


def _marks(lines: Sequence[str]) -> dict[str, str]:
    """bridge -> its original options ("00"), from the marks of these rule lines."""
    return {m.group(1): m.group(2) for line in lines for m in _BRIDGE_MARK.finditer(line)}


def install(tap: str, queue: int, instance: str, *, bypass: bool) -> None:
    """Queue every IPv4 and IPv6 frame entering the bridge from `tap` (replacing old rules),
    with the tap's bridge's netfilter options on.

    The new rule goes in before the old ones (a crashed predecessor's) are deleted, so a
    restart under fail-closed never opens a moment in which output passes unqueued.
    """
    old = rules(instance)
    bridge = bridge_of(tap)
    # A rule already queuing from this bridge knows what it was like before colo-proxy.
    original = _marks([line for _, line in rules()]).get(bridge) or "".join(
        bridge_netfilter(bridge))
    _set_bridge_netfilter(bridge, ("1",) * len(BRIDGE_OPTIONS))
    mark = f"{BRIDGE_TAG}{bridge}={original}"
    for tool in TOOLS:
        # Inserted first: the PVM's output must be queued before any accept rule.
        _run([tool, "-w", "-I", "FORWARD", "1",
              *rule_spec(tap, queue, instance, bypass=bypass, bridge_mark=mark)])
    for tool, line in old:
        _run([tool, "-w", "-D", *_split(line[3:])], check=False)


def rules(instance: str | None = None) -> list[tuple[str, str]]:
    """(tool, rule line) of every colo-proxy rule (of one instance, or all)."""
    found = []
    needle = TAG + (instance or "")
    for tool in TOOLS:
        for line in _run([tool, "-w", "-S", "FORWARD"], check=False).splitlines():
            if line.startswith("-A ") and needle in line:
                found.append((tool, line))
    return found


def remove(instance: str | None = None) -> list[str]:
    """Delete the rules of one instance (or all colo-proxy rules); put back the netfilter
    options of each bridge no remaining rule queues from. Returns what it did."""
    gone = rules(instance)
    removed = []
    for tool, line in gone:
        _run([tool, "-w", "-D", *_split(line[3:])], check=False)
        removed.append(f"{tool} rule {line}")
    still = _marks([line for _, line in rules()])
    for bridge, original in sorted(_marks([line for _, line in gone]).items()):
        if bridge in still:
            removed.append(f"bridge {bridge}: netfilter options stay on (another colo-proxy "
                           "instance queues from it)")
            continue
        values = tuple(original)
        try:
            if bridge_netfilter(bridge) != values:
                _set_bridge_netfilter(bridge, values)
        except OSError:
            continue  # the bridge is gone: nothing to put back
        removed.append(f"bridge {bridge}: " + ", ".join(
            f"{o}={v}" for o, v in zip(BRIDGE_OPTIONS, values, strict=True)) + " again")
    return removed


def _split(rule: str) -> list[str]:
    # `iptables -S` quotes comments with spaces; ours have none, but strip quotes anyway.
    return [tok.strip('"') for tok in rule.split()]
