"""The campaign's workload clients, run in the lab's client namespace; each prints history
records (colo_lab.chaos.history) as JSON lines on stdout.

usage: python -m colo_lab.chaos.clients {kv,stream,random,udp} --proc NAME --t0 T
       [--host 10.99.0.10] [--timeout S] [--size N] [--every S]

- kv: PUT a unique key and GET it back; GET every acknowledged key once more `--lag` PUTs
  later (until that read is answered); on SIGTERM, read the keys still waiting for it.
- stream: GET /blob/SIZE over and over on one keep-alive connection: the service's
  deterministic stream; each response's length and sha256 are recorded.
- random: GET /random every `--every` seconds: output that differs between the replicas, so
  that checkpoints happen all the time.
- udp: datagrams "PROC SEQ PAD" to the guest's UDP echo service (port 7), one at a time,
  sent again every `UDP_RESEND_S` until its answer "echo PROC SEQ PAD" comes or the
  request's timeout passes. An answer is recorded `ok` with its bytes; a datagram that
  answers no request sent (`stray`) is recorded with the request then waiting, as `info`.

A request that errors is recorded `info` (its effect is unknown) and the connection is
opened again; one whose connection could not even be opened is `fail`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any

from colo_lab.client import Conn
from colo_lab.lab import VM_IP

ERRORS = (OSError, ConnectionError, ValueError, IndexError)


class Client:
    def __init__(self, proc: str, t0: float, host: str, timeout: float) -> None:
        self.proc, self.t0 = proc, t0
        self.conn = Conn(host, timeout)
        self.op = 0
        self.stop = False

    def emit(self, rec: dict[str, Any]) -> None:
        rec["t"] = round(time.monotonic() - self.t0, 4)
        print(json.dumps(rec, separators=(",", ":")), flush=True)

    def call(self, f: str, method: str, path: str, body: bytes = b"",
             **inv: Any) -> tuple[int, bytes] | None:
        """One request as an invoke record and its completion; None when it failed."""
        op = self.op
        self.op += 1
        base = {"proc": self.proc, "op": op, "f": f}
        self.emit({"type": "invoke", **base, **inv})
        if self.conn.sock is None:
            try:
                self.conn.sock = socket.create_connection((self.conn.host, self.conn.port),
                                                          timeout=self.conn.timeout)
            except OSError as exc:
                self.emit({"type": "fail", **base, "error": f"connect: {exc!r}"})
                return None
            self.conn.buf = b""
            self.conn.opened += 1
        try:
            return self.conn.request(method, path, body)
        except ERRORS as exc:
            self.conn.close()
            self.emit({"type": "info", **base, "error": repr(exc), "conn": self.conn.opened})
            return None

    def done(self, f: str, ok: bool, error: str = "", **fields: Any) -> None:
        base = {"proc": self.proc, "op": self.op - 1, "f": f, "conn": self.conn.opened}
        if ok:
            self.emit({"type": "ok", **base, **fields})
        else:
            # A wrong answer: the connection may be out of step; start a new one.
            self.conn.close()
            self.emit({"type": "info", **base, "error": error, **fields})


def kv_value(proc: str, i: int) -> str:
    return f"{proc}-{i}-" + "v" * (i % 61)


def run_kv(c: Client, lag: int) -> None:
    """PUT key i and GET it back at once; GET each acknowledged key again `lag` PUTs later
    (by then a fault may have come and gone: the failover and re-protection it caused must
    have kept it), until that read gets an answer; on stop, read the rest."""
    pending: list[tuple[int, int]] = []  # (PUT number, key number) still to read again
    i = 0
    while not c.stop:
        key, value = f"{c.proc}-{i}", kv_value(c.proc, i)
        got = c.call("put", "PUT", f"/kv/{key}", value.encode(), key=key, value=value)
        if got is not None:
            ok = got == (200, f"stored {len(value)}\n".encode())
            c.done("put", ok, "" if ok else f"answered {got[0]} {got[1][:40]!r}")
            if ok:
                _get(c, key)
                pending.append((i, i))
        if pending and pending[0][0] <= i - lag and _get(c, f"{c.proc}-{pending[0][1]}"):
            pending.pop(0)
        i += 1
        if got is None:
            time.sleep(0.2)  # pacing after an error, not synchronisation
    failed = 0
    for _, j in pending:  # the final read-back
        # A service that is gone answers no key: a few failures in a row say so, and
        # waiting out every key's timeout would only delay the report.
        failed = 0 if _get(c, f"{c.proc}-{j}") else failed + 1
        if failed >= READ_BACK_FAILURES:
            break


READ_BACK_FAILURES = 3


def _get(c: Client, key: str) -> bool:
    """One GET of `key`; False when it got no answer."""
    got = c.call("get", "GET", f"/kv/{key}", key=key)
    if got is None:
        return False
    st, body = got
    if st == 200:
        c.done("get", True, value=body.decode("latin-1"))
    elif st == 404:
        c.done("get", True, absent=True)
    else:
        c.done("get", False, f"answered {st} {body[:40]!r}")
    return True


def run_stream(c: Client, size: int) -> None:
    while not c.stop:
        got = c.call("stream", "GET", f"/blob/{size}")
        if got is None:
            time.sleep(0.2)  # pacing after an error
            continue
        st, body = got
        c.done("stream", st == 200, f"answered {st}", n=size,
               sha=hashlib.sha256(body).hexdigest(), got=len(body))


def run_random(c: Client, every: float) -> None:
    while not c.stop:
        t = time.monotonic()
        got = c.call("random", "GET", "/random")
        if got is not None:
            st, body = got
            c.done("random", st == 200 and len(body.split()) == 2,
                   f"answered {st} {body[:40]!r}")
        left = every - (time.monotonic() - t)
        if left > 0:
            time.sleep(left)  # the workload's rate, not synchronisation


UDP_PORT = 7
UDP_RESEND_S = 0.5
UDP_TIMEOUT_S = 3.0


def udp_request(proc: str, seq: int) -> bytes:
    return f"{proc} {seq} ".encode() + b"u" * (seq % 97)


def run_udp(c: Client, every: float) -> None:
    """One datagram request at a time; UDP may lose any of them during a fault (recorded
    `info`), but an answer must be the echo of a request this client sent."""
    family = socket.AF_INET6 if ":" in c.conn.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect((c.conn.host, UDP_PORT))
    sent: set[bytes] = set()
    seq = 0
    while not c.stop:
        t = time.monotonic()
        req = udp_request(c.proc, seq)
        op = c.op
        c.op += 1
        base = {"proc": c.proc, "op": op, "f": "udp", "conn": 1}
        c.emit({"type": "invoke", **base, "key": req.decode()})
        sent.add(req)
        deadline, resend = t + UDP_TIMEOUT_S, t
        answer, stray = None, b""
        while answer is None and not stray and not c.stop:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= resend:
                try:
                    sock.send(req)
                except OSError:
                    pass  # no route during a fault: the request times out
                resend = now + UDP_RESEND_S
            sock.settimeout(max(0.001, min(resend, deadline) - now))
            try:
                data = sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            if data == b"echo " + req:
                answer = data
            elif not (data.startswith(b"echo ") and data[5:] in sent):
                stray = data
            # else: the answer to an earlier request, sent again: UDP may duplicate.
        if answer is not None:
            c.emit({"type": "ok", **base, "value": answer.decode("latin-1")})
        elif stray:
            c.emit({"type": "info", **base, "error": f"stray datagram {stray[:80]!r}",
                    "value": stray.decode("latin-1")})
        else:
            c.emit({"type": "info", **base, "error": f"no answer within {UDP_TIMEOUT_S:g} s"})
        seq += 1
        left = every - (time.monotonic() - t)
        if left > 0:
            time.sleep(left)  # the workload's rate, not synchronisation
    sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="colo_lab.chaos.clients", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=("kv", "stream", "random", "udp"))
    p.add_argument("--proc", required=True, help="this client's name in the history")
    p.add_argument("--t0", type=float, required=True,
                   help="the campaign's start on CLOCK_MONOTONIC")
    p.add_argument("--host", default=VM_IP)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per request")
    p.add_argument("--size", type=int, default=256 << 10, help="stream: bytes per response")
    p.add_argument("--every", type=float, default=None,
                   help="random, udp: seconds between requests (1.0, 0.2)")
    p.add_argument("--lag", type=int, default=50,
                   help="kv: PUTs between a key's acknowledgement and its second read")
    a = p.parse_args(argv)
    c = Client(a.proc, a.t0, a.host, a.timeout)

    def _stop(signum: int, frame: FrameType | None) -> None:
        c.stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if a.workload == "kv":
        run_kv(c, a.lag)
    elif a.workload == "stream":
        run_stream(c, a.size)
    elif a.workload == "udp":
        run_udp(c, 0.2 if a.every is None else a.every)
    else:
        run_random(c, 1.0 if a.every is None else a.every)
    c.conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
