"""`colo-proxy primary|secondary|status|cleanup`: the service's command line.

`register(subparsers)` adds the subcommands to the `colo-proxy` parser of cli/main.py;
`python -m colo_proxy.cli.service` runs them on their own. Argument parsing only: the
service is built and run by `colo_proxy.service.run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from colo_proxy.service import instance_lock, run
from colo_proxy.service.control_socket import request
from colo_proxy.service.instance_lock import LOCK_DIR, AlreadyRunning
from colo_proxy.service.settings import DEFAULT_SOCKET, ConfigError, ProxySettings, load

log = logging.getLogger("colo-proxy")


def _service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="TOML file ([proxy] and [compare] tables)")
    p.add_argument("--tap", help="the VM's tap on this host's bridge")
    p.add_argument("--forward", help="the forward link to the other host")
    p.add_argument("--uplink", help="the host's port toward the clients (primary: rewrites "
                   "connections carried over a role swap)")
    p.add_argument("--vm-mac", dest="vm_mac", help="the VMs' MAC address")
    p.add_argument("--control-socket", dest="control_socket", help="unix socket path")
    p.add_argument("--instance", help="this VM's proxy: the tag of its iptables rules and "
                   "its lock (LOCK_DIR/INSTANCE.lock; one proxy per instance)")
    p.add_argument("--lock-dir", dest="lock_dir",
                   help="directory of the instance locks (default /run/colo-proxy)")
    p.add_argument("--queue", type=int, help="NFQUEUE number (primary)")
    p.add_argument("--on-crash", dest="on_crash", choices=("closed", "open"),
                   help="if the proxy dies: hold (closed) or pass (open) the PVM's output")
    p.add_argument("--on-queue-full", dest="on_queue_full", choices=("drop", "accept"))
    p.add_argument("--compare-timeout", dest="compare_timeout", type=float,
                   help="seconds a PVM packet waits for its SVM twin")
    p.add_argument("--busy-poll-us", dest="busy_poll_us", type=int,
                   help="after a packet, poll without sleeping for this many us (0: off)")
    p.add_argument("--busy-poll-held", dest="busy_poll_held", action="store_const",
                   const=True, help="busy-poll also while packets wait for SVM twins")
    p.add_argument("--batch", type=int, help="most packets read per source and call")
    p.add_argument("--no-gso", dest="gso", action="store_const", const=False)
    p.add_argument("--metrics-listen", dest="metrics_listen", metavar="ADDR:PORT",
                   help="serve Prometheus metrics on http://ADDR:PORT/metrics")
    p.add_argument("-v", "--verbose", action="store_true")


def register(sub: Any) -> None:
    examples = {
        "primary": "examples:\n  colo-proxy primary -c /etc/colo/proxy.toml\n"
                   "  colo-proxy primary --tap tapP --forward fwd0 --uplink eth0 "
                   "--queue 0 --metrics-listen 10.0.0.1:7412\n",
        "secondary": "examples:\n  colo-proxy secondary -c /etc/colo/proxy.toml\n"
                     "  colo-proxy secondary --tap tapS --forward fwd0\n",
    }
    for role in ("primary", "secondary"):
        p = sub.add_parser(role, help=f"run the proxy of the {role} host", epilog=examples[role],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _service_args(p)
        p.set_defaults(func=_cmd_service, role=role)
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
    keys = ("tap", "forward", "uplink", "vm_mac", "control_socket", "instance", "lock_dir",
            "queue", "on_crash",
            "on_queue_full", "gso", "metrics_listen", "busy_poll_us", "busy_poll_held", "batch")
    over: dict[str, Any] = {k: getattr(args, k, None) for k in keys}
    over["role"] = args.role
    if getattr(args, "compare_timeout", None) is not None:
        over["compare"] = {"compare_timeout": args.compare_timeout}
    return load(args.config, over)


def _cmd_service(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format=f"colo-proxy[{args.role}] %(levelname)s %(message)s", stream=sys.stderr)
    if args.verbose:  # only our own debug lines (pyroute2's are per netlink message)
        log.setLevel(logging.DEBUG)
    try:
        s = settings_from(args)
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    try:
        if s.role == "primary":
            run.run_primary(s)
        else:
            run.run_secondary(s)
    except AlreadyRunning as exc:
        log.error("not started: %s", exc)
        return 3
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        reply = request(args.control_socket, {"type": "status"})
    except OSError as exc:
        print(f"colo-proxy: no proxy answers on {args.control_socket}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=1, sort_keys=True))
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
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
