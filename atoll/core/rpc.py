"""gRPC plumbing shared by every server and client: error mapping, health, reflection, channels.

Servicer methods are wrapped with :func:`handle_errors`, which turns an
:class:`~atoll.core.errors.AtollError` into its status code (INVALID_ARGUMENT, NOT_FOUND, ...) and
any other exception into INTERNAL with a log line, so a bad request never kills a server.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from typing import Callable

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer as _AioReflection

from atoll.core import errors
from atoll.core.apikeys import bearer  # noqa: F401  (the servers' guards read it from here)

log = logging.getLogger("atoll.core.rpc")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# The longest an agent waits between attempts to reach the coordinator (its exponential
# back-off's cap). A restarted coordinator gives restored nodes at least this long to come back.
RECONNECT_BACKOFF_CAP_S = 5.0

CODE_BY_NAME = {c.name: c for c in grpc.StatusCode}

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.max_concurrent_streams", 10000),
    # gRPC sets SO_REUSEPORT by default: a second server on a port already in use would bind too
    # and take part of its calls. A clash must fail at start instead ("cannot listen on ...").
    ("grpc.so_reuseport", 0),
]

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 0),
    # gRPC's own reconnect backoff grows to 120 s: after a minute without the coordinator an
    # agent would come back up to half a minute after it (agents trickled back one by one).
    # Capped at the heartbeat's own backoff cap (agent/heartbeat.py: Backoff, 5 s).
    ("grpc.max_reconnect_backoff_ms", 5000),
]

# Channels to hosts of the fleet (entries, Workers): any READY host may report an address, and
# one that accepts a connection and then says nothing held a call 20 s (gRPC's connect timeout)
# before it failed over to the next replica or entry; 5 s leaves room for a TLS handshake over
# a slow intercontinental link.
PEER_CHANNEL_OPTIONS = CHANNEL_OPTIONS + [("grpc.min_reconnect_backoff_ms", 5000)]


class Malformed:
    """Stands in for a request whose bytes did not parse; handlers answer INVALID_ARGUMENT."""

    def __init__(self, error: str):
        self.error = error


def _safe_parser(cls):
    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's fault
            return Malformed(f"{type(exc).__name__}: {exc}"[:300])
    return parse


def add_service(server, servicer, service_descriptor) -> None:
    """Register ``servicer`` for ``service_descriptor`` (from a ``*_pb2`` module) with
    deserializers that never raise, so that malformed bytes get INVALID_ARGUMENT instead of
    gRPC's generic INTERNAL."""
    handlers = {}
    for m in service_descriptor.methods:
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        fn = getattr(servicer, m.name)
        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[(m.client_streaming, m.server_streaming)]
        handlers[m.name] = kind(fn, request_deserializer=_safe_parser(req_cls),
                                response_serializer=resp_cls.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_descriptor.full_name, handlers),))


def check_parsed(request) -> None:
    if isinstance(request, Malformed):
        raise errors.InvalidArgument(f"malformed request: {request.error}")


def status_code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, errors.AtollError):
        return CODE_BY_NAME.get(exc.code, grpc.StatusCode.INTERNAL)
    return grpc.StatusCode.INTERNAL


