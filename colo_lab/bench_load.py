"""The client side of `benchmarks/bench_vms.py`, run inside the lab's client namespace.

`python -m colo_lab.bench_load KIND [options]` prints one JSON object. Times are taken
here, next to the socket, so that `ip netns exec` and the interpreter's start are not in
them. Every answer is checked: a wrong body is an error, not a fast request.

- new PATH: N requests, each on a new connection (`Connection: close`); seconds each.
- keep PATH: N requests on one keep-alive connection; seconds each.
- blob: N downloads of 1 MiB, each on a new connection; seconds each.
- big: MB downloads of 1 MiB on one keep-alive connection (the guest's service serves at
  most 1 MiB per request); total seconds.
- mixed: C keep-alive clients making colo_lab.loadgen's mix of requests for S seconds;
  the count and seconds of each request (as an application makes them: no quick ACKs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time

from colo_lab.loadgen import VM_IP, _one
from colo_lab.standin_server import PATTERN

MIB = 1 << 20
EXPECT = {"/": b"colo lab service\n", "/health": b"ok\n"}


def _get(conn: http.client.HTTPConnection, path: str, close: bool) -> bytes:
    conn.request("GET", path, headers={"Connection": "close"} if close else {})
    # The guest's service writes the headers and the body separately, so Nagle holds the
    # body until the headers are acknowledged, and a client on a reused connection delays
    # that ACK by up to 40 ms: measured 52 ms keep-alive against 25 ms on new connections,
    # direct, in every mode alike. Acknowledge at once, so the rows show the pair's delay.
    if conn.sock is not None:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise SystemExit(f"GET {path} answered {resp.status}")
    want = EXPECT.get(path)
    if want is not None and body != want:
        raise SystemExit(f"GET {path} answered {body[:60]!r}")
    return body


def new(path: str, n: int, timeout: float, every: float = 0.0) -> list[float]:
    """n requests, each on a new connection; with `every`, one started each `every`
    seconds (a request that took longer is followed at once)."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        conn = http.client.HTTPConnection(VM_IP, 80, timeout=timeout)
        _get(conn, path, close=True)
        times.append(time.perf_counter() - t)
        conn.close()
        left = every - (time.perf_counter() - t)
        if left > 0:
            time.sleep(left)  # the benchmark's request rate, not synchronisation
    return times


def keep(path: str, n: int, timeout: float) -> list[float]:
    conn = http.client.HTTPConnection(VM_IP, 80, timeout=timeout)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        _get(conn, path, close=False)
        times.append(time.perf_counter() - t)
    conn.close()
    return times


def blob(n: int, timeout: float) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        conn = http.client.HTTPConnection(VM_IP, 80, timeout=timeout)
        if _get(conn, f"/blob/{MIB}", close=True) != PATTERN[:MIB]:
            raise SystemExit("a 1 MiB download came back different")
        times.append(time.perf_counter() - t)
        conn.close()
    return times


def big(mb: int, timeout: float) -> float:
    conn = http.client.HTTPConnection(VM_IP, 80, timeout=timeout)
    t = time.perf_counter()
    for _ in range(mb):
        if _get(conn, f"/blob/{MIB}", close=False) != PATTERN[:MIB]:
            raise SystemExit("a 1 MiB part came back different")
    took = time.perf_counter() - t
    conn.close()
    return took


def mixed(clients: int, seconds: float, timeout: float) -> dict[str, object]:
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def worker(c: int) -> None:
        mine = []
        try:
            conn = http.client.HTTPConnection(VM_IP, 80, timeout=timeout)
            i = 0
            while time.monotonic() < end:
                t = time.perf_counter()
                err = _one(conn, i, c)
                if err:
                    errors.append(err)
                    break
                mine.append(time.perf_counter() - t)
                i += 1
            conn.close()
        except Exception as exc:  # reported in the JSON: the benchmark fails on it
            errors.append(f"client {c}: {exc!r}")
        with lock:
            times.extend(mine)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"times": times, "seconds": time.monotonic() - t0, "errors": errors[:5]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=("new", "keep", "blob", "big", "mixed"))
    ap.add_argument("--path", default="/")
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--every", type=float, default=0.0,
                    help="new: seconds from one request's start to the next's (0: back to back)")
    a = ap.parse_args()
    out: object
    if a.kind == "new":
        out = new(a.path, a.n, a.timeout, a.every)
    elif a.kind == "keep":
        out = keep(a.path, a.n, a.timeout)
    elif a.kind == "blob":
        out = blob(a.n, a.timeout)
    elif a.kind == "big":
        out = big(a.n, a.timeout)
    else:
        out = mixed(a.clients, a.seconds, a.timeout)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
