"""The one gRPC server bootstrap every service runs: health, reflection, interceptors, graceful shutdown."""

from __future__ import annotations

import asyncio
import hmac
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
import structlog
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OverloadedError,
    ServiceError,
    UnavailableError,
)
from services.common.input_rules import REQUEST_ID_RULE, accepted_request_id
from services.common.logging import configure_logging, deadline_var, request_id_var
from services.common.metrics import MetricsServer
from services.common.settings import ServiceSettings
from services.common.telemetry import TelemetryInterceptor, configure_tracing

log = structlog.get_logger(__name__)

S = TypeVar("S", bound=ServiceSettings)

REQUEST_ID_KEY = "x-request-id"

# The one table from domain errors to status codes; the most specific class wins (checked in order).
STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(error: ServiceError) -> grpc.StatusCode:
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.UNKNOWN


def _downstream_status(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    """A backend's failure seen by a caller: client errors pass through, the rest become UNAVAILABLE."""
    code = error.code()
    passthrough = {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    if code in passthrough:
        return code, error.details() or code.name
    return grpc.StatusCode.UNAVAILABLE, f"a backend service failed ({code.name}): {error.details()}"


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the call ends as INVALID_ARGUMENT (grpc would
    answer UNKNOWN) and passes through the access log like any other."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:
            return _Malformed(error)

    return deserialize


def _is_open(method: str) -> bool:
    """Health and reflection: for probes and operators, never logged, never behind the token."""
    return method.startswith("/grpc.health.") or method.startswith("/grpc.reflection.")


class RequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Request id (from metadata or new), one access-log line per call (method, code and time only: never
    request content), the error-to-status table, and the default deadline when the caller set none."""

    def __init__(self, default_deadline_s: float = 0.0) -> None:
        self._default_deadline_s = default_deadline_s or None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())
        inner = handler.unary_unary
        quiet = _is_open(method)

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            given = metadata.get(REQUEST_ID_KEY)
            request_id = accepted_request_id(given) or uuid.uuid4().hex
            token = request_id_var.set(request_id)
            if given and given != request_id:
                log.warning("x-request-id replaced", given_chars=len(given), rule=REQUEST_ID_RULE)
            remaining = context.time_remaining()
            if remaining is None:
                remaining = self._default_deadline_s
            deadline_token = deadline_var.set(None if remaining is None else time.monotonic() + remaining)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if isinstance(request, _Malformed):
                    raise InvalidArgumentError(
                        f"the request is not a valid {method} message ({type(request.error).__name__}): "
                        "send a serialized request of the method's type"
                    )
                return await inner(request, context)
            except ServiceError as error:
                code = status_for(error)
                await context.abort(code, str(error), trailing_metadata=error.trailing_metadata())
            except grpc.aio.AioRpcError as error:
                code, details = _downstream_status(error)
                await context.abort(code, details)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                code = context.code() or grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error", method=method)
                await context.abort(code, f"internal error; quote request id {request_id} when reporting it")
            finally:
                if not quiet:
                    log.info(
                        "rpc",
                        method=method,
                        code=code.name if isinstance(code, grpc.StatusCode) else str(code),
                        ms=round((time.perf_counter() - started) * 1000, 2),
                    )
                request_id_var.reset(token)
                deadline_var.reset(deadline_token)

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without `authorization: Bearer <token>` (UNAUTHENTICATED) before any request is parsed;
    health and reflection stay open."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if _is_open(method):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self._expected):
            return await continuation(handler_call_details)

        async def deny(request: bytes, context: grpc.aio.ServicerContext) -> None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong credentials: send the header `authorization: Bearer <token>`",
            )

        return grpc.unary_unary_rpc_method_handler(deny)


class ServiceApp(Protocol):
    """What a service's composition root hands to the bootstrap."""

    service_name: str  # full proto name, e.g. "recsys.embedding.v1.EmbeddingService"

    def register(self, server: grpc.aio.Server) -> None: ...

    async def warm_up(self) -> None: ...

    async def close(self) -> None: ...


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is set; mutual TLS (client certificates required) when a client CA is set."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=ca.read_bytes() if ca is not None else None,
        require_client_auth=ca is not None,
    )


def server_interceptors(settings: ServiceSettings) -> list[grpc.aio.ServerInterceptor]:
    """The request interceptor outside the token check, so refused calls are logged too."""
    # Telemetry outermost of all: metrics and the span cover every call, the access log runs inside the span.
    interceptors: list[grpc.aio.ServerInterceptor] = [
        TelemetryInterceptor(),
        RequestInterceptor(settings.default_deadline_s),
    ]
    if settings.auth_token is not None and settings.auth_token.get_secret_value():
        interceptors.append(BearerTokenInterceptor(settings.auth_token.get_secret_value()))
    return interceptors


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.grace_period_s * 1000)),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]


class RunningServer:
    """A started gRPC server with its health servicer. Health says NOT_SERVING until warm-up is done."""

    def __init__(self, settings: ServiceSettings, app: ServiceApp) -> None:
        self.settings = settings
        self.app = app
        self.health = HealthServicer()
        self.server = grpc.aio.server(
            interceptors=server_interceptors(settings),
            options=server_options(settings),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        self.port = 0
        self.metrics = MetricsServer(settings.host, settings.resolved_metrics_port)

    async def start(self) -> int:
        self.app.register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (self.app.service_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), self.server)
        for name in ("", self.app.service_name):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        credentials = server_credentials(self.settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(self.settings.address)
        else:
            self.port = self.server.add_secure_port(self.settings.address, credentials)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {self.settings.address}: is the port in use?")
        await self.server.start()
        if self.settings.resolved_metrics_port:
            self.metrics.start()
        return self.port

    async def warm_up(self) -> None:
        """Runs the app's warm-up, then reports SERVING. Liveness ("") is SERVING from start on."""
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.app.warm_up()
        await self.health.set(self.app.service_name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", port=self.port, service=self.app.service_name)

    async def stop(self) -> None:
        """Graceful: NOT_SERVING first (load balancers stop sending), a drain, then finish in-flight calls."""
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(self.settings.drain_s)
        await self.server.stop(self.settings.grace_period_s)
        await self.app.close()
        self.metrics.stop()
        log.info("stopped", service=self.app.service_name)


async def serve(settings: ServiceSettings, app: ServiceApp) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully."""
    running = RunningServer(settings, app)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    await running.start()
    event_loop = type(loop).__module__.partition(".")[0]  # "uvloop" or "asyncio"
    log.info("listening", address=f"{settings.host}:{running.port}", service=app.service_name, event_loop=event_loop)
    warm_up = asyncio.create_task(running.warm_up())
    await stop_requested.wait()
    if not warm_up.done():
        warm_up.cancel()
    log.info("shutting down", service=app.service_name)
    await running.stop()


def run_service(name: str, settings_factory: Callable[[], S], build_app: Callable[[S], ServiceApp]) -> None:
    """Entry point of every service's __main__: settings, logging, then the app built inside the loop."""
    try:
        settings = settings_factory()
    except ValidationError as error:
        raise SystemExit(f"{name}: invalid settings (check the environment variables):\n{error}") from None
    configure_logging(name, settings.log_level, settings.log_json)

    async def main() -> None:
        await serve(settings, build_app(settings))

    tracing = configure_tracing(name, settings)
    try:
        if settings.event_loop == "uvloop":
            uvloop.run(main())
        else:
            asyncio.run(main())
    finally:
        if tracing is not None:
            tracing.shutdown()  # flushes the spans still buffered
