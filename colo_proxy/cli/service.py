"""`colo-proxy primary|secondary|check|status|cleanup`: the service's command line.

`register(subparsers)` adds the subcommands to the `colo-proxy` parser of cli/main.py;
`python -m colo_proxy.cli.service` runs them on their own. Argument parsing only: the
service is built and run by `colo_proxy.service.run`; `check` validates the settings
(`colo_proxy.service.settings`) without running anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from colo_proxy.service import instance_lock, run
from colo_proxy.service.control_socket import request, status_path_for
from colo_proxy.service.instance_lock import LOCK_DIR, AlreadyRunning
from colo_proxy.service.settings import (
    DEFAULT_SOCKET,
    ConfigError,
    ProxySettings,
    flag_name,
    flag_value,
    load,
)

log = logging.getLogger("colo-proxy")
EXIT_BAD_CONFIG = 2  # as argparse's own usage errors
EXIT_FAILED = 1  # an exception while running: failed closed, to be restarted


# Setting -> help of its flag (settings.flag_name). Every flag's text is checked by
# settings.load against the setting's spec, as the config file's value is (no argparse
# `type` or `choices`): an error reads "command line: --queue: problem; fix", status 2.
SETTING_FLAGS: dict[str, str] = {
    "tap": "the VM's tap on this host's bridge",
    "forward": "the forward link to the other host",
    "uplink": "the host's port toward the clients (primary: rewrites connections carried "
              "over a role swap)",
    "vm_mac": "the VMs' MAC address",
    "peer_mac": "the other host's forward-link MAC (required): only its frames are taken as "
                "ISN copies, announcements or SVM output",
    "key_file": "the pair's key (the orchestrators' heartbeat key file): authenticates "
                "carried-flow announcements on the forward link",
    "control_socket": "unix socket path (mode 0600, root only; PATH.status answers "
                      "status to every user)",
    "instance": "this VM's proxy: the tag of its iptables rules and its lock "
                "(LOCK_DIR/INSTANCE.lock; one proxy per instance)",
    "pair": "the `pair` label on every metric (colo-orch passes its pair's name; default "
            "the instance name)",
    "host": "the `host` label on every metric (colo-orch passes its host id; default the "
            "machine's host name)",
    "lock_dir": "directory of the instance locks (default /run/colo-proxy)",
    "queue": "NFQUEUE number (primary)",
    "segment_queue": "NFQUEUE number of the segmenting queue (primary, with GSO; default "
                     "queue + 1)",
    "output": "{compare,buffer}: compare the PVM's output with the SVM's (COLO), or buffer "
              "it until the next checkpoint (Remus-style; primary)",
    "on_crash": "{closed,open}: if the proxy dies, hold (closed) or pass (open) the PVM's "
                "output",
    "on_queue_full": "{drop,accept}: when the kernel queue is full",
    "compare_timeout": "seconds a PVM packet waits for its SVM twin",
    "resegment_after": "seconds a GSO super-packet waits for the SVM's bytes before the "
                       "kernel segments it (with GSO; 0: never)",
    "busy_poll_us": "after a packet, poll without sleeping for this many us (0: off)",
    "batch": "most packets read per source and call",
    "metrics_listen": "serve Prometheus metrics on http://ADDR:PORT/metrics",
    "release_permit": "{auto,required,off}: release output only under an unexpired permit "
                      "from the orchestrator: once its first permit came (auto), from the "
                      "start (required), never (off)",
}
METAVARS = {"metrics_listen": "ADDR:PORT", "compare_timeout": "SECONDS", "peer_mac": "MAC",
            "resegment_after": "SECONDS",
            "key_file": "FILE"}


def _service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="TOML file ([proxy] and [compare] tables)")
    for key, text in SETTING_FLAGS.items():
        p.add_argument(flag_name(key), dest=key, metavar=METAVARS.get(key), help=text)
    p.add_argument("--busy-poll-held", dest="busy_poll_held", action="store_const",
                   const=True, help="busy-poll also while packets wait for SVM twins")
    p.add_argument("--gso", dest="gso", action="store_const", const=True,
                   help="queue whole GSO packets, segmenting those the SVM lags inside (the "
                        "default; docs/PROXY.md, \"Bulk transfers\")")
    p.add_argument("--no-gso", dest="gso", action="store_const", const=False,
                   help="segment every GSO packet before queueing it (slower)")
    p.add_argument("--fast-path", dest="fast_path", action="store_const", const=True,
                   help="release in-order matching TCP segments in C (the default, when built)")
    p.add_argument("--no-fast-path", dest="fast_path", action="store_const", const=False,
                   help="run every packet through the Python loop")
    p.add_argument("--fenced", dest="fenced", action="store_const", const=True,
                   help="start fenced: hold all of the VM's output from the first packet "
                        "until the orchestrator sends unfence (colo-orch gives it when "
                        "its output must be held)")
    p.add_argument("-v", "--verbose", action="store_true")


CHECK_EPILOG = """\
examples:
  colo-proxy check -c /etc/colo/proxy-primary.toml
  colo-proxy check -c /etc/colo/proxy-secondary.toml --role secondary
  colo-proxy check --role primary --tap tapP --peer-mac 02:c0:10:f0:00:02 --queue 5

