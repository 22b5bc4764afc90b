"""The plugin's own health endpoint, for the pod's probes.

/healthz is liveness: the plugin's gRPC server answers on its socket (the standard grpc.health.v1
Check, which runs none of the readiness checks). A restart cures a hung server, not a stopped
iscsid or a missing initiator name, so those never fail liveness: a restart loop helps nobody and
hides the reason. /readyz is readiness: 200 "ready", or 503 with the reason.

It is meant for the kubelet on the same host: the chart binds it to the loopback address.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from csi_iscsi.server import grpc_address

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]

# Codes that mean nobody answered; any other answer, even an error, comes from a live server.
_NO_ANSWER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def grpc_answers(endpoint: str, timeout: float = 5.0) -> tuple[bool, str]:
    """Whether the plugin's gRPC server at endpoint (unix://... or tcp://...) answers in time."""
    target = grpc_address(endpoint)
    host = target.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "[::]"):  # a wildcard listen address is reached on loopback
        target = "127.0.0.1:" + target.rsplit(":", 1)[1]
    with grpc.insecure_channel(target) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() in _NO_ANSWER:
                return False, f"the gRPC server did not answer: {exc.code().name}"
    return True, "alive"


class _Cached:
    """One result per interval: a flood of probes runs the checks (which fork commands) once."""

    def __init__(self, check: Check, ttl: float) -> None:
        self._check, self._ttl = check, ttl
        self._lock = threading.Lock()
        self._at, self._value = -ttl, (False, "")

    def __call__(self) -> tuple[bool, str]:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl:
                try:
                    self._value = self._check()
                except Exception as exc:  # a check that breaks is an answer, not a crash
                    log.warning("health check failed", exc_info=True)
                    self._value = (False, f"the check failed: {type(exc).__name__}")
                self._at = time.monotonic()
            return self._value


def _split(address: str) -> tuple[str, int, socket.AddressFamily]:
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return host or "0.0.0.0", int(port), family


class HealthServer:
    def __init__(self, address: str, alive: Check, ready: Check, ttl: float = 2.0) -> None:
        host, port, family = _split(address)
        checks = {"/healthz": _Cached(alive, ttl), "/readyz": _Cached(ready, ttl)}

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # an idle or slow client does not hold a thread

            def do_GET(self) -> None:
                check = checks.get(self.path.split("?", 1)[0])
                if check is None:
                    self.send_error(404)
                    return
                ok, why = check()
                body = (why + "\n").encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a probe every few seconds is not news

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self._server = Server((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
