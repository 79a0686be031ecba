"""The coordinator's signing key and the capability tokens it issues.

- **Signing key**: an Ed25519 key pair created on the first start and kept (PEM) in the store's
  meta table under ``signing_key``, so the coordinators of a highly available deployment share
  it (``Store.init_meta``: the first writer wins, every other coordinator reads that one). Its
  public half goes to every agent in ``RegisterResponse``; agents pin it.
- **Coordinator tokens** (``sub: coordinator``, ``aud:`` one node, scopes ``worker.infer`` and
  ``worker.manage``) ride on every call the coordinator makes to a node's Worker; one per node,
  reused until half its life is gone.
- **Node tokens** (``sub: node:<id>``, ``aud: *``, scopes ``worker.infer`` and ``store.fetch``,
  the node's ``trusted`` and ``tier`` as the registry holds them, and ``cnf``, its node key: every
  presentation comes with the key's signature for the callee, ``credentials.make_call_proof``) go to each node down its
  heartbeat stream, first thing on every stream and again before they expire, and at its next
  heartbeat after the operator trusts or untrusts it (an untrust also revokes those issued
  before it). The node called refuses a caller whose token does not let it carry a
  ``trusted_only`` workflow's data (``agent/carry.py``). The
  node presents its token to fetch the blobs its assignments reference, and (the data plane) to
  call other nodes' Workers. Revocations (``Registry.revoked_nodes``) travel to agents with the
  key set.
- **Caller tokens** (``sub: key:<API key id>``, ``aud:`` one node, scope ``entry.invoke``, the
  key's tenant and role) stand for an API key's holder at one agent's entry: the forwarded
  ``Invoke`` presents one instead of the caller's key, and ``ListEntries`` hands the caller one
  per entry it lists. One per (key, role, node), reused until half its life is gone; the entry
  also refuses it once the key set it holds says the key was revoked.

The token format and the signatures are :mod:`atoll.core.credentials`'; this module only
keeps the key and the clock.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

from atoll.core import credentials as cred

META_KEY = "signing_key"
COORDINATOR_TOKEN_TTL = 300.0
NODE_TOKEN_TTL = 600.0
CALLER_TOKEN_TTL = 600.0
COORDINATOR_SCOPES = (cred.SCOPE_INFER, cred.SCOPE_MANAGE)
NODE_SCOPES = (cred.SCOPE_INFER, cred.SCOPE_FETCH)


def load_signing_key(store) -> cred.PrivateKey:
    """The fleet's signing key from the store, created on the very first start."""
    fresh = cred.private_to_pem(cred.new_private_key()).decode()
    return cred.private_from_pem(store.init_meta(META_KEY, fresh).encode(), "the coordinator's signing key")


class Issuer:
    """Signs and verifies this fleet's capability tokens (``clock``: wall seconds)."""

    def __init__(self, key: cred.PrivateKey, *, clock: Callable[[], float] = time.time,
                 node_ttl: float = NODE_TOKEN_TTL, coordinator_ttl: float = COORDINATOR_TOKEN_TTL):
        self._key = key
        self.public = key.public_key()
        self.public_raw = cred.public_bytes(key)
        self.clock = clock
        self.node_ttl, self.coordinator_ttl = node_ttl, coordinator_ttl
        self._for_node: dict[str, tuple[str, float]] = {}     # node id -> (coordinator token, expiry)
        self._for_caller: dict[tuple[str, str, str, str], tuple[str, float]] = {}   # (key, tenant, role, node)
        self.caller_ttl = CALLER_TOKEN_TTL

    @property
    def fingerprint(self) -> str:
        return cred.fingerprint(self.public_raw)

    def coordinator_token(self, node_id: str) -> str:
        """The token the coordinator presents to ``node_id``'s Worker (cached for half its life)."""
        now = self.clock()
        hit = self._for_node.get(node_id)
        if hit is None or hit[1] - now < self.coordinator_ttl / 2:
            tok = cred.sign_token(self._key, sub=cred.COORDINATOR, aud=node_id, scopes=COORDINATOR_SCOPES,
                                  now=now, ttl=self.coordinator_ttl)
            hit = self._for_node[node_id] = (tok, now + self.coordinator_ttl)
        return hit[0]

    def caller_token(self, key_id: str, tenant: str, role: str, node_id: str) -> tuple[str, float]:
        """A token for the holder of API key ``key_id`` (``tenant``, ``role``) at ``node_id``'s
        entry only, and its expiry (unix seconds); cached for half its life."""
        now = self.clock()
        k = (key_id, tenant, role, node_id)
        hit = self._for_caller.get(k)
        if hit is None or hit[1] - now < self.caller_ttl / 2:
            if len(self._for_caller) >= 100_000:
                self._for_caller = {c: v for c, v in self._for_caller.items() if v[1] > now}
                if len(self._for_caller) >= 100_000:
                    self._for_caller.clear()
            tok = cred.sign_token(self._key, sub=cred.key_subject(key_id), aud=node_id, scopes=(cred.SCOPE_ENTRY,),
                                  now=now, ttl=self.caller_ttl, tenant=tenant, role=role)
            hit = self._for_caller[k] = (tok, now + self.caller_ttl)
        return hit

    def node_token(self, node_id: str, *, trusted: bool, tier: str, holder: str) -> tuple[str, float]:
        """A fresh token for ``node_id`` (``trusted``, ``tier``: the node's, as the registry
        holds them; ``holder``: its node key, base64url, which must sign every presentation) and
        its expiry (unix seconds)."""
        now = self.clock()
        tok = cred.sign_token(self._key, sub=cred.node_subject(node_id), aud=cred.ANY_NODE, scopes=NODE_SCOPES,
                              now=now, ttl=self.node_ttl, trusted=trusted, tier=tier, holder=holder)
        return tok, now + self.node_ttl

    def needs_refresh(self, expires: float) -> bool:
        """Should a node whose token expires at ``expires`` get a new one now?"""
        return expires - self.clock() < self.node_ttl / 2

    def verify(self, token: str, scope: str | None = None, revoked: Mapping[str, float] | None = None) -> cred.Claims:
        """The claims of a token this fleet issued (Unauthenticated / PermissionDenied otherwise;
        ``revoked``: the node-token revocations, see ``Registry.revoked_nodes``)."""
        return cred.verify_token(self.public, token, now=self.clock(), scope=scope, revoked=revoked)
