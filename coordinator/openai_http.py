"""The coordinator's OpenAI-compatible door: ``model`` names a workflow (or ``base:adapter``).
See :mod:`atoll.core.openai_http` for the protocol."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from atoll.core.errors import InvalidArgument, NotFound, Unavailable
from atoll.core.openai_http import BaseDoor
from atoll.specs.routing import Route, Stage, with_sink


class OpenAIDoor(BaseDoor):
    """``model`` names a workflow, or ``base:adapter`` to call one adapter on a replica that
    holds it; requests run through the coordinator's router."""

    def __init__(self, loop: asyncio.AbstractEventLoop, workflows_fn, router, *, host: str = "127.0.0.1",
                 port: int = 0, auth=None, metrics=None):
        """``workflows_fn()`` returns the leader's WorkflowManager (None on a standby: 503)."""
        super().__init__(loop, host=host, port=port, auth=auth, metrics=metrics)
        self._workflows_fn, self.router = workflows_fn, router

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
        if ":" in model and not model.startswith("sha256:"):
            base, adapter = model.split(":", 1)
            for rec in self.workflows.records.values():
                if tenant is not None and rec.tenant != tenant:
                    continue
                if rec.state not in ("READY", "DEGRADED"):
                    continue
                route = self.workflows.route(rec.name)
                for task, eps in route.endpoints.items():
                    hits = tuple(e for e in eps if e.adapter == adapter
                                 and (Path(e.base_model).name == base or e.base_model == base))
                    if hits:
                        stage = Stage(task=task, kind="llm", prompt="{input}", parents=(),
                                      max_tokens=max_tokens or 32, temperature=temperature or 0.0)
                        return Route(f"{base}:{adapter}", (stage,), {task: hits}, hits[0].region, task,
                                     hits[0].location, {})
            raise NotFound(f"no ready replica serves adapter {adapter!r} on base {base!r}",
                           hint="GET /v1/models lists what you can call")
        rec = self.workflows.records.get(model)
        if rec is None or (tenant is not None and rec.tenant != tenant):
            raise NotFound(f"the model {model!r} does not exist", hint="GET /v1/models lists workflows")
        route = self.workflows.route(model)
        sink = next(s for s in route.stages if s.task == route.sink)
        if sink.kind != "llm":
            raise InvalidArgument(f"workflow {model!r} ends in an {sink.kind} stage, not text generation")
        changes = {}
        if max_tokens:
            changes["max_tokens"] = max_tokens
        if temperature is not None:
            changes["temperature"] = temperature
        return with_sink(route, **changes) if changes else route

    async def invoke(self, model, tenant, prompt, max_tokens, temperature, on_delta=None, timeout=60.0):
        route = await self._route(model, tenant, max_tokens, temperature)
        t0 = time.monotonic()
        outcome = "error"
        try:
            res = await self.router.invoke(route, prompt, deadline=time.monotonic() + timeout, on_delta=on_delta)
            outcome = "ok"
            return res
        finally:
            if self.metrics is not None:
                self.metrics.requests.labels(model[:64], outcome).inc()
                self.metrics.request_seconds.labels(model[:64]).observe(time.monotonic() - t0)