def error_from_rpc(exc: grpc.RpcError) -> errors.AtollError:
    """Turn a client-side RpcError into the matching AtollError (for SDK users)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    cls = {
        grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
        grpc.StatusCode.NOT_FOUND: errors.NotFound,
        grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
        grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
        grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
        grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
        grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
        grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
        grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    }.get(code, errors.AtollError)
    return cls(f"{code.name}: {details}")


async def _abort(context, exc: BaseException, method: str):
    code = status_code(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("internal error in %s", method, exc_info=exc)
        msg = f"internal error in {method}: {type(exc).__name__}"
    else:
        msg = str(exc)
    if getattr(exc, "request_fault", False):
        await context.abort(code, msg[:2000], trailing_metadata=((errors.REQUEST_FAULT, "request"),))
    await context.abort(code, msg[:2000])


def handle_errors(fn):
    """Decorate an async servicer method (unary or server-streaming) to map errors to codes."""
    name = fn.__qualname__
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def gen_wrapper(self, request, context):
            try:
                check_parsed(request)
                async for item in fn(self, request, context):
                    yield item
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status, never crashes the server
                await _abort(context, exc, name)
        return gen_wrapper

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            check_parsed(request)
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc, name)
    return wrapper


def guarded(handler, admit: Callable[[], Callable[[], None] | None]):
    """``handler`` (a ``grpc.RpcMethodHandler`` of any of the four kinds) with ``admit()`` run
    first, inside the call: it raises an :class:`~atoll.core.errors.AtollError` to refuse the
    call (which then ends with that error's status code) or returns what to run once the call
    is over (to reset a context variable it set), or None. Server interceptors use it to check
    the caller before a servicer sees the request."""

    async def enter(context):
        try:
            return admit()
        except errors.AtollError as exc:
            await context.abort(status_code(exc), str(exc)[:2000])

    def streamed(inner):
        async def call(request, context):
            done = await enter(context)
            try:
                out = inner(request, context)
                if inspect.isasyncgen(out):
                    async for item in out:
                        yield item
                else:       # a coroutine: it returns its messages, or writes them itself (None)
                    for item in await out or ():
                        yield item
            finally:
                if done is not None:
                    done()
        return call

    def single(inner):
        async def call(request, context):
            done = await enter(context)
            try:
                return await inner(request, context)
            finally:
                if done is not None:
                    done()
        return call

    kinds = (("unary_unary", grpc.unary_unary_rpc_method_handler, single),
             ("stream_unary", grpc.stream_unary_rpc_method_handler, single),
             ("unary_stream", grpc.unary_stream_rpc_method_handler, streamed),
             ("stream_stream", grpc.stream_stream_rpc_method_handler, streamed))
    for attr, factory, wrap in kinds:
        inner = getattr(handler, attr)
        if inner is not None:
            return factory(wrap(inner), handler.request_deserializer, handler.response_serializer)
    return handler


def serving_as(handler, var: contextvars.ContextVar, value):
    """``handler`` with ``var`` set to ``value`` for the length of each call (:func:`guarded`):
    how the servers' guards hand the caller they identified from the headers to the servicer.
    A streamed call that the server finalises from another context (a cancelled stream) has
    nothing left to undo: that context dies with it."""

    def admit():
        mark = var.set(value)

        def done():
            try:
                var.reset(mark)
            except (ValueError, RuntimeError):
                pass
        return done
    return guarded(handler, admit)


def refused(handler, exc: errors.AtollError):
    """A handler for ``handler``'s method that ends the call with ``exc``'s status code without
    reading its request. gRPC reads a request message (up to 16 MiB) and decodes it before a
    unary handler runs, so an interceptor that refuses inside the call (:func:`guarded`) pays
    for a stranger's message: 8 callers with no credentials sending 16 MiB requests in a loop
    took a coordinator from 101 to 1,793 MiB. A request-streaming handler is called before any
    message is read, and this one never reads: the call ends at its headers."""
    code, details = status_code(exc), str(exc)[:2000]

    async def abort(requests, context):
        await context.abort(code, details)

    factory = grpc.stream_stream_rpc_method_handler if handler.response_streaming \
        else grpc.stream_unary_rpc_method_handler
    return factory(abort, None, handler.response_serializer)


# Health and reflection answer strangers (no credentials), and their streams stay open as long as
# the caller keeps them. Each kind holds at most this many at once; past it a new one is
# RESOURCE_EXHAUSTED. A Watch for a service this server does not have gets SERVICE_UNKNOWN and
# ends: the stock servicer kept one waiter, keyed by the name asked for, per stream (2,000 Watch
# streams naming 100 kB services held 1.1 GiB; a name may be a 16 MiB message).
MAX_OPEN_WATCHES = 256
MAX_OPEN_REFLECTIONS = 64


class BoundedHealth(health.aio.HealthServicer):
    """grpc.health.v1 with bounded Watch streams: only this server's services, at most
    ``MAX_OPEN_WATCHES`` open."""

    def __init__(self, service_names: list[str]):
        super().__init__()
        self._known = frozenset(["", *service_names])
        self._open = 0

    async def Watch(self, request, context) -> None:
        if request.service not in self._known:
            await context.write(health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN))
            return
        if self._open >= MAX_OPEN_WATCHES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{MAX_OPEN_WATCHES} health Watch streams are open; use Check, or retry later")
        self._open += 1
        try:
            await super().Watch(request, context)
        finally:
            self._open -= 1


class BoundedReflection(_AioReflection):
    """Server reflection with at most ``MAX_OPEN_REFLECTIONS`` streams open at once."""

    def __init__(self, service_names: list[str]):
        super().__init__(service_names)
        self._open = 0

    async def ServerReflectionInfo(self, request_iterator, context):
        if self._open >= MAX_OPEN_REFLECTIONS:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{MAX_OPEN_REFLECTIONS} reflection streams are open; retry later")
        self._open += 1
        try:
            async for response in super().ServerReflectionInfo(request_iterator, context):
                yield response
        finally:
            self._open -= 1


def add_health_and_reflection(server, service_names: list[str]) -> BoundedHealth:
    """Standard grpc.health.v1 health (the listed services; SERVING once :func:`set_serving` says
    so) and server reflection, both with bounded streams (above). ``server`` is a grpc.aio server."""
    hs = BoundedHealth(list(service_names))
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        BoundedReflection(list(service_names) + [health.SERVICE_NAME, reflection.SERVICE_NAME]), server)
    return hs


async def set_serving(hs, service_names: list[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in [""] + list(service_names):
        res = hs.set(name, status)
        if inspect.isawaitable(res):
            await res
