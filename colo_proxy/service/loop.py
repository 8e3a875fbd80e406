"""The proxy's event loop: one epoll set over the data sources and the control socket."""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from colo_proxy.fastpath import POLL_RECORDS, POLL_WAKE, FastPath
from colo_proxy.service.control_socket import Client, ControlServer
from colo_proxy.service.modes import IllegalTransition
from colo_proxy.service.primary import PrimaryProxy
from colo_proxy.service.secondary import SecondaryProxy
from colo_proxy.wire.control import ProtocolError


def serve(proxy: PrimaryProxy | SecondaryProxy, control: ControlServer,
          sources: dict[str, Any], ready: Callable[[], None] | None = None, *,
          busy_poll_us: int = 0, busy_poll_held: bool = False,
          fault: Callable[[], None] | None = None, queue_num: int = 0) -> None:
    """Poll the sources and the control sockets until SIGTERM/SIGINT.

    One epoll set; each ready descriptor maps straight to its handler (no selector
    objects on the per-packet path: a request/response exchange wakes this loop twice).

    With `busy_poll_us`, each packet from a source opens a window of that many
    microseconds in which the loop polls without sleeping (epoll with a zero timeout,
    yielding the CPU after each empty poll), so the next packet of a request/response
    exchange finds the proxy awake; once the window passes with nothing read, the loop
    blocks in epoll again. Idle cost: at most one window of polling per burst. Unless
    `busy_poll_held`, the loop polls only while no PVM packet waits for its SVM twin:
    the SVM needs the CPU to produce it, and a spinning proxy on shared CPUs delays it.

    `fault`, if given, is called before each ready descriptor is handled (a test hook
    that raises, run.TEST_FAULT_ENV).

    With the primary's fast path (`proxy.fast`), the C code reads both sources and waits
    in its own epoll set, which holds this loop's set as one descriptor: it returns only
    when Python has work (slow packets, flows given back, a control message, the timer),
    so matching exchanges never wake this loop. `queue_num` is the NFQUEUE its verdicts
    name.
    """
    ep = select.epoll()
    handlers: dict[int, Callable[[], None]] = {}
    data_fds: set[int] = set()

    def watch(fd: int, handler: Callable[[], None]) -> None:
        ep.register(fd, select.EPOLLIN)
        handlers[fd] = handler

    def forget(fd: int) -> None:
        if handlers.pop(fd, None) is not None:
            try:
                ep.unregister(fd)
            except OSError:
                pass  # already closed (ControlServer.read drops a client that went away)

    def on_accept(read_only: bool) -> None:
        c = control.accept(read_only)
        if c is not None:
            fd = c.fileno()
            watch(fd, lambda: _control_readable(proxy, control, c, lambda: forget(fd)))

    watch(control.fileno(), lambda: on_accept(False))
    watch(control.status_fileno(), lambda: on_accept(True))
    fast = proxy.fast if isinstance(proxy, PrimaryProxy) else None
    if fast is not None and isinstance(proxy, PrimaryProxy):
        fast.attach(sources["pvm"].fileno(), queue_num, sources["svm"].fileno(), ep.fileno(),
                    proxy.settings.batch)
        # The segmenting queue stays Python's: its packets are resegmented copies, which
        # the comparator takes (C lends no flow that waits for them).
        sources = {k: v for k, v in sources.items() if k == "seg"}
    for name, src in sources.items():
        if isinstance(proxy, SecondaryProxy):
            # The switchover's recorder (service.output_record): no per-packet path.
            watch(src.fileno(), {"record": proxy.on_record_readable}[name])
            continue
        watch(src.fileno(), {"pvm": proxy.on_pvm_readable, "seg": proxy.on_seg_readable,
                             "svm": proxy.on_svm_readable}[name])
        data_fds.add(src.fileno())
    stop = False
    busy = busy_poll_us / 1e6
    busy_until = 0.0
    clock = time.monotonic

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    if ready is not None:
        ready()
    try:
        if fast is not None:
            assert isinstance(proxy, PrimaryProxy)
            _serve_fast(proxy, fast, ep, handlers, lambda: stop, busy_poll_us, fault)
            return
        while not stop:
            polling = busy and clock() < busy_until and (busy_poll_held or proxy.idle())
            events = ep.poll(0.0 if polling else proxy.timeout())
            data = False
            for fd, _ev in events:
                handler = handlers.get(fd)
                if handler is not None:
                    if fault is not None:
                        fault()
                    handler()
                    if fd in data_fds:
                        data = True
            if data and busy:
                busy_until = clock() + busy
            elif polling and not events:
                os.sched_yield()  # let the VMs (or anyone) run: 2 shared CPUs
            proxy.on_timer()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        ep.close()


def _serve_fast(proxy: PrimaryProxy, fast: FastPath, ep: select.epoll,
                handlers: dict[int, Callable[[], None]], stopped: Callable[[], bool],
                busy_us: int, fault: Callable[[], None] | None) -> None:
    while not stopped():
        if fault is None:
            ready = fast.poll(proxy.timeout(), proxy.hold_limit, busy_us)
        else:
            # The fault hook must run before any packet is handled, so C may not handle
            # one on its own: wait, raise if armed, then read.
            ready = fast.wait(proxy.timeout()) & 7  # bit 4: a signal
            if ready & 3:
                fault()
                fast.read(proxy.hold_limit)
            ready |= POLL_RECORDS
        if ready & POLL_RECORDS:
            proxy.on_fast()
        if ready & POLL_WAKE:
            for fd, _ev in ep.poll(0):
                handler = handlers.get(fd)
                if handler is not None:
                    if fault is not None:
                        fault()
                    handler()
        proxy.on_timer()


def _control_readable(proxy: PrimaryProxy | SecondaryProxy, control: ControlServer,
                      client: Client, forget: Callable[[], None]) -> None:
    msgs = control.read(client)
    if msgs is None:
        forget()
        return
    for m in msgs:
        if isinstance(m, ProtocolError):
            client.send({"type": "error", "error": str(m)})
            continue
        refused = control.check(client, m)
        if refused is not None:
            client.send({"type": "error", "error": refused, "for": m["type"]})
            continue
        try:
            reply = proxy.on_control(m)
        except (ProtocolError, IllegalTransition) as exc:
            reply = {"type": "error", "error": str(exc), "for": m["type"]}
        client.send(reply)
