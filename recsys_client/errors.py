"""Failed calls as typed exceptions that carry the gRPC status, the server's message and the request id."""

from __future__ import annotations

import grpc


class RecsysError(Exception):
    """A call failed. `code` is the gRPC status, `message` the server's explanation (what to fix), `request_id`
    the id to quote when reporting it (every service logs it)."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str) -> None:
        super().__init__(f"{code.name}: {message} (request id {request_id})")
        self.code = code
        self.message = message
        self.request_id = request_id


class InvalidArgumentError(RecsysError):
    """The request is wrong (k out of range, unknown filter field, ...): the message says what to change."""


class NotFoundError(RecsysError):
    """An unknown item or user."""


class UnauthenticatedError(RecsysError):
    """The gateway wants `authorization: Bearer <token>`: pass token= to the client."""


class PermissionDeniedError(RecsysError):
    """The caller may not do this."""


class ResourceExhaustedError(RecsysError):
    """The service is at its admission limit: back off and try again."""


class UnavailableError(RecsysError):
    """The service (or a backend without a fallback) is down; reads were already retried."""


class DeadlineExceededError(RecsysError):
    """No answer within the call's deadline."""


_BY_CODE: dict[grpc.StatusCode, type[RecsysError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def error_from_rpc(error: grpc.RpcError, request_id: str) -> RecsysError:
    """The typed exception for a failed call (sync or asyncio)."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    return _BY_CODE.get(code, RecsysError)(code, message, request_id)
