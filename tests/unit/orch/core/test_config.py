"""Config errors name the field and the fix; timing invariants are enforced."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from colo_orch.cli.orch import main
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
    # Commands and metrics on loopback, each on its own port; no command opens by default.
    assert (cfg.api_listen, cfg.metrics_listen) == ("127.0.0.1:7411", "127.0.0.1:7413")
    assert (cfg.api_token_file, cfg.api_socket, cfg.timing.api_timeout) == ("", "", 5.0)


@pytest.mark.parametrize(("extra", "field", "fix"), [
    # ":7411" bound every interface.
    ('api_listen = ":7411"', "api_listen", '"0.0.0.0:7411" to bind every interface on purpose'),
    ('metrics_listen = ":7413"', "metrics_listen", 'e.g. metrics_listen = "10.0.0.1:7413"'),
    ('metrics_listen = "127.0.0.1:7411"', "metrics_listen", "a port of its own"),
    ('api_token_file = "api.token"', "api_token_file", "give the full path"),
    ("api_socket_uids = [1000]", "api_socket_uids", "add api_socket"),
    ('api_socket = "/run/colo/web1-api.sock"\napi_socket_gids = ["ops"]', "api_socket_gids",
     "api_socket_gids = [1000]"),
    ('api_tls_cert_file = "/etc/colo/api.pem"', "api_tls_key_file", "set both"),
    ('api_listen = ""\napi_tls_cert_file = "/a.pem"\napi_tls_key_file = "/a.key"',
     "api_tls_cert_file", "set api_listen"),
    ("[timing]\napi_timeout = 0", "timing.api_timeout", "positive number"),
])
def test_bad_api_field_is_named_with_its_fix(extra: str, field: str, fix: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(GOOD + extra + "\n", "web1.toml")
    assert f"web1.toml: {field}:" in str(err.value)
    assert fix in str(err.value)


def test_api_listeners_can_be_off() -> None:
    cfg = parse(GOOD + 'api_listen = ""\nmetrics_listen = ""\n'
                'api_socket = "/run/colo/web1-api.sock"\n')
    assert (cfg.api_listen, cfg.metrics_listen) == ("", "")


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
    ('[timing]\ncheckpoint_burst = 0.5', "timing.checkpoint_burst", "at least 1"),
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


XEN = GOOD + 'backend = "xen"\nxen_domain = "web1"\nxen_config = "/etc/xen/web1.cfg"\n'


@pytest.mark.parametrize("lines, error", [
    ('xen_checkpoint_listen = "0.0.0.0:9911"\n',
     "xen_checkpoint_listen: 0.0.0.0 takes libxl's connection from any network; listen on"),
    ('xen_checkpoint_listen = "colo-pri:9911"\n',
     "xen_checkpoint_listen: 'colo-pri' is not an IPv4 address"),
    ('xen_checkpoint_listen = "127.0.0.1:9911"\nxen_checkpoint_peer = "0.0.0.0"\n',
     "xen_checkpoint_peer: 0.0.0.0 takes libxl's connection from any network; leave it out"),
])
def test_the_libxl_bridge_never_listens_on_every_interface(lines: str, error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        parse(XEN + lines)
    cfg = parse(XEN + 'xen_checkpoint_listen = "127.0.0.1:9911"\n')
    assert cfg.xen_checkpoint_peer == ""  # the listen address (colo_orch/cli/orch.py)


XEN_OK = XEN + 'xen_checkpoint_listen = "127.0.0.1:9911"\n'


def test_a_xen_primary_is_created_paused_unless_said_otherwise() -> None:
    # libxl's COLO takes only a domain created paused that has never run (docs/xen.md).
    cfg = parse(XEN_OK)
    assert (cfg.xen_create_paused, cfg.timing.paused_primary_wait) == (True, 60.0)
    cfg = parse(XEN_OK + "xen_create_paused = false\n[timing]\npaused_primary_wait = 120\n")
    assert (cfg.xen_create_paused, cfg.timing.paused_primary_wait) == (False, 120.0)


@pytest.mark.parametrize("text, error", [
    (GOOD + "xen_create_paused = true\n",
     'xen_create_paused: applies only with backend = "xen" (here "qemu"); remove it'),
    (GOOD + "[timing]\npaused_primary_wait = 30\n",
     'timing.paused_primary_wait: applies only with backend = "xen" (here "qemu"); remove it'),
    (XEN_OK + 'xen_create_paused = "yes"\n', "xen_create_paused: must be true or false"),
    (XEN_OK + "[timing]\npaused_primary_wait = 0.5\n",
     "timing.paused_primary_wait: 0.5 s is shorter than heartbeat_timeout (1 s)"),
])
def test_paused_creation_options_are_refused_where_they_mean_nothing(text: str,
                                                                       error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        parse(text)


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


ETCD = GOOD + 'arbiter = "etcd"\netcd_endpoints = ["http://10.0.0.5:2379", "http://10.0.0.6:2379"]\n'


def test_etcd_arbiter_loads_with_its_defaults() -> None:
    cfg = parse(ETCD)
    assert cfg.arbiter == "etcd" and cfg.etcd_prefix == "/colo"
    assert cfg.etcd_endpoints == ["http://10.0.0.5:2379", "http://10.0.0.6:2379"]
    assert (cfg.timing.lease_ttl, cfg.timing.lease_margin) == (3.0, 1.0)
    tls = parse(GOOD + 'arbiter = "etcd"\netcd_endpoints = ["https://[fd00::5]:2379"]\n'
                'etcd_ca_file = "/etc/colo/ca.pem"\netcd_cert_file = "/etc/colo/c.pem"\n'
                'etcd_key_file = "/etc/colo/c.key"\netcd_user = "colo"\n'
                'etcd_password_file = "/etc/colo/etcd.pw"\n')
    assert tls.etcd_user == "colo"


@pytest.mark.parametrize(("extra", "field", "fix"), [
    ('arbiter = "zookeeper"', "arbiter", 'use "etcd"'),
    ('arbiter = "etcd"', "etcd_endpoints", 'etcd_endpoints = ["http://10.0.0.5:2379"'),
    ('etcd_endpoints = "http://10.0.0.5:2379"', "etcd_endpoints", "list of strings"),
    ('etcd_endpoints = ["10.0.0.5:2379"]', "etcd_endpoints", "write it like"),
    ('etcd_endpoints = ["http://10.0.0.5"]', "etcd_endpoints", "write it like"),
    ('etcd_endpoints = ["http://10.0.0.5:99999"]', "etcd_endpoints", "write it like"),
    ('etcd_endpoints = ["unix:///run/etcd.sock:1"]', "etcd_endpoints", "write it like"),
    ('etcd_endpoints = ["http://a:1", "http://a:1"]', "etcd_endpoints", "list each member once"),
    ('etcd_endpoints = ["http://a:1", "https://b:1"]', "etcd_endpoints", "https:// for every"),
    ('etcd_prefix = "colo"', "etcd_prefix", 'start it with "/"'),
    ('etcd_prefix = "/colo/"', "etcd_prefix", 'no trailing "/"'),
    ('etcd_ca_file = "/etc/colo/ca.pem"', "etcd_ca_file", "https://HOST:PORT"),
    ('etcd_ca_file = "ca.pem"', "etcd_ca_file", "full path"),
    ('etcd_cert_file = "/etc/colo/c.pem"', "etcd_key_file", "set both etcd_cert_file"),
    ('etcd_key_file = "/etc/colo/c.key"', "etcd_cert_file", "set both etcd_cert_file"),
    ('etcd_user = "colo"', "etcd_password_file", "set both"),
    ('etcd_password_file = "/etc/colo/pw"', "etcd_user", "set both"),
    ("[timing]\nlease_ttl = 2.5", "timing.lease_ttl", "lease_ttl = 3"),
    ("[timing]\nlease_ttl = 1", "timing.lease_ttl", "lease_ttl = 3"),
    # fences too late: 2 x loop_wait + 0.2 s is 0.3 s
    ("[timing]\nlease_margin = 0.25", "timing.lease_margin", "raise it to at least 0.3"),
    # no time left for a retried keep-alive: 5/12 x 3 - 0.1 = 1.15 s
    ("[timing]\nlease_margin = 1.2", "timing.lease_margin", "raise lease_ttl to at least 4"),
])
def test_bad_etcd_field_is_named_with_its_fix(extra: str, field: str, fix: str) -> None:
    base = ETCD if "etcd_endpoints" not in extra else GOOD + 'arbiter = "etcd"\n'
    if extra.startswith("etcd_") and "https" not in extra and "endpoints" not in extra \
            and "ca_file" not in extra:
        base = ETCD.replace('"http://10.0.0.5:2379", "http://10.0.0.6:2379"',
                            '"https://10.0.0.5:2379"')
    if extra.startswith("arbiter"):
        base = GOOD
    with pytest.raises(ConfigError) as err:
        parse(base + extra + "\n", "web1.toml")
    assert f"web1.toml: {field}:" in str(err.value)
    assert fix in str(err.value), str(err.value)


def test_lease_timing_holds_for_the_local_arbiter_too() -> None:
    with pytest.raises(ConfigError, match=r"timing\.lease_margin: 0\.1 s is too short to fence"):
        parse(GOOD + "[timing]\nlease_margin = 0.1\n")
    # A fractional ttl is fine without etcd.
    assert parse(GOOD + "[timing]\nlease_ttl = 2.5\n").timing.lease_ttl == 2.5
    with pytest.raises(ConfigError, match=r"timing\.lease_margin: 2 s leaves no time to renew"):
        parse(GOOD + "[timing]\nlease_ttl = 2\nlease_margin = 2\n")


# TOML writes nan and inf; every comparison with NaN is false, so "value <= 0" let it
# through, and an infinite timeout never fires.
NOT_FINITE = [
    ("[timing]\nloop_wait = nan\n",
     "timing.loop_wait: must be a finite, positive number of seconds, got nan; "
     "e.g. loop_wait = 0.05"),
    ("[timing]\nheartbeat_timeout = inf\n",
     "timing.heartbeat_timeout: must be a finite, positive number of seconds, got inf; "
     "e.g. heartbeat_timeout = 1.0"),
    ("[timing]\nlease_ttl = +inf\n",
     "timing.lease_ttl: must be a finite, positive number of seconds, got inf; "
     "e.g. lease_ttl = 3.0"),
    ("[timing]\ncheckpoint_max_interval = nan\n",
     "timing.checkpoint_max_interval: must be a finite, positive number of seconds, got nan; "
     "e.g. checkpoint_max_interval = 10.0"),
    ("[timing]\nqmp_timeout = -inf\n",
     "timing.qmp_timeout: must be a finite, positive number of seconds, got -inf; "
     "e.g. qmp_timeout = 5.0"),
    # A field its own checks leave alone (xen_domain, with the qemu backend): the last guard.
    ("xen_domain = nan\n",
     "xen_domain: nan is not a finite number; no field takes nan or inf: give the value "
     "docs/ORCHESTRATOR.md describes"),
]


@pytest.mark.parametrize(("extra", "error"), NOT_FINITE)
def test_nan_and_inf_are_refused_by_colo_orch(
        extra: str, error: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "web1.toml"
    cfg.write_text(GOOD + extra)
    assert main(["run", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err == f"colo-orch: error: {cfg}: {error}\n"


def test_migration_tls_loads_and_its_fields_are_checked() -> None:
    cfg = parse(GOOD + 'migration_tls = "x509"\nmigration_tls_dir = "/etc/colo/tls"\n'
                'migration_tls_hostname = "10.99.1.2"\n')
    assert (cfg.migration_tls, cfg.migration_tls_dir, cfg.migration_tls_psk_user) == (
        "x509", "/etc/colo/tls", "qemu")
    assert parse(GOOD).migration_tls == ""  # off unless asked for (colo-orch check warns)


@pytest.mark.parametrize(("extra", "field", "fix"), [
    ('migration_tls = "tls"', "migration_tls", 'use "x509"'),
    ('migration_tls = "x509"', "migration_tls_dir", "give the directory that holds ca-cert.pem"),
    ('migration_tls = "psk"\nmigration_tls_dir = "tls"', "migration_tls_dir", "keys.psk"),
    ('migration_tls_dir = "/etc/colo/tls"', "migration_tls_dir", 'add migration_tls = "x509"'),
    # Values that reach QEMU's option strings: a comma would add an option of the sender's.
    ('migration_tls = "x509"\nmigration_tls_dir = "/t"\nmigration_tls_hostname = "a,file=/x"',
     "migration_tls_hostname", "the DNS name or address"),
    ('migration_tls = "psk"\nmigration_tls_dir = "/t"\nmigration_tls_psk_user = "u,dir=/x"',
     "migration_tls_psk_user", "the USER of keys.psk"),
    ('migration_tls = "psk"\nmigration_tls_dir = "/t"\nmigration_tls_hostname = "h"',
     "migration_tls_hostname", "x509 only"),
    ('migration_tls = "psk"\nmigration_tls_dir = "/t"\nbackend = "xen"\nxen_domain = "w"\n'
     'xen_config = "/x.cfg"\nxen_checkpoint_listen = "127.0.0.1:9911"', "migration_tls",
     'use "x509"'),
])
def test_bad_migration_tls_is_named_with_its_fix(extra: str, field: str, fix: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(GOOD + extra + "\n", "web1.toml")
    assert f"web1.toml: {field}:" in str(err.value)
    assert fix in str(err.value)
