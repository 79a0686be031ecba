"""The OpenAI-compatible HTTP door on an agent: the same data plane as ``Entry.Invoke``.

The HTTP protocol is :mod:`atoll.core.openai_http` (the door the coordinator mounts too), and
its backend is the one both doors share, :class:`~atoll.wire.openai_entry.EntryDoorBackend`:
each request is one invocation of this agent's entry (:meth:`~.entry.EntryService.invoke`),
in process. This module is the agent's caller check. ``model`` names a workflow the caller may
see, ``base:adapter`` (one adapter on any ready replica holding it) or ``base`` (the bare base
model). ``Authorization: Bearer <api key>`` is checked against the key set the coordinator
distributes (:class:`~.entry.Keys`), the route against the authorization table (surface
``http:agent``), and tenants are kept apart exactly as at the coordinator's door: a missing or
bad key is 401 (``invalid_api_key``), another tenant's workflow or adapter 404.
"""

from __future__ import annotations

from atoll.agent.dataplane.entry import EntryService, Keys
from atoll.agent.dataplane.trace import start_span
from atoll.core import access
from atoll.core.apikeys import Identity
from atoll.core.errors import Unauthenticated
from atoll.core.http_server import HttpLimits
from atoll.core.openai_http import OpenAIDoor
from atoll.wire.dataplane import Invocation
from atoll.wire.openai_entry import EntryDoorBackend


def door_identity(keys: Keys, authorization: str) -> Identity | None:
    """Who calls the agent's door: None while the fleet enforces no key (or for an admin key, which
    sees every tenant), else the key's identity; Unauthenticated for a missing or bad key."""
    if not keys.enabled():
        return None
    if not authorization.startswith("Bearer "):
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    ident = keys.check(authorization[7:].strip())
    return None if ident.is_admin else ident


def door_authorize(route: str, caller: Identity | None) -> None:
    """The authorization table decides (``atoll.core.access``, surface ``http:agent``)."""
    method, path = route.split(" ", 1)
    access.decide_http("agent", method, path, access.ADMIN if caller is None else access.USER)


def entry_backend(entry: EntryService) -> EntryDoorBackend:
    """The door's backend on an agent: every request runs through this agent's entry."""

    def invoke(inv: Invocation, caller: Identity | None):
        return entry.invoke(inv, caller, start_span((), "entry-http", inv.request_id))

    async def models(caller: Identity | None) -> list[dict]:
        return [{"id": m, "created": 0, "owned_by": "atoll"} for m in entry.resolver.models(caller)]

    return EntryDoorBackend(invoke, models)


def make_entry_door(entry: EntryService, *, host: str, port: int, limits: HttpLimits = HttpLimits()) -> OpenAIDoor:
    """The agent's door on ``host:port`` (not started)."""
    backend = entry_backend(entry)
    return OpenAIDoor(backend, lambda authorization: door_identity(entry.keys, authorization),
                      authorize=door_authorize, host=host, port=port, limits=limits,
                      request_timeout=backend.timeout)
