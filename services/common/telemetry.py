"""Per-call telemetry of the bootstrap: one server interceptor records the RPC metrics (count, latency, in-flight)
and the server span; one client interceptor makes the client span and carries the trace context (W3C
`traceparent` metadata) to the backend, so one gateway call is one trace across the services.

Tracing is off unless an OTLP endpoint is set: the OpenTelemetry API then hands out non-recording spans and
injects nothing, so the interceptors cost next to nothing. Written on the OTel API rather than
opentelemetry-instrumentation-grpc (a beta that wraps grpc.aio handlers once more): here the span sees the status
code that our error table chose, and the access-log line of the call runs inside the span (its trace id).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common.metrics import rpc_metrics
from services.common.settings import ServiceSettings

# A proxy until a provider is set (configure_tracing, or a test's in-memory one), then the real tracer.
_tracer = trace.get_tracer("recsys")

# Server-side span status is ERROR only for codes that mean the server failed (OTel semantic conventions).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def configure_tracing(service: str, settings: ServiceSettings) -> TracerProvider | None:
    """Sends spans to the OTLP/gRPC collector named by the settings or OTEL_EXPORTER_OTLP_ENDPOINT; None (tracing
    off) when neither is set. The exporter reads the other standard OTEL_EXPORTER_OTLP_* variables (headers, TLS)."""
    endpoint = settings.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if not endpoint:
        return None
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.namespace": "recsys"}),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    return provider


def _split(method: str) -> tuple[str, str]:
    """`/recsys.ranker.v1.RankerService/ScoreCandidates` -> (`recsys.ranker.v1.RankerService`, `ScoreCandidates`)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _attributes(method: str) -> dict[str, str]:
    service, name = _split(method)
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _finish(span: Span, code: grpc.StatusCode, failed: bool) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if failed:
        span.set_status(Status(StatusCode.ERROR, code.name))


class TelemetryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """RPC metrics and the server span of every unary call but health and reflection. Outermost, so it measures
    everything the other interceptors do and they (the access log) run inside the span."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or handler.unary_unary is None or method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        service, name = _split(method)
        metrics = rpc_metrics()
        in_flight = metrics.in_flight.labels(service, name)
        parent = propagate.extract(dict(handler_call_details.invocation_metadata or ()))
        inner = handler.unary_unary

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            in_flight.inc()
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            with _tracer.start_as_current_span(
                method.lstrip("/"),
                context=parent,
                kind=SpanKind.SERVER,
                attributes=_attributes(method),
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    response = await inner(request, context)
                    code = context.code() or grpc.StatusCode.OK
                    return response
                except asyncio.CancelledError:
                    code = context.code() or grpc.StatusCode.CANCELLED
                    raise
                except Exception:
                    # After context.abort the code is set; anything else is what grpc reports for it.
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    in_flight.dec()
                    metrics.requests.labels(service, name, code.name).inc()
                    metrics.latency.labels(service, name, code.name).observe(time.perf_counter() - started)
                    _finish(span, code, code in _SERVER_ERRORS)

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class TracingClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """A client span per backend call, its context sent as `traceparent` metadata (nothing when tracing is off)."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        raw = client_call_details.method
        method = raw.decode() if isinstance(raw, bytes) else str(raw)
        with _tracer.start_as_current_span(
            method.lstrip("/"),
            kind=SpanKind.CLIENT,
            attributes=_attributes(method),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            if carrier:
                metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
                for key, value in carrier.items():
                    metadata.add(key, value)
                client_call_details = grpc.aio.ClientCallDetails(
                    client_call_details.method,
                    client_call_details.timeout,
                    metadata,
                    client_call_details.credentials,
                    client_call_details.wait_for_ready,
                )
            call = await continuation(client_call_details, request)
            # Waiting for the status (not the response) ends the span when the call ends, without raising here.
            code = await call.code()
            _finish(span, code, code != grpc.StatusCode.OK)
            return call
