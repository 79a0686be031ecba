"""The coordinator's OpenAI-compatible door: ``model`` names a workflow (or ``base:adapter``).
Requests are forwarded to an agent's entry (``atoll.coordinator.forward``), which runs them on
the data plane; the caller's key goes along. See :mod:`atoll.core.openai_http` for the protocol."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from atoll.core.errors import InvalidArgument, NotFound, Unavailable
from atoll.core.openai_http import Answer, BaseDoor
from atoll.wire.dataplane import answer_from_pb


class OpenAIDoor(BaseDoor):
    """``model`` names a workflow, or ``base:adapter`` to call one adapter on a replica that
    holds it; requests are forwarded to an agent's entry."""

    def __init__(self, loop: asyncio.AbstractEventLoop, workflows_fn, forwarder, *, host: str = "127.0.0.1",
                 port: int = 0, auth=None, metrics=None):
        """``workflows_fn()`` returns the leader's WorkflowManager (None on a standby: 503)."""
        super().__init__(loop, host=host, port=port, auth=auth, metrics=metrics)
        self._workflows_fn, self.forwarder = workflows_fn, forwarder

    @property
    def workflows(self):
        wm = self._workflows_fn()
        if wm is None:
            raise Unavailable("this coordinator is a standby; use the leader")
        return wm

    async def _models(self, tenant):
        out = []
        for rec in sorted(self.workflows.records.values(), key=lambda r: r.name):
            if tenant is None or rec.tenant == tenant:
                out.append({"id": rec.name, "object": "model", "created": int(rec.created),
                            "owned_by": rec.tenant or "atoll"})
                for a in rec.assignments:
                    if a.adapter:
                        mid = f"{Path(a.base_model).name}:{a.adapter}"
                        if not any(m["id"] == mid for m in out):
                            out.append({"id": mid, "object": "model", "created": int(rec.created),
                                        "owned_by": rec.tenant or "atoll"})
        return out

    async def _route(self, model: str, tenant, max_tokens, temperature):
        """Check that ``model`` exists for the caller; returns the region whose entries take it and
        the workflow whose placement rules choose those entries."""
        wm = self.workflows
        if ":" in model and not model.startswith("sha256:"):
            base, adapter = model.split(":", 1)
            for rec in wm.records.values():
                if (tenant is None or rec.tenant == tenant) and rec.state in ("READY", "DEGRADED") and any(
                        a.adapter == adapter and (Path(a.base_model).name == base or a.base_model == base)
                        for a in rec.assignments):
                    return wm.serving(rec.name).source_region, rec.name
            raise NotFound(f"no ready replica serves adapter {adapter!r} on base {base!r}",
                           hint="GET /v1/models lists what you can call")
        rec = wm.records.get(model)
        if rec is None or (tenant is not None and rec.tenant != tenant):
            raise NotFound(f"the model {model!r} does not exist", hint="GET /v1/models lists workflows")
        sink = next((s for s in wm.serving(model).stages if s.task == wm.serving(model).sink), None)
        if sink is not None and sink.kind != "llm":
            raise InvalidArgument(f"workflow {model!r} ends in an {sink.kind} stage, not text generation")
        if rec.state == "IDLE":
            wm.wake(model)
        return wm.serving(model).source_region, model

    async def invoke(self, model, tenant, prompt, max_tokens, temperature, on_delta=None, timeout=60.0,
                     api_key: str = ""):
        region, carrier = await self._route(model, tenant, max_tokens, temperature)
        t0 = time.monotonic()
        outcome = "error"
        try:
            out, stages = {}, []
            async for msg in self.forwarder.invoke(
                    region=region, workflow=model, input_json=json.dumps({"text": prompt}), stream=on_delta is not None,
                    timeout=timeout, request_id="", max_tokens=max_tokens or 0, temperature=temperature,
                    metadata=(("authorization", f"Bearer {api_key}"),) if api_key else (), carried_by=carrier):
                text, done, output, stages = answer_from_pb(msg)
                if done:
                    out = output
                elif text and on_delta is not None:
                    await on_delta(text)
            outcome = "ok"
            return Answer(out, stages)
        finally:
            if self.metrics is not None:
                self.metrics.forwarded.labels(model[:64], outcome).inc()
                self.metrics.forward_seconds.labels(model[:64]).observe(time.monotonic() - t0)

