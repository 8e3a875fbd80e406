"""A real Prometheus scrapes the lab's orchestrators and proxies; every dashboard query works.

Prometheus (Debian's package) runs inside the primary host's namespace, from where both
hosts' control IPs are reachable, with a 1 s scrape interval and its data in a temporary
directory; it is killed and the directory removed after the test, also on failure. The
test drives deterministic traffic and one non-deterministic request (a "payload"
divergence), then evaluates every panel query of every dashboard through the HTTP API.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from colo_lab import netns, pair
from colo_lab.lab import Lab
from colo_lab.wait import wait_until
from tests.support.paths import REPO as ROOT
from tests.support.prometheus import Prometheus

PROM_PORT = 19090
pytestmark = [pytest.mark.lab(proxy=True), pytest.mark.timeout(90)]  # 25 s here


def _build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("colo_dashboards_build",
                                                  ROOT / "dashboards" / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def prom(lab: Lab) -> Iterator[Prometheus]:
    # As dashboards/prometheus.yml: a plain target list, no labels added; the exporters
    # label their series with `pair` and `host` themselves.
    targets = {job: [{"targets": [f"{h.ctl_ip}:{port}" for h in lab.hosts.values()]}]
               for job, port in (("colo-orch", pair.METRICS_PORT),
                                 ("colo-proxy", pair.PROXY_METRICS_PORT))}
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(ROOT / "dashboards" / "colo-alerts.yml")],
              "scrape_configs": [{"job_name": job, "honor_labels": True,
                                  "static_configs": sc} for job, sc in targets.items()]}
    primary = lab.hosts["primary"]
    p = Prometheus(config, f"{primary.ctl_ip}:{PROM_PORT}", primary.ns)
    try:
        yield p
    finally:
        p.stop()
    assert not p.dir.exists()


def _proxy_status(lab: Lab) -> dict[str, Any]:
    h = lab.hosts["primary"]
    out = netns.sh(h.ns, [sys.executable, "-m", "colo_proxy.cli.main", "status", "--control-socket",
                          str(lab.run_dir / "proxy-pri.sock")], timeout=15)
    data: dict[str, Any] = json.loads(out)
    return data


def _scrape(lab: Lab, host: str, port: int) -> str:
    h = lab.hosts[host]
    return netns.sh(h.ns, ["curl", "-sS", "-m", "5", f"http://{h.ctl_ip}:{port}/metrics"],
                    timeout=10)


def test_every_dashboard_query_returns_data_and_counts_match(lab: Lab, prom: Prometheus) -> None:
    build = _build()

    def all_up() -> bool | None:
        r = prom.api("/api/v1/targets")
        if r is None or r.get("status") != "success":
            return None
        active = r["data"]["activeTargets"]
        return True if len(active) == 4 and all(t["health"] == "up" for t in active) else None

    def targets() -> str:
        r = prom.api("/api/v1/targets") or {}
        found = [(t["scrapeUrl"], t["health"], t["lastError"])
                 for t in r.get("data", {}).get("activeTargets", [])]
        return f"targets {found}; log: {prom.log_tail()}"

    wait_until(all_up, 60, "Prometheus to scrape both orchestrators and both proxies", every=0.2,
               detail=targets)

    def counts() -> tuple[int, int]:
        cps = int(pair.state(lab, "primary").get("checkpoints", {}).get("payload", 0))
        div = int(_proxy_status(lab)["compare"].get("divergences_payload", 0))
        return cps, div

    # The panels count over the dashboard's range, so from Prometheus's first scrape on
    # (the lab may be older): what the components counted before that is not theirs.
    cps0, div0 = counts()
    # Deterministic traffic, then exactly one request whose answer differs between VMs.
    for i in range(1, 11):
        assert lab.http(f"/kv/m{i}", method="PUT", data=b"v" * i)[0] == 200
        assert lab.http(f"/kv/m{i}") == (200, b"v" * i)
    assert lab.http("/random")[0] == 200

    def caused() -> tuple[int, int] | None:
        cps, div = counts()
        return (cps - cps0, div - div0) if cps > cps0 and div > div0 else None

    checkpoints, divergences = wait_until(caused, 60, "the payload checkpoint of /random",
                                          every=0.2)

    def panel(title: str, reason: str, want: int) -> bool:
        (expr,) = [e for _, t, e in build.queries() if t == title]
        rows = [r for r in prom.query(build.instantiate(expr))
                if r["metric"].get("reason") == reason]
        # increase() extrapolates to the ends of its range: a count of 1 reads 1.0 to 1.1
        # here (samples every second over a minute or two), never 0.5 or 1.5.
        return bool(rows) and round(float(rows[0]["value"][1])) == want

    # The panels show what the components counted, once Prometheus has scraped it and has
    # enough samples for every rate() in the dashboards.
    wait_until(lambda: panel("Checkpoints by reason", "payload", checkpoints), 30,
               f"the checkpoint panel to show {checkpoints} payload checkpoint(s)", every=0.2)
    wait_until(lambda: panel("Divergences by reason", "payload", divergences), 30,
               f"the divergence panel to show {divergences} payload divergence(s)", every=0.2)
    wait_until(lambda: (prom.value("min(count_over_time(up[1m]))") or 0) >= 5, 30,
               "five scrapes of every target", every=0.2)

    # Every series of both exporters names its pair and host, as the lab's orchestrators
    # were started (--host-id pri/sec), and none was renamed exported_*.
    named = {(r["metric"]["job"], r["metric"].get("pair"), r["metric"].get("host"))
             for r in prom.query('count by (job, pair, host) ({__name__=~"colo_.+"})')}
    assert named == {(job, pair.PAIR, host) for job in ("colo-orch", "colo-proxy")
                     for host in ("pri", "sec")}, named
    assert prom.query('{__name__=~"colo_.+", exported_pair!=""}') == []
    assert prom.query('{__name__=~"colo_.+", exported_host!=""}') == []

    empty = []
    for uid, title, expr in build.queries():
        q = build.instantiate(expr)
        if not prom.query(q):
            empty.append(f"{uid} / {title}: {q}")
    assert empty == [], "panels without data:\n" + "\n".join(empty)

    # Metric names pass promtool's lint on real scrapes of all four endpoints.
    for host in ("primary", "secondary"):
        for port in (pair.METRICS_PORT, pair.PROXY_METRICS_PORT):
            text = _scrape(lab, host, port)
            assert "colo_build_info" in text
            out = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                                 capture_output=True, timeout=30, check=False)
            assert out.returncode == 0, (host, port, out.stdout, out.stderr)

    # The alerting rules evaluate without error on real scrapes, and a healthy protected
    # pair (one divergence, no fault) raises none of them, not even as pending.
    def rules() -> list[dict[str, Any]] | None:
        r = prom.api("/api/v1/rules")
        if r is None or r.get("status") != "success":
            return None
        found = [rule for g in r["data"]["groups"] for rule in g["rules"]]
        return found if found and all(x.get("lastEvaluation", "").startswith("20")
                                      for x in found) else None

    evaluated = wait_until(rules, 30, "every alerting rule evaluated once", every=0.2)
    assert {x["name"]: x["health"] for x in evaluated} == {
        x["name"]: "ok" for x in evaluated}, [(x["name"], x.get("lastError")) for x in evaluated]
    assert len(evaluated) == 10
    assert [(x["name"], a["state"], a["labels"]) for x in evaluated
            for a in x.get("alerts", [])] == []
    print(f"payload checkpoints {checkpoints}, payload divergences {divergences}, "
          f"{len(build.queries())} panel queries answered, {len(evaluated)} alert rules quiet")
