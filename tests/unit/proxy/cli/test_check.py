"""`colo-proxy check` and the service commands refuse a bad config or flag with one line,
`SOURCE: KEY: problem; fix`, and exit status 2; the configs the repository ships pass.

Each bad case is one row: what is written, and the exact line the operator reads.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from colo_proxy.cli.main import main
from tests.support.paths import REPO

T = "tapP"  # the default tap: the fixes below quote the examples of colo_proxy.service.settings
TAP_FIX = "give the VM's tap on this host's bridge as `ip link` shows it, e.g. "
QUEUE_FIX = "use an NFQUEUE number from 0 to 65535, e.g. "
TIMEOUT_FIX = ("give how long a PVM packet waits for its SVM twin in seconds (> 0, finite), "
               "e.g. ")
MAC_FIX = 'give the unicast MAC both VMs share, e.g. vm_mac = "52:54:00:c0:10:01"'
LISTEN_FIX = ('write it like metrics_listen = "10.0.0.1:7412" (an address of this host, '
              '0.0.0.0 for every interface), or "" for none')
SOCK_FIX = 'give an absolute path of at most 107 bytes, e.g. control_socket = "/run/colo-proxy/control.sock"'
POLICY_FIX = ('use other_policy = "compare", other_policy = "pass" or '
              'other_policy = "checkpoint"')
LONG_SOCK = "/run/" + "x" * 110 + ".sock"

# (file text, "KEY: problem; fix" as printed after the file's name)
BAD_FILES = [
    # A misspelt table used to be ignored: the proxy ran on the lab's defaults.
    ("[proxi]\nqueue = 1\n", "proxi: unknown table; did you mean [proxy]?"),
    ("[compar]\ncompare_timeout = 2.0\n", "compar: unknown table; did you mean [compare]?"),
    ("[timing]\nloop_wait = 1.0\n",
     "timing: unknown table; remove it (the tables are [proxy] and [compare])"),
    ("queue = 1\n[proxy]\n", "queue: is outside any table; move it under the [proxy] line"),
    ("proxy = 1\n", "proxy: must be a table; write it as a [proxy] line"),
    ("[proxy]\nqueu = 1\n", "proxy.queu: unknown key in [proxy]; did you mean queue?"),
    ("[proxy]\nbogus = 1\n",
     "proxy.bogus: unknown key in [proxy]; remove it (docs/PROXY.md lists every key)"),
    ("[compare]\nqueue = 1\n", "compare.queue: belongs in [proxy]; move it under the [proxy] line"),
    ("[compare]\ncompare_timout = 2.0\n",
     "compare.compare_timout: unknown key in [compare]; did you mean compare_timeout?"),
    # queue = "0" used to raise a TypeError naming neither the file nor the key.
    ('[proxy]\nqueue = "0"\n',
     'proxy.queue: "0" is a string, not an integer; write it without quotes: queue = 0'),
    ("[proxy]\nqueue = 1.5\n", f"proxy.queue: must be an integer, not 1.5; {QUEUE_FIX}queue = 0"),
    ("[proxy]\nqueue = true\n", f"proxy.queue: must be an integer, not true; {QUEUE_FIX}queue = 0"),
    ("[proxy]\nqueue = 70000\n", f"proxy.queue: 70000 is out of range; {QUEUE_FIX}queue = 0"),
    ("[proxy]\nqueue = -1\n", f"proxy.queue: -1 is out of range; {QUEUE_FIX}queue = 0"),
    ("[proxy]\nqueue_maxlen = 0\n", "proxy.queue_maxlen: 0 is out of range; give the kernel "
     "queue's length in packets, from 1 to 4294967295, e.g. queue_maxlen = 8192"),
    ("[proxy]\nbatch = 0\n", "proxy.batch: 0 is out of range; use 1 to 65536 packets, e.g. "
     "batch = 256"),
    ("[proxy]\nbusy_poll_us = 20000\n", "proxy.busy_poll_us: 20000 is out of range; use 0 (off) "
     "to 10000 microseconds, e.g. busy_poll_us = 0"),
    ('[proxy]\ngso = "yes"\n', 'proxy.gso: must be true or false, not "yes"; use gso = true or false'),
    ("[proxy]\nbusy_poll_held = 1\n",
     "proxy.busy_poll_held: must be true or false, not 1; use busy_poll_held = false or true"),
    ('[proxy]\non_crash = "maybe"\n', 'proxy.on_crash: "maybe" is not closed or open; '
     'use on_crash = "closed" or on_crash = "open"'),
    ('[proxy]\non_crash = "opne"\n',
     'proxy.on_crash: "opne" is not closed or open; did you mean on_crash = "open"?'),
    ('[proxy]\non_queue_full = "block"\n', 'proxy.on_queue_full: "block" is not drop or accept; '
     'use on_queue_full = "drop" or on_queue_full = "accept"'),
    ('[proxy]\nrole = "primery"\n',
     'proxy.role: "primery" is not primary or secondary; did you mean role = "primary"?'),
    ("[proxy]\ntap = 5\n", f'proxy.tap: must be a string, not 5; {TAP_FIX}tap = "{T}"'),
    ('[proxy]\ntap = ""\n', f'proxy.tap: is empty; {TAP_FIX}tap = "{T}"'),
    ('[proxy]\ntap = "tap-of-the-web-vm"\n', "proxy.tap: 'tap-of-the-web-vm' is longer than 15 "
     f'bytes (a Linux interface name); {TAP_FIX}tap = "{T}"'),
    ('[proxy]\nforward = "fwd 0"\n', "proxy.forward: 'fwd 0' is not a Linux interface name; "
     'give the forward link to the other host as `ip link` shows it, e.g. forward = "fwd0"'),
    ('[proxy]\nuplink = "eth0/1"\n', "proxy.uplink: 'eth0/1' is not a Linux interface name; "
     'give the host\'s bridge port toward the clients, e.g. uplink = "eth0", or "" for none'),
    ('[proxy]\nvm_mac = "52:54:00:c0:10"\n',
     f"proxy.vm_mac: '52:54:00:c0:10' is not a MAC address; {MAC_FIX}"),
    ('[proxy]\nvm_mac = "01:00:5e:00:00:01"\n',
     f"proxy.vm_mac: '01:00:5e:00:00:01' is a multicast address; {MAC_FIX}"),
    ('[proxy]\ncontrol_socket = "proxy.sock"\n',
     f"proxy.control_socket: 'proxy.sock' is not an absolute path; {SOCK_FIX}"),
    (f'[proxy]\ncontrol_socket = "{LONG_SOCK}"\n',
     f"proxy.control_socket: is 120 bytes long, more than a unix socket's 107; {SOCK_FIX}"),
    ('[proxy]\ninstance = "../etc"\n', "proxy.instance: '../etc' is not an instance name; use "
     "1-64 letters, digits, '_', '.' or '-', not starting with '.' (it names "
     'LOCK_DIR/INSTANCE.lock and tags the iptables rules), e.g. instance = "web"'),
    ('[proxy]\nlock_dir = "run"\n', "proxy.lock_dir: 'run' is not an absolute path; give the full "
     'path: the daemon does not run in your directory, e.g. lock_dir = "/run/colo-proxy"'),
    ('[proxy]\nmetrics_listen = ":7412"\n',
     f"proxy.metrics_listen: ':7412' has no address: it would listen on every interface; {LISTEN_FIX}"),
    ('[proxy]\nmetrics_listen = "10.0.0.1"\n',
     f"proxy.metrics_listen: '10.0.0.1' is not ADDR:PORT with a port 1-65535; {LISTEN_FIX}"),
    ('[proxy]\nmetrics_listen = "10.0.0.1:0"\n',
     f"proxy.metrics_listen: '10.0.0.1:0' is not ADDR:PORT with a port 1-65535; {LISTEN_FIX}"),
    ('[proxy]\nmetrics_listen = "fd00::1:7412"\n', "proxy.metrics_listen: 'fd00::1:7412' is not "
     f"ADDR:PORT (an IPv6 address goes in brackets); {LISTEN_FIX}"),
    ("[compare]\ncompare_timeout = nan\n",
     f"compare.compare_timeout: nan is not a finite number; {TIMEOUT_FIX}compare_timeout = 1.0"),
    ("[compare]\ncompare_timeout = inf\n",
     f"compare.compare_timeout: inf is not a finite number; {TIMEOUT_FIX}compare_timeout = 1.0"),
    ("[compare]\nidle_timeout = -inf\n", "compare.idle_timeout: -inf is not a finite number; "
     "give how long an idle flow is kept in seconds (> 0, finite), e.g. idle_timeout = 300.0"),
    ("[compare]\nclosed_timeout = 0\n", "compare.closed_timeout: 0 is out of range; give how "
     "long a closed flow is kept in seconds (> 0, finite), e.g. closed_timeout = 10.0"),
    ("[compare]\ncompare_timeout = -1\n",
     f"compare.compare_timeout: -1 is out of range; {TIMEOUT_FIX}compare_timeout = 1.0"),
    ('[compare]\ncompare_timeout = "0.5"\n', 'compare.compare_timeout: "0.5" is a string, not '
     "a number; write it without quotes: compare_timeout = 0.5"),
    ('[compare]\ncompare_timeout = "nan"\n',
     f'compare.compare_timeout: must be a number, not "nan"; {TIMEOUT_FIX}compare_timeout = 1.0'),
    ("[compare]\nmax_flows = 0\n", "compare.max_flows: 0 is out of range; give the flows "
     "tracked (a whole number >= 1), e.g. max_flows = 262144"),
    ('[compare]\nother_policy = "drop"\n',
     f'compare.other_policy: "drop" is not compare, pass or checkpoint; {POLICY_FIX}'),
    ("[compare]\npass_through = 1\n", "compare.pass_through: must be an array of tables; write "
     "each entry as a [[compare.pass_through]] table"),
    # An entry with no field would match every flow: nothing compared at all.
    ("[[compare.pass_through]]\n", "compare.pass_through[0]: matches every flow: nothing would "
     "be compared; give at least one of proto, src, sport, dst, dport"),
    ("[[compare.pass_through]]\nproto = 17\n[[compare.pass_through]]\nport = 53\n",
     "compare.pass_through[1].port: unknown key; did you mean sport?"),
    ("[[compare.pass_through]]\nproto = 300\n", "compare.pass_through[0].proto: 300 is not a "
     "whole number from 0 to 255; e.g. proto = 17 (6 TCP, 17 UDP, 58 ICMPv6)"),
    ('[[compare.pass_through]]\ndport = "53"\n', 'compare.pass_through[0].dport: "53" is not a '
     "whole number from 0 to 65535; e.g. dport = 123"),
    ('[[compare.pass_through]]\ndst = "10.0.0.1/8"\n', 'compare.pass_through[0].dst: '
     '"10.0.0.1/8" is not an address or network (with no host bits set); write it like '
     'dst = "10.0.0.0/24", "10.0.0.5" or "fd00::/64"'),
    # Nothing on the forward link can be told from a forgery without the peer's MAC.
    ('[proxy]\ntap = "tapS"\n', "proxy.peer_mac: missing: the forward link's frames cannot be "
     "told from forgeries without it; give the other host's forward-link MAC (`ip -br link "
     'show fwd0` there), e.g. peer_mac = "02:c0:10:f0:00:02"'),
    ('[proxy]\npeer_mac = "52:54:00:c0:10:01"\n', 'proxy.peer_mac: "52:54:00:c0:10:01" is the '
     "VM's MAC; give the other host's forward-link MAC (`ip -br link show fwd0` there), e.g. "
     'peer_mac = "02:c0:10:f0:00:02"'),
    ('[proxy]\nkey_file = "web.key"\n', "proxy.key_file: 'web.key' is not an absolute path; "
     "give the full path of the pair's key (the orchestrators' heartbeat_key_file), e.g. "
     'key_file = "/etc/colo/web.key", or "" for none'),
    ("[proxy\n", "not valid TOML: Expected ']' at the end of a table declaration "
     "(at line 1, column 7); fix the syntax at that line"),
]

# (flags, "KEY: problem; fix" as printed after "command line: ")
BAD_FLAGS = [
    (["--queue", "x"], f"--queue: 'x' is not an integer; {QUEUE_FIX}--queue 0"),
    (["--queue", "1.5"], f"--queue: '1.5' is not an integer; {QUEUE_FIX}--queue 0"),
    (["--queue", "70000"], f"--queue: 70000 is out of range; {QUEUE_FIX}--queue 0"),
    (["--compare-timeout", "nan"],
     f"--compare-timeout: nan is not a finite number; {TIMEOUT_FIX}--compare-timeout 1.0"),
    (["--compare-timeout", "inf"],
     f"--compare-timeout: inf is not a finite number; {TIMEOUT_FIX}--compare-timeout 1.0"),
    (["--compare-timeout", "0"],
     f"--compare-timeout: 0 is out of range; {TIMEOUT_FIX}--compare-timeout 1.0"),
    (["--compare-timeout", "soon"],
     f"--compare-timeout: 'soon' is not a number; {TIMEOUT_FIX}--compare-timeout 1.0"),
    (["--on-crash", "maybe"],
     "--on-crash: 'maybe' is not closed or open; use --on-crash closed or --on-crash open"),
    (["--on-queue-full", "acept"],
     "--on-queue-full: 'acept' is not drop or accept; did you mean --on-queue-full accept?"),
    (["--batch", "0"], "--batch: 0 is out of range; use 1 to 65536 packets, e.g. --batch 256"),
    (["--busy-poll-us", "-5"], "--busy-poll-us: -5 is out of range; use 0 (off) to 10000 "
     "microseconds, e.g. --busy-poll-us 0"),
    (["--metrics-listen", ":7412"], "--metrics-listen: ':7412' has no address: it would listen "
     "on every interface; write it like --metrics-listen 10.0.0.1:7412 (an address of this "
     'host, 0.0.0.0 for every interface), or "" for none'),
    (["--vm-mac", "zz"], "--vm-mac: 'zz' is not a MAC address; give the unicast MAC both VMs "
     "share, e.g. --vm-mac 52:54:00:c0:10:01"),
    (["--tap", ""], f"--tap: is empty; {TAP_FIX}--tap {T}"),
    (["--forward", "a:b"], "--forward: 'a:b' is not a Linux interface name; give the forward "
     "link to the other host as `ip link` shows it, e.g. --forward fwd0"),
    (["--control-socket", "rel.sock"], "--control-socket: 'rel.sock' is not an absolute path; "
     "give an absolute path of at most 107 bytes, e.g. --control-socket "
     "/run/colo-proxy/control.sock"),
    (["--instance", "a b"], "--instance: 'a b' is not an instance name; use 1-64 letters, "
     "digits, '_', '.' or '-', not starting with '.' (it names LOCK_DIR/INSTANCE.lock and "
     "tags the iptables rules), e.g. --instance web"),
    (["--lock-dir", "locks"], "--lock-dir: 'locks' is not an absolute path; give the full path: "
     "the daemon does not run in your directory, e.g. --lock-dir /run/colo-proxy"),
    (["--role", "leader"], "--role: 'leader' is not primary or secondary; use --role primary "
     "or --role secondary"),
]


def _check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["check", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(("text", "error"), BAD_FILES)
def test_a_bad_file_is_refused_with_its_key_and_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, error: str) -> None:
    cfg = tmp_path / "proxy.toml"
    cfg.write_text(text)
    rc, out, err = _check(capsys, "-c", str(cfg))
    assert (rc, out, err) == (2, "", f"colo-proxy check: error: {cfg}: {error}\n")


@pytest.mark.parametrize(("flags", "error"), BAD_FLAGS)
def test_a_bad_flag_is_refused_the_same_way(
        capsys: pytest.CaptureFixture[str], flags: list[str], error: str) -> None:
    rc, out, err = _check(capsys, *flags)
    assert (rc, out, err) == (2, "", f"colo-proxy check: error: command line: {error}\n")


def test_a_flag_over_a_good_file_is_checked_and_a_bad_file_stays_bad(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "proxy.toml"
    cfg.write_text("[proxy]\nqueue = 3\n")
    assert _check(capsys, "-c", str(cfg), "--queue", "70000")[2] == (
        f"colo-proxy check: error: command line: --queue: 70000 is out of range; {QUEUE_FIX}"
        "--queue 0\n")
    # The flag would override it, but the file is wrong all the same (and read first).
    cfg.write_text("[proxy]\nqueue = -3\n")
    assert _check(capsys, "-c", str(cfg), "--queue", "4")[2] == (
        f"colo-proxy check: error: {cfg}: proxy.queue: -3 is out of range; {QUEUE_FIX}"
        "queue = 0\n")


def test_a_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert _check(capsys, "-c", str(missing)) == (
        2, "", f"colo-proxy check: error: {missing}: cannot read: No such file or directory; "
        "check the path\n")


def test_a_good_config_gets_a_short_summary(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "proxy.toml"
    cfg.write_text('[proxy]\ntap = "vif1.0"\nqueue = 3\nuplink = "eth0"\n'
                   'peer_mac = "02:c0:10:f0:00:02"\nkey_file = "/etc/colo/web.key"\n'
                   'metrics_listen = "[fd00::1]:7412"\n'
                   "[compare]\ncompare_timeout = 0.25\n"
                   '[[compare.pass_through]]\nproto = 17\ndport = 123\ndst = "10.0.0.0/24"\n')
    rc, out, err = _check(capsys, "-c", str(cfg), "--on-crash", "open")
    assert (rc, err) == (0, "")
    assert out == (
        f"{cfg}: ok\n"
        "primary proxy, instance colo: tap vif1.0, forward link fwd0, uplink eth0, "
        "VM MAC 52:54:00:c0:10:01\n"
        "peer's forward-link MAC 02:c0:10:f0:00:02, pair's key /etc/colo/web.key\n"
        "NFQUEUE 3 (on crash: open, queue full: drop, GSO on, fast path on), control socket "
        "/run/colo-proxy/control.sock, metrics on [fd00::1]:7412\n"
        "compare timeout 0.25 s, 2 flow pattern(s) passed uncompared\n")


# Under systemd, stderr is the journal, which stamps each line: the proxy's lines carry
# no time of their own (JOURNAL_STREAM is how systemd says so).
JOURNAL = {**os.environ, "JOURNAL_STREAM": "8:12345"}


def test_the_service_commands_exit_2_with_the_same_line(tmp_path: Path) -> None:
    """Through the real entry point in a process of its own: refused before anything is
    touched (this runs without root: reaching the kernel would fail differently)."""
    cfg = tmp_path / "proxy.toml"
    cfg.write_text('[proxi]\nqueue = "0"\n')
    for role in ("primary", "secondary"):
        res = subprocess.run([sys.executable, "-m", "colo_proxy.cli.main", role, "-c", str(cfg)],
                             capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
                             env=JOURNAL)
        assert (res.returncode, res.stdout) == (2, "")
        assert res.stderr == (f"colo-proxy[{role}] ERROR not started: {cfg}: proxi: unknown "
                              "table; did you mean [proxy]?\n")
    res = subprocess.run([sys.executable, "-m", "colo_proxy.cli.main", "primary",
                          "--compare-timeout", "inf"],
                         capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
                         env=JOURNAL)
    assert (res.returncode, res.stderr) == (
        2, "colo-proxy[primary] ERROR not started: command line: --compare-timeout: inf is not "
        f"a finite number; {TIMEOUT_FIX}--compare-timeout 1.0\n")


def test_lines_outside_the_journal_carry_their_time(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    res = subprocess.run([sys.executable, "-m", "colo_proxy.cli.main", "primary",
                          "--compare-timeout", "inf"],
                         capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
                         env=env)
    assert res.returncode == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} colo-proxy\[primary\] ERROR "
                        r"not started: command line: --compare-timeout: inf .*\n", res.stderr), \
        res.stderr


def test_replay_checks_its_compare_timeout_as_the_service_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pcap = tmp_path / "x.pcap"
    pcap.write_bytes(b"")
    assert main(["replay", "-p", str(pcap), "-s", str(pcap), "--compare-timeout", "inf"]) == 2
    assert capsys.readouterr().err == (
        "colo-proxy replay: error: command line: --compare-timeout: inf is not a finite number; "
        f"{TIMEOUT_FIX}--compare-timeout 1.0\n")


def test_check_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:\n  colo-proxy check -c /etc/colo/proxy-primary.toml\n" in out


def test_the_service_commands_take_fenced(capsys: pytest.CaptureFixture[str]) -> None:
    from colo_proxy.cli.main import build_parser
    from colo_proxy.cli.service import settings_from

    mac = ["--peer-mac", "02:c0:10:f0:00:02"]
    for role in ("primary", "secondary"):
        assert settings_from(build_parser().parse_args([role, *mac, "--fenced"])).fenced
        assert not settings_from(build_parser().parse_args([role, *mac])).fenced
        with pytest.raises(SystemExit):
            main([role, "--help"])
        assert "--fenced" in capsys.readouterr().out
