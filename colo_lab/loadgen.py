"""Client load for the lab's service, run inside the client namespace; prints JSON.

`check`: N keep-alive connections in threads making M requests in all, every answer
verified against what a correct replica sends. `latency`: one connection, small
request/response, per-request times. `random`: one GET /random, recording when each
byte arrived (to show that no uncompared byte reached the client). `--host` (default the
VM's IPv4 address) may be an IPv6 one (the stand-in lab's `fd99::10`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import select
import socket
import statistics
import threading
import time

from colo_lab.standin_server import PATTERN

VM_IP = "10.99.0.10"


def _one(conn: http.client.HTTPConnection, i: int, c: int) -> str | None:
    kind = i % 5
    if kind == 0:
        conn.request("GET", "/")
        want = b"colo lab service\n"
    elif kind == 1:
        n = (i * 7919) % 20000
        conn.request("GET", f"/blob/{n}")
        want = PATTERN[:n]
    elif kind == 2:
        body = f"echo {c} {i} ".encode() * 20
        conn.request("POST", "/echo", body=body)
        want = body
    elif kind == 3:
        body = f"value {c} {i}".encode()
        conn.request("PUT", f"/kv/k{c}", body=body)
        want = f"stored {len(body)}\n".encode()
    else:
        conn.request("GET", "/health")
        want = b"ok\n"
    resp = conn.getresponse()
    got = resp.read()
    if resp.status != 200 or got != want:
        return f"request {i} on conn {c}: {resp.status} {got[:60]!r} != {want[:60]!r}"
    return None


def check(conns: int, total: int, timeout: float, host: str = VM_IP) -> dict[str, object]:
    errors: list[str] = []
    done = [0] * conns
    per = total // conns

    def worker(c: int) -> None:
        try:
            conn = http.client.HTTPConnection(host, 80, timeout=timeout)
            for i in range(per):
                err = _one(conn, i, c)
                if err:
                    errors.append(err)
                    return
                done[c] += 1
            conn.close()
        except Exception as exc:  # reported in the JSON, the test asserts on it
            errors.append(f"conn {c}: {exc!r}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"ok": sum(done), "errors": errors[:10], "seconds": time.monotonic() - t0}


def latency(n: int, warmup: int, host: str = VM_IP) -> dict[str, object]:
    conn = http.client.HTTPConnection(host, 80, timeout=10)
    times = []
    for i in range(n + warmup):
        t = time.perf_counter()
        conn.request("GET", "/health")
        if conn.getresponse().read() != b"ok\n":
            raise SystemExit("bad answer")
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    return {"n": n, "p50_us": statistics.median(times) * 1e6,
            "p99_us": times[int(len(times) * 0.99) - 1] * 1e6}


def random_once(timeout: float, host: str = VM_IP) -> dict[str, object]:
    s = socket.create_connection((host, 80), timeout=timeout)
    s.sendall(b"GET /random HTTP/1.1\r\nHost: vm\r\nConnection: close\r\n\r\n")
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([s], [], [], 0.05)
        if r:
            data = s.recv(65536)
            if not data:
                break
            chunks.append({"at": time.monotonic(), "hex": data.hex()})
    return {"chunks": chunks}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("check", "latency", "random"))
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--host", default=VM_IP, help="the service's address (IPv4 or IPv6)")
    a = ap.parse_args()
    if a.mode == "check":
        out = check(a.conns, a.requests, a.timeout, a.host)
    elif a.mode == "latency":
        out = latency(a.requests, a.warmup, a.host)
    else:
        out = random_once(a.timeout, a.host)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
