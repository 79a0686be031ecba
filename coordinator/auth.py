"""API keys bound to a tenant, and the gRPC interceptor that checks them.

A key looks like ``atoll_<id>_<secret>``; the coordinator stores only ``sha256(secret)`` (keys are
high-entropy random strings, so a fast hash is enough) with its tenant, role and state, in the
store's meta table (so the SQLite and PostgreSQL stores both keep them). Roles:

- ``admin``: everything, every tenant's workflows, node drains, key management;
- ``user``: its own tenant's workflows and adapters (submit, list, status, invoke, profile,
  delete, push) and read-only node listing.

Keys are enforced once the first key exists (a fresh coordinator is open, for local
development, and says so in its log); the first key can be created without one and must be an
admin key. A missing, unknown or revoked key gets UNAUTHENTICATED; a key without the role
PERMISSION_DENIED; another tenant's workflow NOT_FOUND (its existence is not revealed).

The check itself is :func:`atoll.core.apikeys.identify` and the tenant rule
:func:`atoll.core.apikeys.may_see`, the same functions agents apply at their doors with the key
set this coordinator sends them (:meth:`KeyRing.key_set`).
"""

from __future__ import annotations

import contextvars
import inspect
import json
import secrets
import time

import grpc

from atoll.core.apikeys import ROLES, Identity, KeyEntry, KeySet, identify, key_set, may_see, secret_hash
from atoll.core.apikeys import bearer as _bearer
from atoll.core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unauthenticated

META_KEY = "api_keys"
__all__ = ["Identity", "KeyRing", "ApiKeyInterceptor", "visible", "caller_tenant", "ROLES"]


# The caller of the RPC being handled (None when keys are not enforced).
current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("atoll_identity", default=None)


class KeyRing:
    RELOAD_S = 1.0      # another coordinator (the leader) may change the keys: re-read this often

    def __init__(self, store):
        self.store = store
        self._keys: dict[str, dict] = json.loads(store.get_meta(META_KEY) or "{}")
        self._loaded = time.monotonic()
        self._set: KeySet | None = None        # built from _keys; dropped whenever they change

    def reload(self) -> None:
        keys = json.loads(self.store.get_meta(META_KEY) or "{}")
        if keys != self._keys:
            self._keys, self._set = keys, None
        self._loaded = time.monotonic()

    def _fresh(self) -> None:
        if time.monotonic() - self._loaded > self.RELOAD_S:
            self.reload()

    def _save(self) -> None:
        self._set = None
        self.store.set_meta(META_KEY, json.dumps(self._keys, sort_keys=True))

    def enabled(self) -> bool:
        self._fresh()
        return any(not k["revoked"] for k in self._keys.values())

    def create(self, tenant: str, role: str = "user", caller: Identity | None = None) -> tuple[dict, str]:
        if role not in ROLES:
            raise InvalidArgument(f"unknown role {role!r}", hint="one of " + ", ".join(ROLES))
        if not tenant or len(tenant) > 63 or not all(c.isalnum() or c in "-_." for c in tenant):
            raise InvalidArgument("tenant must be 1-63 letters, digits, '-', '_' or '.'")
        if self.enabled():
            if caller is None or not caller.is_admin:
                raise PermissionDenied("creating keys needs an admin key")
        elif role != "admin":
            raise FailedPrecondition("the first key must be an admin key", hint="atoll keys create --tenant ops --role admin")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(24)
        rec = {"id": key_id, "tenant": tenant, "role": role, "hash": secret_hash(secret), "created": time.time(),
               "revoked": False}
        self._keys[key_id] = rec
        self._save()                                   # durable before the key is shown
        return self.view(rec), f"atoll_{key_id}_{secret}"

    @staticmethod
    def view(rec: dict) -> dict:
        return {k: v for k, v in rec.items() if k != "hash"}

    def list(self, caller: Identity | None) -> list[dict]:
        if self.enabled() and (caller is None or not caller.is_admin):
            raise PermissionDenied("listing keys needs an admin key")
        return [self.view(r) for r in sorted(self._keys.values(), key=lambda r: r["created"])]

    def revoke(self, key_id: str, caller: Identity | None) -> dict:
        if self.enabled() and (caller is None or not caller.is_admin):
            raise PermissionDenied("revoking keys needs an admin key")
        rec = self._keys.get(key_id)
        if rec is None:
            raise NotFound(f"no key with id {key_id[:20]!r}", hint="see `atoll keys list`")
        rec["revoked"] = True
        self._save()
        return self.view(rec)

    def key_set(self) -> KeySet:
        """The keys as agents check them (hashes, tenants, roles, revocations), with a digest;
        rebuilt only when the stored keys changed."""
        self._fresh()
        if self._set is None:
            self._set = key_set(self._entries())
        return self._set

    def _entries(self) -> list[KeyEntry]:
        return [KeyEntry(r["id"], r["tenant"], r["role"], r["hash"], bool(r["revoked"])) for r in self._keys.values()]

    def check(self, key: str) -> Identity:
        return identify(self.key_set().keys, key)


