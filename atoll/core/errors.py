"""Typed errors shared by every part of atoll.

Each error carries a message that says what is wrong and how to fix it. Services map them to
gRPC status codes (see ``GRPC_CODE``); the CLI prints them on one line and exits with code 2.
This module imports nothing of atoll's, so every layer may import it.
"""

from __future__ import annotations


class AtollError(Exception):
    """Base class of every error atoll raises on purpose. ``code`` names a gRPC status."""

    code = "INTERNAL"
    # The request's own fault, not the server's (see :func:`request_fault`).
    request_fault = False

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} ({hint})")


class SpecError(AtollError):
    """A spec, config file or flag is invalid.

    ``source`` is the file (or "flag --x", "environment ATOLL_X"), ``path`` the field path
    inside it, e.g. ``tasks[2].variants[0].throughput``.
    """

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, source: str | None = None, path: str | None = None,
                 hint: str | None = None):
        self.source = source
        self.path = path
        where = ""
        if source and path:
            where = f"{source}: {path}: "
        elif source:
            where = f"{source}: "
        elif path:
            where = f"{path}: "
        super().__init__(where + message, hint=hint)


REQUEST_FAULT = "atoll-fault"     # trailing metadata of an error that is the request's fault ("request")


def request_fault(exc: "AtollError") -> "AtollError":
    """Mark ``exc`` as the request's own fault: the server that raised it is healthy, and another
    one of the same kind would fail the request the same way or (a larger one) serve it. A
    router tries the others but does not take this one out of rotation, so one caller's bad
    request never slows anyone else's (before, a request too long for a replica's KV cache took
    that replica out of its entry's rotation for 10 s). Sent as ``atoll-fault: request``."""
    exc.request_fault = True
    return exc


# One class per gRPC status a caller may see, written as a table (each is AtollError with
# another ``code``).
class InvalidArgument(AtollError): code = "INVALID_ARGUMENT"
class NotFound(AtollError): code = "NOT_FOUND"
class AlreadyExists(AtollError): code = "ALREADY_EXISTS"
class FailedPrecondition(AtollError): code = "FAILED_PRECONDITION"
class ResourceExhausted(AtollError): code = "RESOURCE_EXHAUSTED"
class Unauthenticated(AtollError): code = "UNAUTHENTICATED"
class PermissionDenied(AtollError): code = "PERMISSION_DENIED"
class Unavailable(AtollError): code = "UNAVAILABLE"
class DeadlineExceeded(AtollError): code = "DEADLINE_EXCEEDED"


class PlanInfeasible(AtollError):
    """No plan meets the SLOs. ``slo`` names the SLO that fails ("throughput", "accuracy",
    "memory", ...); ``asked`` and ``reachable`` give the figures, so callers can say by how much.
    """

    code = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, slo: str, asked: float | None = None,
                 reachable: float | None = None, hint: str | None = None):
        self.slo = slo
        self.asked = asked
        self.reachable = reachable
        super().__init__(message, hint=hint)
