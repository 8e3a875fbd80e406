"""`colo-proxy primary|secondary|status|cleanup`: the service's command line.

`register(subparsers)` adds the subcommands to the `colo-proxy` parser of cli.py;
`python -m colo_proxy.cli.service` runs them on their own.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from colo_proxy.kernel import netfilter
from colo_proxy.service import handover_file
from colo_proxy.service.control_socket import ControlServer, request
from colo_proxy.service.settings import DEFAULT_SOCKET, ConfigError, ProxySettings, load
from colo_proxy.wire import handover

log = logging.getLogger("colo-proxy")


def _service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="TOML file ([proxy] and [compare] tables)")
    p.add_argument("--tap", help="the VM's tap on this host's bridge")
    p.add_argument("--forward", help="the forward link to the other host")
    p.add_argument("--uplink", help="the host's port toward the clients (primary: rewrites "
                   "connections carried over a role swap)")
    p.add_argument("--vm-mac", dest="vm_mac", help="the VMs' MAC address")
    p.add_argument("--control-socket", dest="control_socket", help="unix socket path")
    p.add_argument("--instance", help="tag of this proxy's iptables rules")
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
    p.set_defaults(func=_cmd_cleanup)


def settings_from(args: argparse.Namespace) -> ProxySettings:
    keys = ("tap", "forward", "uplink", "vm_mac", "control_socket", "instance", "queue", "on_crash",
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
    if s.role == "primary":
        run_primary(s)
    else:
        run_secondary(s)
    return 0


def run_primary(s: ProxySettings) -> None:
    from colo_proxy.kernel.datapath import MODE_PROTECTED, Datapath
    from colo_proxy.kernel.nfqueue import NfQueue, QueueConfig
    from colo_proxy.kernel.packet_socket import PacketSocket
    from colo_proxy.service.loop import serve
    from colo_proxy.service.primary import PrimaryProxy

    qcfg = QueueConfig(s.queue, maxlen=s.queue_maxlen, gso=s.gso,
                       fail_open=s.on_queue_full == "accept")
    ctl = ControlServer(s.control_socket)
    try:
        with Datapath("primary", tap=s.tap, fwd=s.forward, vm_mac=s.vm_mac,
                      uplink=s.uplink) as dp, NfQueue(qcfg) as q:
            svm = PacketSocket(s.forward)
            dp.set_mode(MODE_PROTECTED)
            _carry_over(s, dp)
            # Bind the queue before the rule exists, so no packet is ever queued to nobody.
            netfilter.install(s.tap, s.queue, s.instance, bypass=s.on_crash == "open")
            announcer = _Announcer(dp, svm) if s.uplink else None
            try:
                proxy = PrimaryProxy(s, q, svm, notify=ctl.broadcast, datapath=dp)
                stop_metrics = _serve_metrics(s, proxy, queue=s.queue,
                                              fail_open=qcfg.fail_open)
                try:
                    serve(proxy, ctl, {"pvm": q, "svm": svm}, ready=lambda: log.info(
                        "ready: comparing output of %s, mirror to %s, control %s, on crash %s",
                        s.tap, s.forward, s.control_socket, s.on_crash),
                        busy_poll_us=s.busy_poll_us, busy_poll_held=s.busy_poll_held)
                finally:
                    stop_metrics()
            finally:
                if announcer is not None:
                    announcer.stop()
                netfilter.remove(s.instance)
                svm.close()
    finally:
        ctl.close()
        log.info("stopped: filters and rules removed")


def _carry_over(s: ProxySettings, dp: Any) -> None:
    """Take the offsets the secondary-role proxy left at the role swap (colo_proxy.wire.handover)."""
    offsets = handover_file.take(handover_file.path_for(s.control_socket))
    if not offsets:
        return
    if not s.uplink:
        log.warning("%d connection(s) opened by this VM since the last checkpoint before the "
                    "failover will break: no --uplink to rewrite them on", len(offsets))
        return
    log.info("carried %d connection(s) over the role swap: rewritten on %s",
             dp.carry(offsets), s.uplink)


class _Announcer:
    """Repeats the carried flows to the secondary (colo_proxy.wire.handover.announcement) while
    there are any, so that a failover of this primary does not break them either."""

    def __init__(self, dp: Any, link: Any) -> None:
        self.dp, self.link = dp, link
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="carry-announcer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                for o in self.dp.carried_offsets():
                    self.link.send(handover.ETH_P_CARRY, handover.announcement(o))
            except OSError as exc:  # a full device queue: the next round repeats them
                log.debug("carried-flow announcement: %s", exc)
            if self._stop.wait(handover.ANNOUNCE_EVERY):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_secondary(s: ProxySettings) -> None:
    from colo_proxy.kernel.datapath import MODE_PROTECTED, Datapath
    from colo_proxy.service.loop import serve
    from colo_proxy.service.secondary import SecondaryProxy

    ctl = ControlServer(s.control_socket)
    handover_file.discard(handover_file.path_for(s.control_socket))  # a new secondary: none is valid
    try:
        with Datapath("secondary", tap=s.tap, fwd=s.forward, vm_mac=s.vm_mac) as dp:
            dp.set_mode(MODE_PROTECTED)
            proxy = SecondaryProxy(dp, handover=handover_file.path_for(s.control_socket))
            stop_metrics = _serve_metrics(s, proxy)
            try:
                serve(proxy, ctl, {}, ready=lambda: log.info(
                    "ready: SVM tap %s, forward link %s, control %s", s.tap, s.forward,
                    s.control_socket))
            finally:
                stop_metrics()
    finally:
        ctl.close()
        log.info("stopped: filters removed")


def _serve_metrics(s: ProxySettings, proxy: Any, **kw: Any) -> Callable[[], None]:
    """Start the /metrics endpoint if configured; returns its stop function."""
    if not s.metrics_listen:
        return lambda: None
    from colo_proxy.service import metrics

    endpoint = metrics.serve(s.metrics_listen, proxy, s.role, **kw)
    log.info("metrics on http://%s/metrics", s.metrics_listen)
    return endpoint.stop


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        reply = request(args.control_socket, {"type": "status"})
    except OSError as exc:
        print(f"colo-proxy: no proxy answers on {args.control_socket}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=1, sort_keys=True))
    return 0


def cleanup(instance: str | None = None, control_socket: str | None = None) -> list[str]:
    """Remove our tc filters, empty clsact qdiscs and iptables rules in this namespace."""
    from colo_proxy.kernel import datapath

    removed = datapath.cleanup()
    removed += netfilter.remove(instance)
    if control_socket:
        import os

        if os.path.exists(control_socket):
            try:
                request(control_socket, {"type": "hello"}, timeout=1.0)
                removed.append(f"(a proxy still runs on {control_socket}; socket kept)")
            except OSError:
                os.unlink(control_socket)
                removed.append(f"stale socket {control_socket}")
    return removed


def _cmd_cleanup(args: argparse.Namespace) -> int:
    for line in cleanup(args.instance, args.control_socket):
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
