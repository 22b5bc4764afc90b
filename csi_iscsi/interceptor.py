"""One interceptor for every call: logs requests with csi_secret fields masked, maps errors to
status codes (errors.status_for) and counts calls for the metrics endpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Histogram

from csi_iscsi.base.errors import status_for
from csi_iscsi.masking import message_for_log

log = logging.getLogger("csi_iscsi.rpc")
LOGGED_MESSAGE_LIMIT = 4096  # a request field can be any size; a log line stays readable


def _shown(message: Any) -> str:
    text = message_for_log(message)
    return text if len(text) <= LOGGED_MESSAGE_LIMIT else f"{text[:LOGGED_MESSAGE_LIMIT]}... ({len(text)} characters)"

RPC_SECONDS = Histogram("csi_iscsi_rpc_duration_seconds", "CSI calls by method and status code",
                        ["method", "code"])


class CsiInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        behavior = handler.unary_unary

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.monotonic()
            quiet = method in ("Probe", "NodeGetCapabilities", "ControllerGetCapabilities")
            (log.debug if quiet else log.info)("%s request: %s", method, _shown(request))
            try:
                response = behavior(request, context)
            except NotImplementedError:
                code, text = grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by csi-iscsi"
            except Exception as exc:
                code, text = status_for(exc)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
            else:
                RPC_SECONDS.labels(method, "OK").observe(time.monotonic() - start)
                (log.debug if quiet else log.info)(
                    "%s ok in %.3f s: %s", method, time.monotonic() - start, _shown(response))
                return response
            RPC_SECONDS.labels(method, code.name).observe(time.monotonic() - start)
            log.warning("%s -> %s in %.3f s: %s", method, code.name, time.monotonic() - start, text)
            context.abort(code, text)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
