"""A real Prometheus (Debian's package) for system tests: a configuration in, its HTTP API
out. Its data lives in a temporary directory, removed by `stop()`."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any


class Prometheus:
    """Prometheus on `addr` with `config` (a dict: JSON is YAML), in network namespace `ns`
    or, with None, in the caller's."""

    def __init__(self, config: dict[str, Any], addr: str, ns: str | None = None) -> None:
        self.ns = ns
        self.addr = addr
        self.dir = Path(tempfile.mkdtemp(prefix="colo-prom-"))
        (self.dir / "prometheus.yml").write_text(json.dumps(config, indent=1))
        self.log = open(self.dir / "prometheus.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(self._in_ns([
            "prometheus", f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={self.addr}"]),
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def _in_ns(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv] if self.ns else argv

    def api(self, path: str, **params: str) -> Any:
        argv = ["curl", "-sS", "-m", "10", "-G", f"http://{self.addr}{path}"]
        for k, v in params.items():
            argv += ["--data-urlencode", f"{k}={v}"]
        out = subprocess.run(self._in_ns(argv), capture_output=True, timeout=15,
                             check=False).stdout
        try:
            return json.loads(out)
        except ValueError:
            return None

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = self.api("/api/v1/query", query=expr)
        assert r is not None and r.get("status") == "success", (expr, r)
        result: list[dict[str, Any]] = r["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None

    def log_tail(self) -> str:
        lines = (self.dir / "prometheus.log").read_text(errors="replace").splitlines()
        return " | ".join(lines[-5:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
