"""Build and run a proxy: datapath, NFQUEUE, sockets and the proxy, served until stopped.

`run_primary` and `run_secondary` acquire the kernel resources in the order that never
leaves a packet queued to nobody and, on an orderly stop, release them in reverse. An
exception fails closed: the rule and the filters stay, as after a crash, for the next
proxy to take over; `cleanup` removes what a crashed or failed proxy left behind. The command line (`colo_proxy.cli.service`) only parses
arguments and calls these.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from colo_proxy.kernel import links, netfilter
from colo_proxy.service import carry_link, handover_file, instance_lock
from colo_proxy.service.control_socket import ControlServer, request, status_path_for
from colo_proxy.service.settings import ConfigError, ProxySettings
from colo_proxy.wire import carry

log = logging.getLogger("colo-proxy")
# Started with --fenced: the ready line says that nothing passes until unfence.
FENCED_NOTE = "; FENCED: no output of the VM reaches a client until unfence"


def run_primary(s: ProxySettings) -> None:
    """Serve as the primary's proxy; AlreadyRunning if this instance runs already,
    ConfigError (before anything is attached) if the key file is unusable."""
    key = pair_key(s)
    with instance_lock.hold(s.instance, Path(s.lock_dir)):
        _run_primary(s, key)


def pair_key(s: ProxySettings) -> bytes | None:
    """The pair's key for the carried-flow exchange; None (with a warning) without one."""
    if not s.key_file:
        if s.role == "secondary" or s.uplink:
            log.warning("no key_file: carried flows are not %s, so connections carried over "
                        "a role swap break at the next failover",
                        "announced to the secondary" if s.uplink else "taken from the primary")
        return None
    try:
        return carry_link.load_key(s.key_file)
    except ValueError as exc:
        raise ConfigError(f"key_file {s.key_file}: {exc}; give the pair's key (the file of "
                          "the orchestrators' heartbeat_key_file)") from exc


@contextmanager
def _carry_end(s: ProxySettings, dp: Any, key: bytes | None,
               end: type[carry_link.Announcer] | type[carry_link.Listener]) -> Iterator[Any]:
    """The carried-flow exchange's end of this role, running while the context is open."""
    from colo_proxy.kernel.datapath import mac_bytes
    from colo_proxy.kernel.packet_socket import PacketSocket

    if key is None:
        yield None
        return
    link = PacketSocket(s.forward, protocol=carry.ETH_P_CARRY, rcvbuf=1 << 20)
    try:
        worker = end(dp, link, key, mac_bytes(s.peer_mac))
        worker.start()
        try:
            yield worker
        finally:
            worker.stop()
    finally:
        link.close()


