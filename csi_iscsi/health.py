"""The plugin's own health endpoint, for the pod's probes.

/healthz is liveness: the plugin's gRPC socket answers a Probe in time, whatever Probe says about
readiness. A restart cures a hung server, not a stopped iscsid or a missing initiator name, so
those must never fail liveness (a restart loop helps nobody and hides the reason).
/readyz is readiness: 200 "ready", or 503 with the reason Probe reports as not ready.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

from csi_iscsi.csi import csi_pb2, csi_pb2_grpc

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]


def grpc_answers(endpoint: str, timeout: float = 5.0) -> tuple[bool, str]:
    """Whether the plugin's own gRPC server answers Probe on endpoint (unix://...) within timeout."""
    target = "unix:" + endpoint.removeprefix("unix://") if endpoint.startswith("unix://") else endpoint
    with grpc.insecure_channel(target) as channel:
        try:
            stub = csi_pb2_grpc.IdentityStub(channel)  # type: ignore[no-untyped-call]
            stub.Probe(csi_pb2.ProbeRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"the gRPC server did not answer Probe: {exc.code().name}"
    return True, "alive"


class HealthServer:
    def __init__(self, address: str, alive: Readiness, ready: Readiness) -> None:
        host, port = address.rsplit(":", 1)
        checks = {"/healthz": alive, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                check = checks.get(self.path)
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

        self._server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
