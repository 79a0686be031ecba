"""The one entry path of a workflow request (gRPC Invoke and the OpenAI door alike): counted for
the autoscaler from start to finish however it ends, unknown workflows refused before counting,
a workflow at zero woken with the request waiting; and what each stage of a chat request sends."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from atoll.coordinator.entry import entering
from atoll.coordinator.router import stage_chat
from atoll.core.errors import DeadlineExceeded, FailedPrecondition, NotFound
from atoll.specs.routing import Stage


@dataclass
class Deployment:
    autoscale: object = None


@dataclass
class Rec:
    state: str
    deployment: Deployment = field(default_factory=Deployment)


class FakeWM:
    """The part of WorkflowManager the entry path uses; ``ready_after`` route() calls fail first."""

    def __init__(self, state="READY", ready_after=0):
        self.rec = Rec(state)
        self.log: list[str] = []
        self.ready_after = ready_after

    def get(self, name):
        if name != "wf":
            raise NotFound(f"no workflow named {name!r}")
        return self.rec

    def request_started(self, name):
        self.log.append("started")

    def request_finished(self, name, completion_tokens=None):
        self.log.append(f"finished {completion_tokens}" if completion_tokens else "finished")

    def wake(self, name):
        self.log.append("wake")
        self.rec.state = "DEPLOYING"

    def route(self, name):
        if self.ready_after > 0:
            self.ready_after -= 1
            raise FailedPrecondition("workflow 'wf' is DEPLOYING: loading")
        self.rec.state = "READY"
        return "the-route"


def run(coro):
    return asyncio.run(coro)


def test_a_request_is_counted_until_its_block_ends():
    wm = FakeWM()

    async def go():
        async with entering(wm, "wf", time.monotonic() + 5) as route:
            wm.log.append(f"serving {route}")
    run(go())
    assert wm.log == ["started", "serving the-route", "finished"]


def test_the_tokens_a_request_generated_reach_the_autoscaler():
    wm = FakeWM()

    async def go():
        tokens: dict[str, int] = {}
        async with entering(wm, "wf", time.monotonic() + 5, tokens):
            tokens["gen"] = 7
    run(go())
    assert wm.log == ["started", "finished {'gen': 7}"]


def test_a_failing_request_is_counted_finished_too():
    wm = FakeWM()

    async def go():
        async with entering(wm, "wf", time.monotonic() + 5):
            raise RuntimeError("the replica broke")
    with pytest.raises(RuntimeError):
        run(go())
    assert wm.log == ["started", "finished"]


def test_an_unknown_workflow_is_refused_before_counting():
    wm = FakeWM()

    async def go():
        async with entering(wm, "other", time.monotonic() + 5):
            pass
    with pytest.raises(NotFound):
        run(go())
    assert wm.log == []


def test_a_workflow_at_zero_is_woken_and_the_request_waits():
    wm = FakeWM(state="IDLE", ready_after=3)

    async def go():
        async with entering(wm, "wf", time.monotonic() + 5) as route:
            return route
    assert run(go()) == "the-route"
    assert wm.log == ["started", "wake", "finished"] and wm.ready_after == 0


def test_waking_past_the_deadline_is_a_clear_error():
    wm = FakeWM(state="IDLE", ready_after=10 ** 6)

    async def go():
        async with entering(wm, "wf", time.monotonic() + 0.3):
            pass
    with pytest.raises(DeadlineExceeded, match="scaled to zero"):
        run(go())
    assert wm.log == ["started", "wake", "finished"]


def test_what_each_stage_of_a_request_sends():
    chat = ({"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": "Paris?"})
    entry = Stage("answer", "llm", "Q: {input}", ("users",))
    # an entry stage of a chat request: the chat, its last user message through the stage's template
    assert stage_chat(entry, "Q: Paris?", chat) == [*chat[:3], {"role": "user", "content": "Q: Paris?"}]
    assert chat[-1]["content"] == "Paris?"                               # the request is left alone
    # a later stage (no messages of the request): text, or one user message when the stage is chat
    assert stage_chat(entry, "text", None) is None
    chat_stage = Stage("brief", "llm", "Say briefly: {input}", ("answer",), chat=True)
    assert stage_chat(chat_stage, "Say briefly: x", None) == [{"role": "user", "content": "Say briefly: x"}]
    assert stage_chat(Stage("e", "embedding", "{input}", ("answer",), chat=True), "x", chat) is None
