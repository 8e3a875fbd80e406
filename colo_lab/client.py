"""A checking HTTP client for the lab service, run inside the client namespace.

Keeps ONE persistent HTTP/1.1 connection and loops: PUT /kv/cN with a unique
value, then GET /kv/cN, checking that the answer is exactly what was stored.
Any reset, timeout, short or wrong answer is counted as an error and the
connection is reopened. Every request's outcome goes to stdout as a JSON line,
so a caller can watch progress and compute the service's gap at a failover.

usage: python -m colo_lab.client --host 10.99.0.10 [--duration S] [--count N]
       [--random-every K] [--timeout S] [--prefix P]
       python -m colo_lab.client --host 10.99.0.10 --prefix P --verify FILE

--verify reads request numbers (one per line, those whose PUT was acknowledged) and GETs
each key back on one connection: one JSON line {"verified": N, "lost": [...]}, where a
key is lost when the service answers anything but the value that was stored.

`Watch` runs it in a lab's client namespace and collects those lines (the demo, tests).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import Any

from colo_lab.errors import LabError
from colo_lab.wait import wait_until


class Conn:
    def __init__(self, host: str, timeout: float, port: int = 80) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.opened = 0

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self.buf = b""
            self.opened += 1
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        header, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v)
        while len(self.buf) < length:
            self._fill()
        data, self.buf = self.buf[:length], self.buf[length:]
        return status, data

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        self.buf += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def value_of(i: int) -> bytes:
    """The value the client stores under request number i (the same on every run)."""
    return f"value-{i}-{'x' * (i % 97)}".encode()


def verify(host: str, prefix: str, numbers: list[int], timeout: float,
           port: int = 80) -> dict[str, Any]:
    """GET every key back on one persistent connection; a key answered with anything but
    its value is lost (a connection error is retried once on a new connection)."""
    conn = Conn(host, timeout, port)
    lost: list[dict[str, Any]] = []
    for i in numbers:
        for attempt in (1, 2):
            try:
                st, body = conn.request("GET", f"/kv/{prefix}{i}")
                break
            except (OSError, ConnectionError, ValueError, IndexError) as exc:
                conn.close()
                st, body = 0, f"{type(exc).__name__}: {exc}".encode()
                if attempt == 2:
                    break
        if (st, body) != (200, value_of(i)):
            lost.append({"i": i, "status": st, "body": body[:60].decode("latin-1")})
    conn.close()
    return {"verified": len(numbers) - len(lost), "lost": lost}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="colo_lab.client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="10.99.0.10")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0: until --count)")
    p.add_argument("--count", type=int, default=0, help="request pairs (0: until --duration)")
    p.add_argument("--random-every", type=int, default=0,
                   help="also GET /random every K pairs (non-deterministic: causes divergence)")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--prefix", default="c")
    p.add_argument("--verify", metavar="FILE",
                   help="GET back the keys of the request numbers in FILE, then exit")
    args = p.parse_args(argv)
    if args.verify:
        try:
            with open(args.verify) as f:
                numbers = [int(line) for line in f if line.strip()]
        except (OSError, ValueError) as exc:
            p.error(f"--verify {args.verify}: {exc}; give a file of request numbers, "
                    "one per line")
        out = verify(args.host, args.prefix, numbers, args.timeout)
        print(json.dumps(out), flush=True)
        return 0 if not out["lost"] else 1
    stop = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    conn = Conn(args.host, args.timeout)
    start = time.monotonic()
    ok = errors = randoms = 0
    i = 0
    while not stop:
        if args.duration and time.monotonic() - start >= args.duration:
            break
        if args.count and i >= args.count:
            break
        key, value = f"{args.prefix}{i}", value_of(i)
        t0 = time.monotonic()
        err = ""
        try:
            st, body = conn.request("PUT", f"/kv/{key}", value)
            if (st, body) != (200, f"stored {len(value)}\n".encode()):
                err = f"PUT answered {st} {body[:40]!r}"
            else:
                st, body = conn.request("GET", f"/kv/{key}")
                if (st, body) != (200, value):
                    err = f"GET answered {st} {body[:40]!r}"
            if not err and args.random_every and i % args.random_every == 0:
                st, _ = conn.request("GET", "/random")
                randoms += 1
                if st != 200:
                    err = f"/random answered {st}"
        except (OSError, ConnectionError, ValueError, IndexError) as exc:
            err = f"{type(exc).__name__}: {exc}"
        t1 = time.monotonic()
        if err:
            errors += 1
            conn.close()
        else:
            ok += 1
        # "at": wall-clock time of the answer, to place a wait among the hosts' logs.
        print(json.dumps({"i": i, "t": round(t1 - start, 4), "at": round(time.time(), 3),
                          "ms": round(1000 * (t1 - t0), 2),
                          "ok": not err, "err": err, "conn": conn.opened}), flush=True)
        i += 1
        if err:
            time.sleep(0.05)  # pacing after an error, not synchronisation
    conn.close()
    print(json.dumps({"summary": True, "ok": ok, "errors": errors, "randoms": randoms,
                      "connections": conn.opened,
                      "seconds": round(time.monotonic() - start, 3)}), flush=True)
    return 0 if errors == 0 else 1


class JsonLinesProcess:
    """A lab module (`python -m MODULE ARGS`) running in namespace `ns`, each JSON line of
    its stdout handed to `on_record` on a reader thread as it comes."""

    def __init__(self, ns: str, module: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def on_record(self, rec: dict[str, Any]) -> None:
        raise NotImplementedError

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                self.on_record(rec)


class Watch(JsonLinesProcess):
    """This client running in namespace `ns` (arguments as for main), its JSON lines
    collected as they come: `results` per request, `summary` once it has stopped."""

    def __init__(self, ns: str, *args: str) -> None:
        self.results: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        super().__init__(ns, "colo_lab.client", *args)

    def on_record(self, rec: dict[str, Any]) -> None:
        if rec.get("summary"):
            self.summary = rec
        else:
            self.results.append(rec)

    def count(self) -> int:
        return len(self.results)

    def wait_for(self, n: int, timeout: float) -> None:
        """Until the client has made `n` requests in all; LabError if it stops first."""

        def reached() -> bool:
            if self.count() >= n:
                return True
            if self.proc.poll() is not None:
                raise LabError(f"the client stopped early, after {self.count()} requests")
            return False

        wait_until(reached, timeout, f"{n} requests from the client",
                   detail=lambda: f"it made {self.count()}")

    def wait_more(self, n: int, timeout: float = 90.0) -> None:
        self.wait_for(self.count() + n, timeout)

    def errors(self) -> list[str]:
        return [str(r["err"]) for r in self.results if not r["ok"]]

    def finish(self, timeout: float = 60.0) -> dict[str, Any]:
        """Stop the client (SIGTERM) and return its summary ({} if it printed none)."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return self.summary


if __name__ == "__main__":
    sys.exit(main())
