"""The exporters' `pair` and `host` against a scrape configuration that sets them too.

dashboards/prometheus.yml sets `honor_labels: true` (docs/metrics.md): a configuration
that still adds `pair`/`host` target labels keeps the exporter's values, with no
`exported_pair`/`exported_host`. A real Prometheus (Debian's) scrapes a real proxy
exporter on the loopback three times: with no labels added, with labels added under
honor_labels, and with labels added under Prometheus's default (the renaming avoided).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from colo_lab.etcd import free_port
from colo_lab.wait import wait_until
from colo_proxy.service.metrics import Endpoint, registry_for
from tests.support.prometheus import Prometheus

pytestmark = pytest.mark.host
SERIES = "colo_proxy_checkpoints_done_total"


@pytest.fixture
def exporter() -> Iterator[Endpoint]:
    endpoint = Endpoint("127.0.0.1:0", registry_for(None, "primary", pair="web", host="pri"))
    try:
        yield endpoint
    finally:
        endpoint.stop()


def test_a_scrape_config_adding_pair_and_host_keeps_the_exporters(
        exporter: Endpoint) -> None:
    target = f"127.0.0.1:{exporter.port}"
    added = {"pair": "from-config", "host": "from-config"}
    jobs = [("plain", True, {}), ("honored", True, added), ("default", False, added)]
    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [{"job_name": job, "honor_labels": honor,
                                  "static_configs": [{"targets": [target], "labels": labels}]}
                                 for job, honor, labels in jobs]}
    prom = Prometheus(config, f"127.0.0.1:{free_port()}")
    try:
        def scraped() -> dict[str, dict[str, str]] | None:
            r = prom.api("/api/v1/query", query=SERIES)  # None until it listens
            if r is None or r.get("status") != "success":
                return None
            got = {row["metric"]["job"]: row["metric"] for row in r["data"]["result"]}
            return got if len(got) == 3 else None

        got = wait_until(scraped, 30, "three scrapes of the exporter", every=0.2,
                         detail=prom.log_tail)
    finally:
        prom.stop()
    identity = ("pair", "host", "exported_pair", "exported_host")
    assert {job: {k: m[k] for k in identity if k in m} for job, m in got.items()} == {
        "plain": {"pair": "web", "host": "pri"},
        "honored": {"pair": "web", "host": "pri"},
        # What honor_labels avoids: ours renamed, the configuration's in their place.
        "default": {"pair": "from-config", "host": "from-config",
                    "exported_pair": "web", "exported_host": "pri"},
    }
