"""API keys, checked the same way at every door: the coordinator's and every agent's.

A key looks like ``atoll_<id>_<secret>``. Whoever checks keys holds a :class:`KeySet`: for each
key id its tenant, role, the SHA-256 of its secret and whether it was revoked (never the key
itself). The coordinator keeps the set in its store and sends it to agents down the heartbeat
stream (``atoll.coordinator.publish``); agents keep the last set they received while the
coordinator is away. :func:`identify` turns a presented key into an :class:`Identity` or
refuses it, and :func:`may_see` says whether that identity may see something a tenant owns:
one rule for every door, so a refusal reads the same wherever a request entered.

Keys are enforced once the first key exists (``KeySet.enforced``); before that every door is
open, for local development, and the coordinator says so in its log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from atoll.core.errors import Unauthenticated

ROLES = ("admin", "user")


@dataclass(frozen=True)
class Identity:
    key_id: str
    tenant: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class KeyEntry:
    id: str
    tenant: str
    role: str
    secret_sha256: str
    revoked: bool = False


@dataclass(frozen=True)
class KeySet:
    digest: int = 0                # 0: no set received yet
    enforced: bool = False
    keys: Mapping[str, KeyEntry] = field(default_factory=dict)
    # node id -> unix seconds: node tokens of that node issued before are revoked (inf: all of
    # them). Not API keys, but they travel to agents with them, by the same digest.
    revoked_nodes: Mapping[str, float] = field(default_factory=dict)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_set(entries: Iterable[KeyEntry]) -> KeySet:
    """The set of ``entries`` with its digest; enforced when one of them is not revoked."""
    entries = sorted(entries, key=lambda e: e.id)
    rows = [[e.id, e.tenant, e.role, e.secret_sha256, e.revoked] for e in entries]
    h = hashlib.sha256(json.dumps(rows).encode()).digest()
    return KeySet((int.from_bytes(h[:8], "big") >> 1) or 1, any(not e.revoked for e in entries),
                  {e.id: e for e in entries})


def with_revoked_nodes(ks: KeySet, revoked: Mapping[str, float]) -> KeySet:
    """``ks`` carrying the node-token revocations ``revoked``, with a digest covering both."""
    if not revoked:
        return ks
    rows = [ks.digest, sorted([n, float(t)] for n, t in revoked.items())]
    h = hashlib.sha256(json.dumps(rows).encode()).digest()
    return KeySet((int.from_bytes(h[:8], "big") >> 1) or 1, ks.enforced, ks.keys, dict(revoked))


def identify(keys: Mapping[str, KeyEntry], key: str) -> Identity:
    """The identity of ``key``, or Unauthenticated (missing, malformed, unknown, revoked)."""
    parts = (key or "").split("_", 2)
    if len(parts) != 3 or parts[0] != "atoll":
        raise Unauthenticated("missing or malformed API key", hint="pass --api-key or set ATOLL_API_KEY")
    rec = keys.get(parts[1])
    if rec is None or not hmac.compare_digest(rec.secret_sha256, secret_hash(parts[2])):
        raise Unauthenticated("unknown API key")
    if rec.revoked:
        raise Unauthenticated("this API key was revoked")
    return Identity(rec.id, rec.tenant, rec.role)


def may_see(ident: Identity | None, tenant_of_thing: str) -> bool:
    """May ``ident`` (None: keys are not enforced) see a thing owned by ``tenant_of_thing``?"""
    return ident is None or ident.is_admin or ident.tenant == tenant_of_thing


def header(metadata, name: str) -> str:
    """The text value of ``name`` in gRPC metadata (pairs; request or trailing), or ""."""
    for k, v in metadata or ():
        if k == name and isinstance(v, str):
            return v
    return ""


def bearer(metadata) -> str:
    """The credential of an ``authorization: Bearer <credential>`` header, or ""."""
    v = header(metadata, "authorization")
    return v[7:].strip() if v.startswith("Bearer ") else ""
