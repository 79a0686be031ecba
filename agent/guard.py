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
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import grpc

from atoll.core import access
from atoll.core import credentials as cred
from atoll.core.errors import Unavailable
from atoll.core.rpc import bearer, guarded


class WorkerGuard(grpc.aio.ServerInterceptor):
    """``identity()`` returns (the pinned coordinator key or None, this node's id or "");
    ``revoked()`` the node-token revocations the coordinator last sent (with the key set)."""

    def __init__(self, identity: Callable[[], tuple[cred.PublicKey | None, str]],
                 clock: Callable[[], float] = time.time,
                 revoked: Callable[[], Mapping[str, float]] = dict):
        self.identity, self.clock, self.revoked = identity, clock, revoked

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or access.open_to_anyone(method):
            return handler
        token = bearer(details.invocation_metadata)

        def admit():
            kind, scopes = self.caller(method, token)
            access.decide(method, kind, scopes)
            return None
        return guarded(handler, admit)

    def caller(self, method: str, token: str) -> tuple[str, tuple[str, ...]]:
        """(kind of caller, token scopes). An API key or anything else that is not one of the
        fleet's tokens makes the caller anonymous here: the Worker takes no API keys."""
        if not cred.is_token(token):
            return access.ANONYMOUS, ()
        key, node_id = self.identity()
        if key is None or not node_id:
            raise Unavailable("this node has not registered with the coordinator yet", hint="retry shortly")
        claims = cred.verify_token(key, token, now=self.clock(), audience=node_id, revoked=self.revoked())
        return (access.COORDINATOR if claims.is_coordinator else access.NODE), claims.scopes
