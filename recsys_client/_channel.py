"""Channel settings shared by every client: deadlines, retries where a repeat is safe, TLS, the bearer token and
a request id on every call."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import grpc

REQUEST_ID_KEY = "x-request-id"
DEFAULT_DEADLINE_S = 10.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def service_config(service: str, retried_methods: Sequence[str]) -> str:
    """Retries with backoff on UNAVAILABLE for the methods that are safe to repeat, throttled so that a failing
    service is not hit with three times the load (gRPC's own retry machinery, no hand-written loop)."""
    config: dict[str, Any] = {
        "methodConfig": [
            {
                "name": [{"service": service, "method": method} for method in retried_methods],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
    return json.dumps(config)


def channel_options(service: str, retried_methods: Sequence[str]) -> list[tuple[str, Any]]:
    return [
        ("grpc.service_config", service_config(service, retried_methods)),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


def credentials(tls: bool | grpc.ChannelCredentials) -> grpc.ChannelCredentials | None:
    """None for plaintext; True: TLS checked against the system's roots; or the caller's own credentials
    (`grpc.ssl_channel_credentials(root_certificates=..., private_key=..., certificate_chain=...)` for a private
    CA or mutual TLS)."""
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    return grpc.ssl_channel_credentials() if tls else None


def new_request_id() -> str:
    return uuid.uuid4().hex


def call_metadata(token: str | None, request_id: str) -> tuple[tuple[str, str], ...]:
    metadata: tuple[tuple[str, str], ...] = ((REQUEST_ID_KEY, request_id),)
    if token:
        metadata += (("authorization", f"Bearer {token}"),)
    return metadata
