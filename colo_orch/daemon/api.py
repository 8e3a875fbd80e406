"""The orchestrator's HTTP API: health, state, metrics and operator commands.

GET  /healthz   200 while the daemon loop runs
GET  /readyz    200 when the VM is part of a protected pair or serves alone; 503 otherwise
GET  /state     JSON status
GET  /metrics   Prometheus text format
POST /checkpoint | /failover | /pause | /resume | /reprotect   operator commands (202)
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import generate_latest

from colo_orch.core.state import State
from colo_orch.daemon.runner import Orchestrator

COMMANDS = ("checkpoint", "failover", "pause", "resume", "reprotect")
READY_STATES = {State.PROTECTED.name, State.CHECKPOINTING.name, State.ALONE.name,
                State.PAUSED.name}


def make_server(orch: Orchestrator, listen: str) -> ThreadingHTTPServer:
    registry = orch.registry
    host, port = listen.rsplit(":", 1)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # the orchestrator logs decisions, not scrapes

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj, indent=1).encode() + b"\n")

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/healthz":
                self._json(200, {"ok": True})
            elif path == "/readyz":
                st = orch.status()
                ready = st["state"] in READY_STATES
                self._json(200 if ready else 503, {"ready": ready, "state": st["state"]})
            elif path == "/state":
                self._json(200, orch.status())
            elif path == "/metrics":
                self._send(200, generate_latest(registry), "text/plain; version=0.0.4")
            else:
                self._json(404, {"error": f"no such endpoint {path}"})

        def do_POST(self) -> None:
            cmd = self.path.strip("/").split("?")[0]
            if cmd not in COMMANDS:
                self._json(404, {"error": f"unknown command '{cmd}'; use one of "
                                 f"{', '.join(COMMANDS)}"})
                return
            self._json(202, {"accepted": orch.request(cmd), "state": orch.machine.state.name})

    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    return server


def serve_in_background(server: ThreadingHTTPServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, name="api", daemon=True)
    t.start()
    return t
