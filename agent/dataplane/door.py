"""The OpenAI-compatible HTTP door on an agent: the same data plane as ``Entry.Invoke``.

``model`` names a workflow the caller may see, ``base:adapter`` (one adapter on any ready replica
holding it) or ``base`` (the bare base model). ``Authorization: Bearer <api key>`` is checked
against the key set the coordinator distributes (:class:`~.entry.Keys`), and tenants are kept
apart exactly as at the coordinator's door: a missing or bad key is 401 (``invalid_api_key``),
another tenant's workflow or adapter 404. See :mod:`atoll.core.openai_http` for the protocol.
"""

from __future__ import annotations

import time

from atoll.agent.dataplane.chain import Request
from atoll.agent.dataplane.entry import EntryService
from atoll.agent.dataplane.trace import start_span
from atoll.core.apikeys import Identity
from atoll.core.errors import InvalidArgument
from atoll.core.openai_http import Answer, BaseDoor
from atoll.wire.dataplane import answer_from_pb


def _ident(tenant) -> Identity | None:
    """The door hands its backend the caller's tenant (None: an admin key, or keys not enforced)."""
    return None if tenant is None else Identity("", tenant, "user")


class EntryDoor(BaseDoor):
    def __init__(self, loop, entry: EntryService, *, host: str = "127.0.0.1", port: int = 0):
        super().__init__(loop, host=host, port=port, auth=entry.keys, metrics=None)
        self.entry = entry

    async def _models(self, tenant):
        return [{"id": m, "object": "model", "created": 0, "owned_by": "atoll"}
                for m in self.entry.resolver.models(_ident(tenant))]

    async def _route(self, model, tenant, max_tokens, temperature):
        cr = self.entry.resolver.resolve(model, _ident(tenant))
        sink = cr.route.stages[-1]
        if sink.kind != "llm":
            raise InvalidArgument(f"workflow {model!r} ends in an {sink.kind} stage, not text generation")
        return cr

    async def invoke(self, model, tenant, prompt, max_tokens, temperature, on_delta=None, timeout=60.0,
                     api_key: str = ""):
        cr = await self._route(model, tenant, max_tokens, temperature)
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidArgument("the prompt is empty")
        req = Request(cr.route.workflow, prompt, time.monotonic() + timeout, start_span((), "entry-http"),
                      on_delta is not None, max_tokens or 0, temperature, tenant or "")
        out, stages = {}, []
        async for msg in self.entry.serve(cr, req, _ident(tenant)):
            text, done, output, runs = answer_from_pb(msg)
            if done:
                out, stages = output, runs
            elif text and on_delta is not None:
                await on_delta(text)
        return Answer(out, stages)