def _run_primary(s: ProxySettings, key: bytes | None) -> None:
    from colo_proxy.kernel.datapath import MODE_PROTECTED, Datapath
    from colo_proxy.kernel.nfqueue import NfQueue, QueueConfig
    from colo_proxy.kernel.packet_socket import PacketSocket
    from colo_proxy.service.loop import serve
    from colo_proxy.service.primary import PrimaryProxy

    _wait_for_links(s)
    seg = s.segmenting_queue
    qcfg = QueueConfig(s.queue, maxlen=s.queue_maxlen, gso=s.gso,
                       fail_open=s.on_queue_full == "accept", resegment_to=seg or 0)
    ctl = ControlServer(s.control_socket)
    try:
        with Datapath("primary", tap=s.tap, fwd=s.forward, vm_mac=s.vm_mac,
                      peer_mac=s.peer_mac, uplink=s.uplink) as dp, NfQueue(qcfg) as q, \
                _segmenting_queue(qcfg, seg) as segq:
            # Filtered from the start: only the secondary host's frames are SVM output.
            svm = PacketSocket(s.forward, bpf_filter=dp.svm_filter())
            dp.set_mode(MODE_PROTECTED)
            _carry_over(s, dp)
            # Bind the queue before the rule exists, so no packet is ever queued to nobody.
            netfilter.install(s.tap, s.queue, s.instance, bypass=s.on_crash == "open")
            try:
                # Only a primary with an uplink carries flows over a role swap.
                with _carry_end(s, dp, key if s.uplink else None,
                                carry_link.Announcer) as ann:
                    fast = _fast_path(s)
                    if fast is not None and seg is not None:
                        fast.resegment(s.compare.resegment_after, seg)
                    proxy = PrimaryProxy(s, q if fast is None else fast, svm,
                                         notify=ctl.broadcast, datapath=dp, carry=ann,
                                         fast=fast, segq=segq)
                    stop_metrics = _serve_metrics(s, proxy, queue=s.queue,
                                                  fail_open=qcfg.fail_open)
                    try:
                        sources: dict[str, Any] = {"pvm": q, "svm": svm}
                        if segq is not None:
                            sources["seg"] = segq
                        serve(proxy, ctl, sources, ready=lambda: log.info(
                            "ready: comparing output of %s, mirror to %s, control %s, on "
                            "crash %s, fast path %s, GSO %s%s%s", s.tap, s.forward,
                            s.control_socket, s.on_crash, "on" if fast is not None else "off",
                            "on" if s.gso else "off",
                            "" if seg is None else f" (segmenting queue {seg})",
                            FENCED_NOTE if s.fenced else ""),
                            busy_poll_us=s.busy_poll_us, busy_poll_held=s.busy_poll_held,
                            fault=_test_fault(), queue_num=s.queue)
                    finally:
                        stop_metrics()
                # Only an orderly stop (serve returned: SIGTERM) lets the output pass
                # uncompared. An exception leaves the rule, as a crash would (on_crash):
                # closing the queue drops what it held and, without --queue-bypass, the
                # kernel drops what comes until a restarted proxy binds it again.
                for line in netfilter.remove(s.instance):
                    log.info("removed %s", line)
            finally:
                svm.close()
    finally:
        ctl.close()
    log.info("stopped: filters and rules removed")


@contextmanager
def _segmenting_queue(qcfg: Any, seg: int | None) -> Iterator[Any]:
    """The queue that segments what the comparator sends it (no NFQA_CFG_F_GSO), bound
    before any packet can be sent there; None when there is none."""
    if seg is None:
        yield None
        return
    from colo_proxy.kernel.nfqueue import NfQueue, QueueConfig

    with NfQueue(QueueConfig(seg, maxlen=qcfg.maxlen, gso=False, fail_open=qcfg.fail_open,
                             resegment_to=seg)) as q:
        yield q


def _wait_for_links(s: ProxySettings, *, primary: bool = True) -> None:
    """The tap exists once QEMU (or Xen) started the VM, which on a real host comes after
    the proxy: wait for it, and for the other links, rather than fail. A primary's tap
    must be a bridge port too (its output is queued as it crosses the bridge)."""
    why = {s.tap: " (the VM's tap: it appears when the hypervisor starts the VM"
                  f"{', on its bridge' if primary else ''})",
           s.forward: " (the forward link to the other host)",
           s.uplink: " (the uplink toward the clients)"}
    links.wait_for([s.tap, s.forward, s.uplink if primary else ""], log,
                   lambda n: why.get(n, ""), ports=[s.tap] if primary else [])


def _fast_path(s: ProxySettings) -> Any:
    """The C fast path if configured and built (else None: the Python loop does it all)."""
    if not s.fast_path or s.output != "compare":
        return None
    from colo_proxy import fastpath

    if not fastpath.available():
        log.warning("fast_path is on but not built (scripts/build-fastpath): every packet "
                    "goes through the Python loop")
        return None
    return fastpath.FastPath(s.compare.max_flow_packets, s.compare.max_flow_bytes)


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


