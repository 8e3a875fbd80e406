"""Config errors name the field and the fix; timing invariants are enforced."""

from __future__ import annotations

import re

import pytest

from colo_orch.core.config import ConfigError, parse
from tests.support.paths import REPO

GOOD = """
name = "web1"
role = "primary"
qmp = "/run/pvm.qmp"
qmp_events = "/run/pvm-events.qmp"
heartbeat_listen = "10.99.1.1:7410"
peer_heartbeat = "10.99.1.2:7410"
incoming_uri = "tcp:10.99.1.1:4444"
peer_incoming_uri = "tcp:10.99.1.2:4444"
heartbeat_key_file = "/etc/colo/web1.key"
on_fence = ["ip", "link", "set", "uplink0", "down"]
"""


def test_a_host_that_could_not_hold_output_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"on_fence: missing, and there is no proxy_socket.*"
                       r"run colo-proxy \(proxy_socket\) or give a command"):
        parse(GOOD.replace('on_fence = ["ip", "link", "set", "uplink0", "down"]', ""))
    assert parse(GOOD.replace('on_fence = ["ip", "link", "set", "uplink0", "down"]',
                              'proxy_socket = "/run/colo/proxy.sock"')).on_fence == []


def test_good_config_loads_with_defaults() -> None:
    cfg = parse(GOOD)
    assert cfg.role == "primary" and cfg.timing.heartbeat_timeout == 1.0
    assert cfg.auto_reprotect is True


@pytest.mark.parametrize(("extra", "field", "fix"), [
    ('role = "leader"', "role", 'use "primary" or "secondary"'),
    ("colour = 1", "colour", "remove it"),
    ('peer_heartbeat = "nowhere"', "peer_heartbeat", "write it like"),
    ('incoming_uri = "unix:/x"', "incoming_uri", "tcp:"),
    # It reaches a root shell on Xen (xl remus's "-e" command): only an address and a port.
    ('peer_incoming_uri = "tcp:$(reboot):4444"', "peer_incoming_uri", "write it like"),
    ('peer_incoming_uri = "tcp:10.0.0.2:4444;id"', "peer_incoming_uri", "write it like"),
    ('peer_incoming_uri = "tcp:10.0.0.2:70000"', "peer_incoming_uri", "write it like"),
    ("[timing]\nheartbeat_timeout = 0.2", "timing.heartbeat_timeout", "raise it to at least 0.3"),
    ("[timing]\nloop_wait = 0.1\nheartbeat_timeout = 0.35", "timing.heartbeat_timeout",
     "raise it above 0.4"),
    ("[timing]\nloop_wait = 0.5", "timing.loop_wait", "lower loop_wait"),
    ("[timing]\nlease_ttl = 0.1", "timing.lease_ttl", "raise it"),
    ("[timing]\nqmp_timeout = -1", "timing.qmp_timeout", "positive number"),
    ('[timing]\ncheckpoint_min_interval = 20', "timing.checkpoint_min_interval", "min <= max"),
])
def test_bad_field_is_named_with_its_fix(extra: str, field: str, fix: str) -> None:
    lines = [ln for ln in GOOD.splitlines() if not ln.startswith(extra.split("=")[0].strip() + " ")]
    text = "\n".join(lines) + "\n" + extra + "\n"
    with pytest.raises(ConfigError) as err:
        parse(text, "web1.toml")
    assert f"web1.toml: {field}:" in str(err.value)
    assert fix in str(err.value)


def test_missing_field_and_bad_toml() -> None:
    with pytest.raises(ConfigError, match="name: missing; add name"):
        parse(GOOD.replace('name = "web1"', ""))
    with pytest.raises(ConfigError, match='peer_incoming_uri: missing; add peer_incoming_uri'):
        parse("\n".join(ln for ln in GOOD.splitlines() if not ln.startswith("peer_incoming")))
    assert parse(GOOD.replace('"tcp:10.99.1.2:4444"', '"tcp:[fd99::2]:4444"')).peer_incoming_uri \
        == "tcp:[fd99::2]:4444"
    with pytest.raises(ConfigError, match="heartbeat_key_file: missing; add heartbeat_key_file"):
        parse("\n".join(ln for ln in GOOD.splitlines() if not ln.startswith("heartbeat_key")))
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("name = ")


def test_xen_backend_needs_its_fields() -> None:
    with pytest.raises(ConfigError, match='xen_domain: required with backend = "xen"'):
        parse(GOOD + 'backend = "xen"\n')
    cfg = parse(GOOD + 'backend = "xen"\nxen_domain = "web1"\nxen_config = "/etc/xen/web1.cfg"\n'
                'xen_checkpoint_listen = "10.99.1.1:9911"\n')
    assert cfg.backend == "xen"
    with pytest.raises(ConfigError, match="backend: 'kvm' is not a backend"):
        parse(GOOD + 'backend = "kvm"\n')


@pytest.mark.parametrize("key", ["qmp", "qmp_events"])
def test_qemu_backend_needs_its_monitors(key: str) -> None:
    text = "\n".join(ln for ln in GOOD.splitlines() if not ln.startswith(f"{key} "))
    with pytest.raises(ConfigError) as err:
        parse(text, "web1.toml")
    msg = str(err.value)
    assert msg.startswith(f'web1.toml: {key}: required with backend = "qemu"'), msg
    assert f"add {key} = " in msg and 'backend = "xen"' in msg


def test_xen_config_as_docs_xen_md_writes_it_loads() -> None:
    doc = (REPO / "docs" / "xen.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    assert len(blocks) == 1, "docs/xen.md shows one orchestrator configuration"
    cfg = parse(blocks[0], "docs/xen.md")
    assert (cfg.backend, cfg.qmp, cfg.qmp_events) == ("xen", "", "")


def test_lease_margin_leaves_time_to_fence_and_to_renew() -> None:
    with pytest.raises(ConfigError, match=r"timing\.lease_margin: 0\.1 s is too short to fence"):
        parse(GOOD + "[timing]\nlease_margin = 0.1\n")
    assert parse(GOOD + "[timing]\nlease_ttl = 2.5\n").timing.lease_ttl == 2.5
    with pytest.raises(ConfigError, match=r"timing\.lease_margin: 2 s leaves no time to renew"):
        parse(GOOD + "[timing]\nlease_ttl = 2\nlease_margin = 2\n")
