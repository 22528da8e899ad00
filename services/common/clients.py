"""Client channels to the other services: round robin over DNS, retries for idempotent calls, deadlines
derived from the caller's remaining time, and the request id passed along."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry import trace

from services.common.logging import deadline_var, request_id_var
from services.common.server import REQUEST_ID_KEY
from services.common.telemetry import TracingClientInterceptor

# Leave the caller this much of its own deadline to turn a backend's answer into a response.
DEADLINE_MARGIN_S = 0.02

# The longest a channel waits before it tries a backend again: how long after a restarted backend serves again
# the callers' channels may still fail fast.
MAX_RECONNECT_BACKOFF_S = 2.0


def service_config(service_name: str, idempotent_methods: Sequence[str]) -> str:
    """Round robin over every address the name resolves to (a headless Service's pods); retries with
    backoff for the methods that are safe to repeat."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if idempotent_methods:
        config["methodConfig"] = [
            {
                "name": [{"service": service_name, "method": method} for method in idempotent_methods],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def request_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata for a backend call: the current call's request id, so one id follows a request through the
    suite. Passed with each call rather than by a client interceptor: grpc.aio runs every intercepted call
    through a task of its own, a tenth of the gateway's CPU per Recommend for two interceptors (py-spy)."""
    request_id = request_id_var.get()
    return ((REQUEST_ID_KEY, request_id),) if request_id else ()


def tracing_enabled() -> bool:
    """Whether a tracer provider was configured (configure_tracing, or a test's), so client spans are recorded."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def open_channel(
    target: str,
    service_name: str,
    idempotent_methods: Sequence[str] = (),
    max_message_bytes: int = 64 * 1024 * 1024,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str = "",
) -> grpc.aio.Channel:
    """A channel to a backend (TLS with `credentials`, else plaintext); `dns:///host:port` targets balance
    over every resolved address. `server_name` overrides the name checked against the server's certificate."""
    options: list[tuple[str, str | int]] = [
        ("grpc.service_config", service_config(service_name, idempotent_methods)),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # A restarted backend is reached again within a second or two, not after grpc's default backoff of
        # up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", int(MAX_RECONNECT_BACKOFF_S * 1000)),
    ]
    # The tracing interceptor only where spans are recorded: an intercepted call costs more than a plain one.
    interceptors = [TracingClientInterceptor()] if tracing_enabled() else []
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


def call_timeout(default_s: float, share: float = 1.0) -> float:
    """The timeout for a downstream call: the default, or less when the current caller has less time left.
    A call with a fallback takes only `share` of the time left, so the fallback still fits in it."""
    deadline = deadline_var.get()
    if deadline is None:
        return default_s
    return max(0.001, min(default_s, (deadline - time.monotonic() - DEADLINE_MARGIN_S) * share))
