"""The datapath after a crash: an exception leaves the filters attached (fail closed), and
the next proxy's datapath replaces them in place, one filter per hook, never stacked."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from colo_lab import netns

pytestmark = pytest.mark.bpf

# Runs inside the test's namespace (bcc and tc act on the current one).
CHILD = r"""
import json
from colo_proxy.kernel import datapath as d

def ours():
    return sorted((a["ifname"], a["hook"], a["name"], a["prog_id"]) for a in d.attached())

out = {}
try:
    with d.Datapath("secondary", tap="tapS", fwd="fwd0", vm_mac="52:54:00:12:34:56",
                    keep_on_error=True):
        out["first"] = ours()
        raise RuntimeError("a bug")
except RuntimeError:
    pass
out["after_crash"] = ours()
with d.Datapath("secondary", tap="tapS", fwd="fwd0", vm_mac="52:54:00:12:34:56",
                keep_on_error=True):
    out["restarted"] = ours()
out["old_programs_alive"] = [d.prog_exists(f[3]) for f in out["first"]]
out["after_stop"] = ours()
print(json.dumps(out))
"""


def test_a_crash_leaves_the_filters_and_a_restart_replaces_them() -> None:
    ns = "colo-tto" + uuid.uuid4().hex[:6]
    netns.add(ns)
    try:
        for dev in ("tapS", "fwd0"):
            netns.ip(ns, "link", "add", dev, "type", "veth", "peer", "name", dev + "x")
            netns.ip(ns, "link", "set", dev, "up")
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CHILD],
                             capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.splitlines()[-1])
        slots = [f[:3] for f in res["first"]]
        assert slots == [["fwd0", "ingress", "colo_fwd_in"], ["tapS", "egress", "colo_tap_eg"],
                         ["tapS", "ingress", "colo_tap_in"]]
        assert res["after_crash"] == res["first"]  # left attached, programs alive
        assert [f[:3] for f in res["restarted"]] == slots  # replaced, none stacked
        assert all(new[3] != old[3] for new, old in zip(res["restarted"], res["first"], strict=True))
        assert res["old_programs_alive"] == [False] * 3
        assert res["after_stop"] == []  # an orderly stop removes them
    finally:
        netns.delete(ns)
