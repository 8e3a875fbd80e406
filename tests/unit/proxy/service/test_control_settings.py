"""The control channel's codec and the TOML settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from colo_proxy.service.settings import ICMP6_MULTICAST, ConfigError, load
from colo_proxy.wire import control

PEER = "02:c0:10:f0:00:02"  # the other host's forward-link MAC (required)


def test_lines_decode_across_reads_and_errors_are_items() -> None:
    dec = control.LineDecoder()
    msg = control.encode({"type": "status"})
    assert list(dec.feed(msg[:5])) == []
    first, second = dec.feed(msg[5:] + b"not json\n")
    assert first == {"v": 1, "type": "status"}
    assert isinstance(second, control.ProtocolError)
    items = list(dec.feed(b'{"v":2,"type":"x"}\n[1]\n'))
    assert all(isinstance(i, control.ProtocolError) for i in items) and len(items) == 2


def test_overlong_line_is_refused() -> None:
    dec = control.LineDecoder()
    assert isinstance(next(iter(dec.feed(b"x" * (control.MAX_LINE + 1)))),
                      control.ProtocolError)


def test_settings_from_toml_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text('[proxy]\ntap = "vif1.0"\nqueue = 3\non_crash = "open"\n'
                   '[compare]\ncompare_timeout = 0.25\n'
                   '[[compare.pass_through]]\nproto = 17\ndport = 53\n')
    s = load(cfg, {"queue": 7, "role": "primary", "peer_mac": PEER})
    assert (s.tap, s.queue, s.on_crash) == ("vif1.0", 7, "open")
    assert s.compare.compare_timeout == 0.25
    assert s.compare.pass_through[0].dport == 53
    assert ICMP6_MULTICAST in s.compare.pass_through


def test_busy_poll_and_batch_settings(tmp_path: Path) -> None:
    assert load(None, {"peer_mac": PEER}).busy_poll_us == 0  # off: it slowed the SVM
    cfg = tmp_path / "p.toml"
    cfg.write_text('[proxy]\nbusy_poll_us = 300\nbatch = 64\n')
    s = load(cfg, {"busy_poll_held": True, "peer_mac": PEER})
    assert (s.busy_poll_us, s.busy_poll_held, s.batch) == (300, True, 64)


def test_gso_packets_are_queued_whole_and_segmented_where_the_svm_lags(tmp_path: Path) -> None:
    # A whole GSO packet is held until the SVM has sent all of its bytes: bulk flows
    # stalled for the compare timeout unless the packets the SVM lags inside are sent to
    # a segmenting queue (docs/PROXY.md, "Bulk transfers").
    from colo_proxy.cli.main import build_parser
    from colo_proxy.cli.service import settings_from
    from colo_proxy.kernel.nfqueue import QueueConfig

    s = load(None, {"peer_mac": PEER, "queue": "7"})
    assert s.gso is True and s.compare.resegment_after == 0.01
    assert s.segmenting_queue == 8
    assert QueueConfig(0).gso is False  # the kernel adapter queues nothing whole unasked
    cfg = tmp_path / "p.toml"
    cfg.write_text('[proxy]\ngso = false\n')
    assert load(cfg, {"peer_mac": PEER}).gso is False
    assert load(cfg, {"peer_mac": PEER}).segmenting_queue is None
    cfg.write_text('[proxy]\nsegment_queue = 3\n[compare]\nresegment_after = 0.5\n')
    s = load(cfg, {"peer_mac": PEER})
    assert (s.segmenting_queue, s.compare.resegment_after) == (3, 0.5)
    cfg.write_text('[compare]\nresegment_after = 0\n')
    assert load(cfg, {"peer_mac": PEER}).segmenting_queue is None  # whole, never segmented
    for argv, want in (([], True), (["--gso"], True), (["--no-gso"], False)):
        args = build_parser().parse_args(["primary", "--peer-mac", PEER, *argv])
        assert settings_from(args).gso is want, argv


def test_the_segmenting_queue_is_not_the_comparing_queue() -> None:
    with pytest.raises(ConfigError, match="--segment-queue: queue 4 cannot be the segmenting"):
        load(None, {"peer_mac": PEER, "queue": "4", "segment_queue": "4"})
    with pytest.raises(ConfigError, match="queue 65536 cannot"):
        load(None, {"peer_mac": PEER, "queue": "65535"})


@pytest.mark.parametrize("text", ['[proxy]\nbogus = 1\n', '[proxy]\non_crash = "maybe"\n',
                                  '[compare]\ncompare_timeout = -1\n', "[proxy\n",
                                  '[proxy]\nbusy_poll_us = -1\n', '[proxy]\nbatch = 0\n'])
def test_bad_settings_say_what(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError):
        load(cfg, {"peer_mac": PEER})


def test_every_setting_has_a_spec_in_its_table() -> None:
    """A new field without a spec would be neither type- nor range-checked."""
    from dataclasses import fields

    from colo_proxy.compare import CompareConfig
    from colo_proxy.service.settings import PASS_THROUGH, SPECS, ProxySettings

    proxy = {f.name for f in fields(ProxySettings)} - {"compare"}
    compare = {f.name for f in fields(CompareConfig)} - {PASS_THROUGH}
    assert {k for k, s in SPECS.items() if s.table == "proxy"} == proxy
    assert {k for k, s in SPECS.items() if s.table == "compare"} == compare
    for key, spec in SPECS.items():  # each default passes its own spec
        if key == "peer_mac":
            continue  # required: no default
        default = getattr(ProxySettings() if spec.table == "proxy" else CompareConfig(), key)
        assert load(None, {"peer_mac": PEER, key: default}) is not None


def test_policies_load_as_policies(tmp_path: Path) -> None:
    from colo_proxy.compare import Policy

    cfg = tmp_path / "p.toml"
    cfg.write_text('[compare]\nother_policy = "pass"\n')
    assert load(cfg, {"peer_mac": PEER}).compare.other_policy is Policy.PASS


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0])
def test_the_comparators_own_config_refuses_a_timeout_that_never_or_always_fires(
        value: float) -> None:
    from colo_proxy.compare import CompareConfig

    with pytest.raises(ValueError, match="compare_timeout must be a finite number of seconds"):
        CompareConfig(compare_timeout=value)


def test_the_peers_forward_link_mac_is_required_and_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^command line: --peer-mac: missing: .*"
                       r"ip -br link show fwd0.*--peer-mac 02:c0:10:f0:00:02"):
        load(None, {})
    cfg = tmp_path / "p.toml"
    cfg.write_text('[proxy]\ntap = "tapS"\n')
    with pytest.raises(ConfigError, match=rf"^{cfg}: proxy.peer_mac: missing"):
        load(cfg, {})
    for bad, why in (("02:c0:10:f0:00", "not a MAC"), ("03:00:00:00:00:01", "multicast"),
                     ("52:54:00:c0:10:01", "is the VM's MAC")):
        with pytest.raises(ConfigError, match=why):
            load(None, {"peer_mac": bad})
    assert load(None, {"peer_mac": PEER.upper()}).peer_mac == PEER.upper()


def test_key_file_is_an_absolute_path_or_none() -> None:
    with pytest.raises(ConfigError, match=r"--key-file: 'web\.key' is not an absolute path"):
        load(None, {"peer_mac": PEER, "key_file": "web.key"})
    assert load(None, {"peer_mac": PEER, "key_file": "/etc/colo/web.key"}).key_file
    assert load(None, {"peer_mac": PEER, "key_file": ""}).key_file == ""
