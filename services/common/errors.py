"""Domain errors shared by every service. Domain code raises these; one table in server.py maps them to
gRPC status codes, so no domain module imports gRPC."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the errors a caller can act on; the message says what to fix."""

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """What a program acting on the error needs besides the message, sent as trailing metadata."""
        return ()


class InvalidArgumentError(ServiceError, ValueError):
    """The request is malformed or out of bounds."""


class NotFoundError(ServiceError, LookupError):
    """A named entity (item, user, model) does not exist."""


class OverloadedError(ServiceError):
    """The service is at its admission limit; retry later or elsewhere."""


class UnavailableError(ServiceError):
    """A dependency is down or the service is not ready yet."""


class FailedPreconditionError(ServiceError):
    """The system is not in a state that allows the request (for example no model checkpoint yet)."""
