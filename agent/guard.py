"""The door of an agent's gRPC server: who may call its Worker.

:class:`WorkerGuard` reads the capability token a caller presents (``authorization: Bearer
atc1...``), verifies it with the coordinator key this agent pinned at registration, for this
node (its audience, or ``*``), and asks the authorization table (``atoll.core.access``) whether
that kind of caller — the coordinator, or a node — with those scopes may call the method:
``LoadAdapter``/``UnloadAdapter``/``ListAdapters`` only the coordinator, ``Generate``/``Embed``
the coordinator or a node token; a node token the coordinator revoked (the revocations travel
with the key set it pushes) is refused. Health and reflection stay open. Before the agent has
registered (no pinned key, no node id) every guarded call is UNAVAILABLE: the router tries
another replica.

The interceptor cannot read the request, so what a call asks for (which adapter, which
workflow) is checked by the servicer. The guard leaves the verified claims where the servicer
can read them for the length of the call: :meth:`WorkerGuard.claims`, a context variable of the
guard's own, set inside the guarded call (each RPC runs in its own task) and reset when it
ends. ``agent/carry.py`` reads them to keep ``trusted_only`` workflows' data from callers the
operator does not trust.
"""

from __future__ import annotations

import contextvars
import time
from typing import Callable, Mapping

import grpc

from atoll.core import access
from atoll.core import credentials as cred
from atoll.core.errors import AtollError, Unauthenticated, Unavailable
from atoll.core.apikeys import header
from atoll.core.rpc import bearer, refused, serving_as


class WorkerGuard(grpc.aio.ServerInterceptor):
    """``identity()`` returns (the pinned coordinator key or None, this node's id or "");
    ``revoked()`` the node-token revocations the coordinator last sent (with the key set)."""

    def __init__(self, identity: Callable[[], tuple[cred.PublicKey | None, str]],
                 clock: Callable[[], float] = time.time,
                 revoked: Callable[[], Mapping[str, float]] = dict):
        self.identity, self.clock, self.revoked = identity, clock, revoked
        self._claims: contextvars.ContextVar[cred.Claims | None] = contextvars.ContextVar("caller_claims",
                                                                                           default=None)

    def claims(self) -> cred.Claims | None:
        """The verified token of the caller of the call under way (None outside a guarded call)."""
        return self._claims.get()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or access.open_to_anyone(method):
            return handler
        token = bearer(details.invocation_metadata)
        proof = header(details.invocation_metadata, cred.PROOF_METADATA)

        try:            # here, from the headers: a refused call's request is never read (rpc.refused)
            claims = self.caller(token, proof)
            kind = access.ANONYMOUS if claims is None else access.COORDINATOR if claims.is_coordinator else access.NODE
            access.decide(method, kind, claims.scopes if claims is not None else ())
        except AtollError as exc:
            return refused(handler, exc)

        return serving_as(handler, self._claims, claims)

    def caller(self, token: str, proof: str = "") -> cred.Claims | None:
        """The claims of the fleet token presented, or None (anonymous). An API key or anything
        else that is not one of the fleet's tokens makes the caller anonymous here: the Worker
        takes no API keys. A node token counts only with its holder's ``proof`` for this node
        (``credentials.check_call_proof``): one captured by a host it was presented to is
        worth nothing here."""
        if not cred.is_token(token):
            return None
        key, node_id = self.identity()
        if key is None or not node_id:
            raise Unavailable("this node has not registered with the coordinator yet", hint="retry shortly")
        claims = cred.verify_token(key, token, now=self.clock(), audience=node_id, revoked=self.revoked())
        if claims.is_caller:
            raise Unauthenticated("a caller token is taken only by this node's entry, not its Worker")
        if not claims.is_coordinator:
            cred.check_call_proof(claims, proof, node_id, self.clock())
        return claims
