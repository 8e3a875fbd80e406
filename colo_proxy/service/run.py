"""Build and run a proxy: datapath, NFQUEUE, sockets and the proxy, served until stopped.

`run_primary` and `run_secondary` acquire the kernel resources in the order that never
leaves a packet queued to nobody and release them in reverse; `cleanup` removes what a
crashed proxy left behind. The command line (`colo_proxy.cli.service`) only parses
arguments and calls these.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from colo_proxy.kernel import netfilter
from colo_proxy.service import handover_file, instance_lock
from colo_proxy.service.control_socket import ControlServer, request, status_path_for
from colo_proxy.service.settings import ProxySettings
from colo_proxy.wire import handover

log = logging.getLogger("colo-proxy")


def run_primary(s: ProxySettings) -> None:
    """Serve as the primary's proxy; AlreadyRunning if this instance runs already."""
    with instance_lock.hold(s.instance, Path(s.lock_dir)):
        _run_primary(s)


def _run_primary(s: ProxySettings) -> None:
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
    """Take the offsets the secondary-role proxy left at the role swap (handover_file)."""
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
    """Serve as the secondary's proxy; AlreadyRunning if this instance runs already."""
    with instance_lock.hold(s.instance, Path(s.lock_dir)):
        _run_secondary(s)


def _run_secondary(s: ProxySettings) -> None:
    from colo_proxy.kernel.datapath import MODE_PROTECTED, Datapath
    from colo_proxy.service.loop import serve
    from colo_proxy.service.secondary import SecondaryProxy

    ctl = ControlServer(s.control_socket)
    handover_file.discard(handover_file.path_for(s.control_socket))  # a new secondary: none is valid
    try:
        with Datapath("secondary", tap=s.tap, fwd=s.forward, vm_mac=s.vm_mac) as dp:
            dp.set_mode(MODE_PROTECTED)
            proxy = SecondaryProxy(dp, handover=handover_file.path_for(s.control_socket),
                                   instance=s.instance)
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


def cleanup(instance: str | None = None, control_socket: str | None = None) -> list[str]:
    """Remove our tc filters, empty clsact qdiscs and iptables rules in this namespace."""
    from colo_proxy.kernel import datapath

    removed = datapath.cleanup()
    removed += netfilter.remove(instance)
    if control_socket:
        if os.path.exists(control_socket):
            try:
                request(control_socket, {"type": "hello"}, timeout=1.0)
                removed.append(f"(a proxy still runs on {control_socket}; socket kept)")
            except OSError:
                os.unlink(control_socket)
                removed.append(f"stale socket {control_socket}")
                status = status_path_for(control_socket)
                if status.exists():
                    status.unlink()
                    removed.append(f"stale socket {status}")
    return removed
