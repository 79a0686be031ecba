"""The coordinator's OpenAI door counts its requests by workflow: only names the caller may use
become label values. Every name a caller sent used to: 20,000 requests for made-up models kept
360,000 series for ever, grew /metrics 4,688-fold and the coordinator by 120 MiB."""

from __future__ import annotations

import asyncio

import pytest

from atoll.coordinator.metrics import CoordinatorMetrics
from atoll.coordinator.openai_http import REFUSED, Caller, door_backend
from atoll.core.errors import NotFound
from atoll.core.openai_api import GenRequest
from atoll.proto.v1 import control_pb2
from atoll.wire.dataplane import done_message


class _Serving:
    source_region = "eu"


class _Rec:
    name, state, message, tenant, assignments = "wf", "READY", "", "", ()


class _Workflows:
    records = {"wf": _Rec()}

    def get(self, name):
        if name != "wf":
            raise NotFound(f"workflow {name!r} not found")
        return _Rec()

    def serving(self, name):
        return _Serving()


class _Forwarder:
    async def invoke(self, inv, **kw):
        if inv.stream:                        # an entry streams deltas only when asked to
            yield control_pb2.InvokeResponse(text="par", request_id=inv.request_id)
        yield done_message({"text": "partial answer"}, [], inv.request_id, False)


def _labels(metrics) -> set[str]:
    return {s.labels["workflow"] for fam in metrics.registry.collect()
            if fam.name in ("atoll_workflow_requests", "atoll_workflow_request_seconds") for s in fam.samples}


def test_only_names_the_caller_may_use_become_label_values():
    metrics = CoordinatorMetrics()
    backend = door_backend(lambda: _Workflows(), _Forwarder(), metrics)

    async def go():
        for i in range(50):
            for model in (f"made-up-{i}", f"base:made-up-{i}"):
                with pytest.raises(NotFound):
                    await backend.complete(GenRequest(model=model, prompt="q"), Caller(None))
        await backend.complete(GenRequest(model="wf", prompt="q"), Caller(None))
        async for _ in backend.stream(GenRequest(model="wf", prompt="q", stream=True), Caller(None)):
            pass

    asyncio.run(go())
    assert _labels(metrics) == {REFUSED, "wf"}
    got = {(s.labels["workflow"], s.labels["outcome"]): s.value for fam in metrics.registry.collect()
           if fam.name == "atoll_workflow_requests" for s in fam.samples if s.name.endswith("_total")}
    assert got == {(REFUSED, "error"): 100, ("wf", "ok"): 2}
    ttft = [s for fam in metrics.registry.collect() if fam.name == "atoll_workflow_time_to_first_token_seconds"
            for s in fam.samples if s.name.endswith("_count")]
    assert [(s.labels["workflow"], s.value) for s in ttft] == [("wf", 1.0)]   # the streamed one's first delta
