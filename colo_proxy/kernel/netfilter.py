"""iptables rules that queue the PVM's bridged output, added and removed by comment tag.

This kernel has br_netfilter and xt NFQUEUE but no nft `queue` expression, so the PVM's
frames are sent through iptables' FORWARD chain (`bridge-nf-call-iptables=1` in the host
namespace) and matched by the bridge port they came in on. Every rule carries the comment
`colo-proxy:<instance>` so that `cleanup` finds and removes it after a crash.

Fail-safe on process death: with `--queue-bypass` the kernel passes traffic when no
process is bound to the queue (fail-open); without it traffic is held, i.e. dropped and
retransmitted by the clients' TCP until a proxy binds again (fail-closed).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

TAG = "colo-proxy:"
TOOLS = ("iptables", "ip6tables")
BRIDGE_SYSCTLS = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")


def _run(argv: Sequence[str], check: bool = True) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def rule_spec(tap: str, queue: int, instance: str, *, bypass: bool) -> list[str]:
    spec = ["-m", "physdev", "--physdev-in", tap, "-j", "NFQUEUE", "--queue-num", str(queue)]
    if bypass:
        spec.append("--queue-bypass")
    return [*spec, "-m", "comment", "--comment", TAG + instance]


def set_bridge_netfilter(on: bool) -> None:
    for key in BRIDGE_SYSCTLS:
        try:
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write("1" if on else "0")
        except FileNotFoundError:
            # The keys appear once br_netfilter is active in this namespace.
            subprocess.run(["sysctl", "-q", "-w", f"{key}={int(on)}"], check=False,
                           capture_output=True)


def install(tap: str, queue: int, instance: str, *, bypass: bool) -> None:
    """Queue every IPv4 and IPv6 frame entering the bridge from `tap` (replacing old rules).

    The new rule goes in before the old ones (a crashed predecessor's) are deleted, so a
    restart under fail-closed never opens a moment in which output passes unqueued.
    """
    old = rules(instance)
    set_bridge_netfilter(True)
    for tool in TOOLS:
        # Inserted first: the PVM's output must be queued before any accept rule.
        _run([tool, "-w", "-I", "FORWARD", "1", *rule_spec(tap, queue, instance, bypass=bypass)])
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
    """Delete the rules of one instance (or all colo-proxy rules); returns what went."""
    removed = []
    for tool, line in rules(instance):
        argv = [tool, "-w", "-D", *_split(line[3:])]
        _run(argv, check=False)
        removed.append(f"{tool} rule {line}")
    return removed


def _split(rule: str) -> list[str]:
    # `iptables -S` quotes comments with spaces; ours have none, but strip quotes anyway.
    return [tok.strip('"') for tok in rule.split()]
