"""API keys bound to a tenant, and the gRPC interceptor that checks every caller.

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
:class:`AuthInterceptor` also accepts the coordinator's own capability tokens (a node fetching
the blobs its assignments reference) and asks the authorization table (``atoll.core.access``)
for every method of every service.
"""

from __future__ import annotations

import contextvars
import json
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import grpc

from atoll.core import access
from atoll.core import credentials as cred
from atoll.core.apikeys import ROLES, Identity, KeyEntry, KeySet, header, identify, key_set, may_see, secret_hash
from atoll.core.errors import AtollError, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from atoll.core.rpc import bearer, refused, serving_as

META_KEY = "api_keys"
AGENT_SERVICE = "/atoll.v1.AgentService/"
__all__ = ["Identity", "KeyRing", "AuthInterceptor", "NodeCaller", "visible", "caller_tenant", "caller_node", "ROLES"]


# The caller of the RPC being handled: an API key's Identity, a NodeCaller, or None (keys are
# not enforced yet, or the call comes from inside the coordinator).
current: contextvars.ContextVar = contextvars.ContextVar("atoll_identity", default=None)


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
        admins = [k for k in self._keys.values() if k["role"] == "admin" and not k["revoked"]]
        if not rec["revoked"] and admins == [rec]:
            # Keys are enforced while one is live: revoking the last admin key would leave no one
            # to manage keys, and revoking every key would open the fleet to anonymous callers.
            raise FailedPrecondition(f"key {key_id} is the last admin key; revoking it would leave no admin",
                                     hint="create another admin key first (atoll keys create --role admin)")
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


@dataclass(frozen=True)
class NodeCaller:
    """A node presenting the capability token the coordinator issued to it."""

    node_id: str
    scopes: tuple[str, ...]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Finds out who calls (an API key, a capability token, or nobody), asks the authorization
    table (:func:`atoll.core.access.decide`) whether that kind of caller may call the method,
    and exposes the caller as ``current`` to the handler, which applies the ownership rule.

    ``AgentService`` passes through: its callers authenticate with what their messages carry
    (join token or node key, then the session token), which the registry checks. A node token
    that ``revoked()`` revokes (``Registry.revoked_nodes``) is UNAUTHENTICATED."""

    def __init__(self, keys: KeyRing, issuer, revoked: Callable[[], Mapping[str, float]] = dict):
        self.keys, self.issuer, self.revoked = keys, issuer, revoked

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or method.startswith(AGENT_SERVICE) or access.open_to_anyone(method):
            return handler
        token = bearer(details.invocation_metadata)
        proof = header(details.invocation_metadata, cred.PROOF_METADATA)
        try:            # here, from the headers: a refused call's request is never read (rpc.refused)
            kind, caller, scopes = self.identify(token, proof)
            access.decide(method, kind, scopes)
        except AtollError as exc:
            return refused(handler, exc)

        return serving_as(handler, current, caller)

    def identify(self, token: str, proof: str = "") -> tuple[str, "Identity | NodeCaller | None", tuple[str, ...]]:
        """(kind of caller, the caller for ``current``, token scopes); Unauthenticated when it
        presents a credential that does not verify (a node token without its holder's ``proof``
        for the coordinator among them)."""
        if cred.is_token(token):
            claims = self.issuer.verify(token, revoked=self.revoked())
            if claims.is_caller:
                raise Unauthenticated("a caller token is taken only by the agent entry it was issued for",
                                      hint="present your API key to the coordinator")
            if not claims.is_coordinator:
                cred.check_call_proof(claims, proof, cred.COORDINATOR_AUDIENCE, self.issuer.clock())
            kind = access.COORDINATOR if claims.is_coordinator else access.NODE
            return kind, NodeCaller(claims.node_id, claims.scopes), claims.scopes
        if not self.keys.enabled():
            return access.ADMIN, None, ()          # no key exists yet: open (bootstrap), said in the log
        if not token:
            return access.ANONYMOUS, None, ()
        ident = self.keys.check(token)
        return (access.ADMIN if ident.is_admin else access.USER), ident, ()


def visible(tenant_of_thing: str) -> bool:
    """May the current caller see a thing owned by ``tenant_of_thing``? (None: keys are not
    enforced yet, or the coordinator itself; a node's token sees no tenant's things.)"""
    ident = current.get()
    if isinstance(ident, NodeCaller):
        return False
    return may_see(ident, tenant_of_thing)


def caller_tenant() -> str:
    ident = current.get()
    return ident.tenant if isinstance(ident, Identity) else ""


def caller_node() -> str:
    """The node id of a caller presenting a node token, else ""."""
    ident = current.get()
    return ident.node_id if isinstance(ident, NodeCaller) else ""


def caller_is_admin() -> bool:
    ident = current.get()
    return ident is None or (isinstance(ident, Identity) and ident.is_admin)
