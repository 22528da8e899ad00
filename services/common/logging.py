"""structlog set-up: JSON lines on stderr with the service name and the request id of the current call."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

import structlog
import structlog.tracebacks
from opentelemetry import trace

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
# Absolute time.monotonic() by which the current call must be answered; None when the caller set none.
deadline_var: ContextVar[float | None] = ContextVar("deadline", default=None)


def _add_request_id(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    request_id = request_id_var.get()
    if request_id:
        event.setdefault("request_id", request_id)
    return event


def _add_trace_id(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """The current span's trace id (only valid while tracing is on), to jump from a log line to its trace."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
    return event


def configure_logging(service: str, level: str = "info", json: bool = True) -> None:
    """Configures structlog (and the stdlib root logger, for libraries) once per process."""
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    logging.basicConfig(stream=sys.stderr, level=max(numeric_level, logging.WARNING), format="%(message)s")
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_request_id,
            _add_trace_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks without local variables: they would hold request content (user text, ids).
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