Reads the config and the flags exactly as `colo-proxy primary|secondary` would, and touches
nothing. Exit status: 0 and a summary when they are good; 2 and one line
FILE: KEY: problem; fix (FILE is "command line" for a flag) when not.
"""


def register(sub: Any) -> None:
    examples = {
        "primary": "examples:\n  colo-proxy primary -c /etc/colo/proxy.toml\n"
                   "  colo-proxy primary --tap tapP --forward fwd0 --uplink eth0 "
                   "--peer-mac 02:c0:10:f0:00:02 --key-file /etc/colo/web.key "
                   "--queue 0 --metrics-listen 10.0.0.1:7412\n"
                   "  colo-proxy check -c /etc/colo/proxy.toml   (validate it first)\n",
        "secondary": "examples:\n  colo-proxy secondary -c /etc/colo/proxy.toml\n"
                     "  colo-proxy secondary --tap tapS --forward fwd0 "
                     "--peer-mac 02:c0:10:f0:00:01 --key-file /etc/colo/web.key\n",
    }
    for role in ("primary", "secondary"):
        p = sub.add_parser(role, help=f"run the proxy of the {role} host", epilog=examples[role],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _service_args(p)
        p.set_defaults(func=_cmd_service, role=role)
    p = sub.add_parser("check", help="validate a config file and flags, touching nothing",
                       description="Validate the proxy's configuration: the TOML file and the "
                       "flags, as the primary or secondary command would take them.",
                       epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _service_args(p)
    p.add_argument("--role", metavar="{primary,secondary}",
                   help="the command the config is for (default: the file's role, else primary)")
    p.set_defaults(func=_cmd_check)
    p = sub.add_parser("status", help="ask a running proxy for its state (JSON)")
    p.add_argument("--control-socket", dest="control_socket", default=DEFAULT_SOCKET)
    p.set_defaults(func=_cmd_status)
    p = sub.add_parser("cleanup", help="remove every filter and rule a proxy left behind")
    p.add_argument("--instance", help="only this instance's iptables rules (default: all)")
    p.add_argument("--control-socket", dest="control_socket", default=DEFAULT_SOCKET)
    p.add_argument("--lock-dir", dest="lock_dir", default=str(LOCK_DIR),
                   help="directory of the instance locks (default /run/colo-proxy)")
    p.set_defaults(func=_cmd_cleanup)


def settings_from(args: argparse.Namespace) -> ProxySettings:
    keys = (*SETTING_FLAGS, "gso", "fast_path", "busy_poll_held", "fenced", "role")
    return load(args.config, {k: getattr(args, k, None) for k in keys})


def summary(s: ProxySettings) -> str:
    """What `check` prints for good settings: the few values an operator looks for."""
    links = f"tap {s.tap}, forward link {s.forward}"
    if s.role == "primary":
        links += f", uplink {s.uplink or '(none)'}"
        queue = (f"NFQUEUE {s.queue} (on crash: {s.on_crash}, queue full: {s.on_queue_full}, "
                 f"GSO {'on' if s.gso else 'off'}, fast path {'on' if s.fast_path else 'off'}), ")
    else:
        queue = ""
    return (f"{s.role} proxy, instance {s.instance}: {links}, VM MAC {s.vm_mac}\n"
            f"peer's forward-link MAC {s.peer_mac}, pair's key "
            f"{s.key_file or '(none: carried flows are not announced)'}\n"
            f"{queue}control socket {s.control_socket}, "
            f"metrics {('on ' + s.metrics_listen) if s.metrics_listen else 'off'}\n"
            f"compare timeout {s.compare.compare_timeout:g} s, "
            f"{len(s.compare.pass_through)} flow pattern(s) passed uncompared")


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        s = settings_from(args)
    except ConfigError as exc:
        print(f"colo-proxy check: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"{args.config or 'command line'}: ok\n{summary(s)}")
    return 0


def _cmd_service(args: argparse.Namespace) -> int:
    fmt = f"colo-proxy[{args.role}] %(levelname)s %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        # journald stamps each line itself (systemd sets JOURNAL_STREAM when stderr is
        # the journal); elsewhere, in a log file beside the orchestrator's lines (the
        # lab's), a line without its time cannot be placed among a checkpoint's events.
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)
    if args.verbose:  # only our own debug lines (pyroute2's are per netlink message)
        log.setLevel(logging.DEBUG)
    try:
        s = settings_from(args)
    except ConfigError as exc:
        log.error("not started: %s", exc)
        return EXIT_BAD_CONFIG
    try:
        if s.role == "primary":
            run.run_primary(s)
        else:
            run.run_secondary(s)
    except AlreadyRunning as exc:
        log.error("not started: %s", exc)
        return 3
    except ConfigError as exc:  # found only when read (the key file): nothing attached yet
        log.error("not started: %s", exc)
        return EXIT_BAD_CONFIG
    except Exception:
        # Failing closed: the rule and filters stay, so the VM's output is held (or passed,
        # with on_crash = "open") as after a crash, until the supervisor's restart takes
        # them over. Exit 1 tells the supervisor to restart us.
        log.exception("failed: its rules and filters stay as on a crash (on_crash %s) until "
                      "a restarted proxy takes them over, or `colo-proxy cleanup`",
                      s.on_crash)
        return EXIT_FAILED
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    # The status socket: open to every local user, where the control socket is root's.
    path = status_path_for(args.control_socket)
    try:
        reply = request(path, {"type": "status"})
    except OSError as exc:
        print(f"colo-proxy: no proxy answers on {path}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=1, sort_keys=True))
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    try:  # the same settings as the service's flags, checked the same way
        for key in ("instance", "lock_dir", "control_socket"):
            if getattr(args, key) is not None:
                flag_value(key, getattr(args, key))
    except ConfigError as exc:
        print(f"colo-proxy cleanup: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    # A live proxy's filters and rules are what hold its VM's output: never remove them.
    live = [(i, pid) for i, pid in instance_lock.running(Path(args.lock_dir))
            if args.instance in (None, i)]
    if live:
        names = ", ".join(f"{i} (pid {pid})" for i, pid in live)
        print(f"colo-proxy: cleanup refused: a proxy still runs: {names}; stop it first "
              "(its filters and rules hold its VM's output)", file=sys.stderr)
        return 1
    for line in run.cleanup(args.instance, args.control_socket):
        print(f"removed {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="colo-proxy")
    sub = ap.add_subparsers(dest="command", required=True)
    register(sub)
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
