"""`colo-lab status`: what of a lab runs, host by host: links, API, orchestrator, etcd.

Gathered from the kernel and the processes, not from the process that built the lab, so
it answers for a lab another `colo-lab up` (or a crashed test) left behind.
"""

from __future__ import annotations

import json
from typing import Any

from colo_lab import etcd_net, netns, pair
from colo_lab.lab import LINKS, Lab

# The orchestrator's API answers within milliseconds when it runs; status must stay quick
# when it does not (still starting, or its loop wedged).
STATE_TIMEOUT_S = 1.0


def links_from_ip(ip_json: list[dict[str, Any]], names: dict[str, str]) -> dict[str, Any]:
    """The host's links by purpose from `ip -j addr show`: name, up (administratively),
    carrier state and IPv4 address (None for a link without one, or one that is missing)."""
    by_name = {d.get("ifname"): d for d in ip_json}
    out: dict[str, Any] = {}
    for purpose, name in names.items():
        d = by_name.get(name)
        if d is None:
            out[purpose] = {"name": name, "up": False, "state": "MISSING", "address": None}
            continue
        addrs = [f"{a['local']}/{a['prefixlen']}" for a in d.get("addr_info", [])
                 if a.get("family") == "inet"]
        out[purpose] = {"name": name, "up": "UP" in d.get("flags", []),
                        "state": d.get("operstate", "UNKNOWN"),
                        "address": addrs[0] if addrs else None}
    return out


def _host(lab: Lab, role: str) -> dict[str, Any]:
    h = lab.hosts[role]
    entry: dict[str, Any] = {"namespace": h.ns, "api": pair.api_url(lab, role),
                             "metrics": pair.metrics_url(lab, role)}
    if not netns.exists(h.ns):
        entry["links"] = {}
        return entry
    entry["links"] = links_from_ip(json.loads(netns.ip(h.ns, "-j", "addr", "show") or "[]"),
                                   LINKS)
    if pair.orchestrator_pids(lab, role):
        st = pair.state(lab, role, timeout=STATE_TIMEOUT_S)
        entry["orchestrator"] = st or {"state": None, "error": "running, API not answering"}
    return entry


def lab_status(lab: Lab) -> dict[str, Any]:
    st = lab.status()
    if st["up"]:
        st["hosts"] = {role: _host(lab, role) for role in lab.hosts}
        st["etcd"] = etcd_net.status(lab)
    return st


def render(st: dict[str, Any]) -> str:
    """The readable form of lab_status()."""
    if not st["up"]:
        return f"lab '{st['name']}': down"
    lines = [f"lab '{st['name']}': up (accel {st.get('accel')})"]
    for role, vm in st["vms"].items() if st.get("accel") != "none" else ():
        running = "running" if vm["running"] else "stopped"
        lines.append(f"  {role:<9} VM {running}" + (f" (pid {vm['pid']})" if vm["pid"] else ""))
    for role, h in st.get("hosts", {}).items():
        lines.append(f"  {role} host: namespace {h['namespace']}, API {h['api']}"
                     + (f", metrics {h['metrics']}" if h.get("metrics") else ""))
        for purpose, link in h["links"].items():
            state = "up" if link["up"] else "DOWN"
            if link["up"] and link["state"] not in ("UP", "UNKNOWN"):
                state = f"up, carrier {link['state']}"
            addr = f" {link['address']}" if link["address"] else ""
            lines.append(f"    {purpose:<9} {link['name']:<6} {state}{addr}")
        orch = h.get("orchestrator")
        if orch is None:
            lines.append("    orchestrator: not running")
        else:
            extra = f", role {orch['role']}" if orch.get("role") else ""
            lines.append(f"    orchestrator: {orch.get('state') or orch.get('error')}{extra}")
    for m in st.get("etcd", []):
        lines.append(f"  {m['name']:<6} {m['endpoint']:<24} "
                     f"{'running' if m['running'] else 'NOT running'} (namespace {m['namespace']})")
    lines.append(f"  namespaces: {' '.join(st['namespaces'])}")
    return "\n".join(lines)