# Methods of atoll.v1.ClientService and what they need.
ADMIN_ONLY = {"DrainNode"}
OPEN_WHEN_BOOTSTRAPPING = {"CreateKey"}


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Checks API keys on the client-facing services and exposes the caller as ``current``."""

    SERVICES = ("/atoll.v1.ClientService/", "/atoll.v1.ModelStore/Push", "/atoll.v1.ModelStore/Stat")

    def __init__(self, keys: KeyRing):
        self.keys = keys

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or not method.startswith(self.SERVICES):
            return handler
        name = method.rsplit("/", 1)[-1]
        token = _bearer(details.invocation_metadata)
        keys = self.keys

        def identify() -> Identity | None:
            if not keys.enabled():
                return None
            if not token and name in OPEN_WHEN_BOOTSTRAPPING:
                return None
            ident = keys.check(token)
            if name in ADMIN_ONLY and not ident.is_admin:
                raise PermissionDenied(f"{name} needs an admin key")
            return ident

        async def enter(context):
            """Check the caller; on success set ``current`` and return the token to reset."""
            try:
                return current.set(identify())
            except (Unauthenticated, PermissionDenied) as exc:
                code = (grpc.StatusCode.UNAUTHENTICATED if exc.code == "UNAUTHENTICATED"
                        else grpc.StatusCode.PERMISSION_DENIED)
                await context.abort(code, str(exc))

        if handler.unary_stream:
            inner_s = handler.unary_stream

            async def us(request, context):
                tok = await enter(context)
                try:
                    agen = inner_s(request, context)
                    if inspect.isasyncgen(agen):
                        async for item in agen:
                            yield item
                    else:
                        for item in await agen:
                            yield item
                finally:
                    current.reset(tok)
            return grpc.unary_stream_rpc_method_handler(us, handler.request_deserializer, handler.response_serializer)

        # unary-unary and stream-unary: one coroutine call, the same wrapping.
        kind, factory = ((handler.unary_unary, grpc.unary_unary_rpc_method_handler) if handler.unary_unary
                         else (handler.stream_unary, grpc.stream_unary_rpc_method_handler))
        if kind is None:
            return handler
        inner = kind

        async def call(request_or_iterator, context):
            tok = await enter(context)
            try:
                return await inner(request_or_iterator, context)
            finally:
                current.reset(tok)
        return factory(call, handler.request_deserializer, handler.response_serializer)


def visible(tenant_of_thing: str) -> bool:
    """May the current caller see a thing owned by ``tenant_of_thing``?"""
    return may_see(current.get(), tenant_of_thing)


def caller_tenant() -> str:
    ident = current.get()
    return ident.tenant if ident is not None else ""