def run_secondary(s: ProxySettings) -> None:
    """Serve as the secondary's proxy; AlreadyRunning if this instance runs already,
    ConfigError (before anything is attached) if the key file is unusable."""
    key = pair_key(s)
    with instance_lock.hold(s.instance, Path(s.lock_dir)):
        _run_secondary(s, key)


def _run_secondary(s: ProxySettings, key: bytes | None) -> None:
    from colo_proxy.kernel.datapath import MODE_PROTECTED, Datapath
    from colo_proxy.kernel.packet_socket import TapRecorder
    from colo_proxy.service.loop import serve
    from colo_proxy.service.secondary import SecondaryProxy

    _wait_for_links(s, primary=False)  # the uplink is the primary's business
    ctl = ControlServer(s.control_socket)
    handover_file.discard(handover_file.path_for(s.control_socket))  # a new secondary: none is valid
    try:
        with Datapath("secondary", tap=s.tap, fwd=s.forward, vm_mac=s.vm_mac,
                      peer_mac=s.peer_mac) as dp, \
                _carry_end(s, dp, key, carry_link.Listener) as listener:
            dp.set_mode(MODE_PROTECTED)
            _drop_primary_rules(s)
            recorder = TapRecorder(s.tap)
            proxy = SecondaryProxy(dp, handover=handover_file.path_for(s.control_socket),
                                   instance=s.instance, carry=listener, fenced=s.fenced,
                                   release_permit=s.release_permit, recorder=recorder)
            stop_metrics = _serve_metrics(s, proxy)
            try:
                serve(proxy, ctl, {"record": recorder}, ready=lambda: log.info(
                    "ready: SVM tap %s, forward link %s, control %s%s", s.tap, s.forward,
                    s.control_socket, FENCED_NOTE if s.fenced else ""), fault=_test_fault())
            finally:
                stop_metrics()
                recorder.close()
    finally:
        ctl.close()
    log.info("stopped: filters removed")  # after an exception Datapath leaves them


def _drop_primary_rules(s: ProxySettings) -> None:
    """Remove the NFQUEUE rule a primary of this instance left on this host when it died.

    A host's primary-role proxy killed (SIGKILL, the host's death) leaves its rule, fail
    closed, for a restarted primary to take over (run_primary). The host may come back as
    secondary instead: while protected its tc programs steer the SVM's output to the
    forward link before the bridge, so the rule holds nothing; after a failover that
    output enters the bridge, is queued to nobody and dropped. Found by `colo-lab chaos`
    (seed 1, fault 31 after the host's death at fault 26): every existing connection and
    every new one got no answer from the failover until the re-protection started a
    primary proxy, which bound the queue (15 s; the stream's request timed out). Called
    once the datapath steers: nothing of the SVM's reaches the bridge while this runs.
    """
    try:
        for line in netfilter.remove(s.instance):
            log.warning("removed %s: a primary of this instance left it here", line)
    except (OSError, RuntimeError) as exc:  # no iptables on a secondary-only host
        log.info("no primary's rules to remove: %s", exc)


# A test hook for the fail-closed system tests: while the file this names exists, the
# loop raises once (removing the file) before handling the next packet or control message.
TEST_FAULT_ENV = "COLO_PROXY_TEST_FAULT"


def _test_fault() -> Callable[[], None] | None:
    path = os.environ.get(TEST_FAULT_ENV)
    if not path:
        return None

    def fault() -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        raise RuntimeError(f"fault injected by {TEST_FAULT_ENV}={path}")

    return fault


def _serve_metrics(s: ProxySettings, proxy: Any, **kw: Any) -> Callable[[], None]:
    """Start the /metrics endpoint if configured; returns its stop function."""
    if not s.metrics_listen:
        return lambda: None
    from colo_proxy.service import metrics

    endpoint = metrics.serve(s.metrics_listen, proxy, s.role, pair=s.pair or s.instance,
                             host=s.host or socket.gethostname(), **kw)
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
