"""The coordinator's OpenAI-compatible door: ``model`` names a workflow, or ``base:adapter`` (one
adapter on any ready replica that holds it). The HTTP protocol is :mod:`atoll.core.openai_http`
and its backend the one the agents' doors use too (:class:`~atoll.wire.openai_entry.EntryDoorBackend`):
each request becomes one ``Entry.Invoke`` that this coordinator forwards to an agent's entry in
the workflow's source region exactly as its gRPC ``Invoke`` does (``coordinator/entry.py``:
:func:`~atoll.coordinator.entry.admit`, then ``coordinator/forward.py``), with a caller token
for that entry in place of the caller's API key. The entry runs it on the data plane and counts it for the autoscaler; a workflow at
zero is woken here. This module is the door's caller check (:func:`door_identity`,
:func:`door_authorize`) and its list of models; tenants see only their own workflows and adapters.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from atoll.coordinator import auth
from atoll.coordinator.entry import admit, admit_model, is_model
from atoll.coordinator.forward import EntryForwarder
from atoll.core import access
from atoll.core.errors import Unauthenticated, Unavailable
from atoll.core.http_server import HttpLimits
from atoll.core.openai_http import OpenAIDoor
from atoll.wire.dataplane import Invocation
from atoll.wire.openai_entry import EntryDoorBackend


@dataclass(frozen=True)
class Caller:
    """Who calls the door (None: the admin of a coordinator with no key yet, as under gRPC). The
    entry the call goes on to gets a caller token for this identity, never the key itself."""

    identity: auth.Identity | None


def door_identity(keys: auth.KeyRing, authorization: str) -> Caller:
    """Who calls the door: the API key of ``Authorization: Bearer <key>``, checked as gRPC calls
    are (no check while no key exists). The one place the door's caller is decided."""
    if not keys.enabled():
        return Caller(None)
    if not authorization.startswith("Bearer "):
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    return Caller(keys.check(authorization[7:].strip()))


def door_authorize(route: str, caller: Caller) -> None:
    """May ``caller`` call ``route``? The authorization table decides (``atoll.core.access``,
    surface ``http:coordinator``)."""
    ident = caller.identity
    kind = access.ADMIN if ident is None or ident.is_admin else access.USER
    method, path = route.split(" ", 1)
    access.decide_http("coordinator", method, path, kind)


@contextlib.contextmanager
def _as_caller(caller: Caller):
    """Tenant rules (``auth.visible``) apply to ``caller`` inside the block, as under gRPC."""
    token = auth.current.set(caller.identity)
    try:
        yield
    finally:
        auth.current.reset(token)


# The workflow label of door requests refused before they named a workflow or model the caller
# may use: a label per name a caller sent kept a metrics series per name for ever (20,000 requests
# for made-up models grew /metrics 4,688-fold and the coordinator by 120 MiB).
REFUSED = "(refused)"


def door_backend(workflows_fn, forwarder: EntryForwarder, metrics=None) -> EntryDoorBackend:
    """The door's backend on the coordinator. ``workflows_fn()`` returns the leader's
    WorkflowManager (None on a standby: 503). ``metrics`` (``requests``, ``request_seconds``,
    ``ttft`` by workflow) counts the door's requests, which no entry's count sees."""

    def workflows():
        wm = workflows_fn()
        if wm is None:
            raise Unavailable("this coordinator is a standby; use the leader")
        return wm

    async def invoke(inv: Invocation, caller: Caller):
        t0, first, label, outcome = time.monotonic(), 0.0, REFUSED, "error"
        try:
            with _as_caller(caller):
                wm = workflows()
                there = admit_model(wm, inv.workflow) if is_model(inv.workflow) else admit(wm, inv.workflow)
            label = inv.workflow[:64]             # a name the caller may use, not any name it sent
            async for msg in forwarder.invoke(inv, region=there.region, timeout=inv.timeout_seconds,
                                              metadata=(("x-request-id", inv.request_id),),
                                              carried_by=there.carried_by, caller=caller.identity):
                if msg.done:
                    outcome = "ok"
                elif not first:
                    first = time.monotonic()
                yield msg
        finally:
            if metrics is not None:
                metrics.requests.labels(label, outcome).inc()
                metrics.request_seconds.labels(label).observe(time.monotonic() - t0)
                if first:
                    metrics.ttft.labels(label).observe(first - t0)

    async def models(caller: Caller) -> list[dict]:
        out: dict[str, dict] = {}
        with _as_caller(caller):
            for rec in sorted(workflows().records.values(), key=lambda r: r.name):
                if not auth.visible(rec.tenant):
                    continue
                card = {"created": int(rec.created), "owned_by": rec.tenant or "atoll"}
                out[rec.name] = dict(card, id=rec.name)
                for a in rec.assignments:
                    if a.adapter:
                        mid = f"{Path(a.base_model).name}:{a.adapter}"
                        out.setdefault(mid, dict(card, id=mid))
        return list(out.values())

    return EntryDoorBackend(invoke, models)


def make_door(keys: auth.KeyRing, workflows_fn, forwarder: EntryForwarder, *, host: str, port: int, metrics=None,
              limits: HttpLimits = HttpLimits()) -> OpenAIDoor:
    """The coordinator's door on ``host:port`` (not started)."""
    backend = door_backend(workflows_fn, forwarder, metrics)
    return OpenAIDoor(backend, lambda authorization: door_identity(keys, authorization), authorize=door_authorize,
                      host=host, port=port, limits=limits, request_timeout=backend.timeout)
