"""The one way a request enters a workflow through the coordinator (gRPC Invoke and the OpenAI
door alike, ``coordinator/entry.py``): unknown workflows refused, a workflow that does not serve
refused in words, a workflow at zero woken at once (the entry holds the request), the source
region's entries first, and a ``base:adapter`` model entering through the workflow holding it;
and what each stage of a chat request sends (``agent/dataplane/chain.py``: stage_chat)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from atoll.agent.dataplane.chain import stage_chat
from atoll.coordinator.entry import admit, admit_model, is_model
from atoll.core.errors import FailedPrecondition, NotFound
from atoll.specs.routing import Stage


@dataclass
class Deployment:
    autoscale: object = None


@dataclass
class Assigned:
    base_model: str
    adapter: str


@dataclass
class Rec:
    name: str
    state: str
    deployment: Deployment = field(default_factory=Deployment)
    message: str = ""
    tenant: str = ""
    assignments: tuple = ()


@dataclass
class Serving:
    source_region: str


class FakeWM:
    """The part of WorkflowManager the entry path uses."""

    def __init__(self, *recs: Rec):
        self.records = {r.name: r for r in recs}
        self.log: list[str] = []

    def get(self, name):
        if name not in self.records:
            raise NotFound(f"no workflow named {name!r}")
        return self.records[name]

    def wake(self, name):
        self.log.append(f"wake {name}")
        self.records[name].state = "DEPLOYING"

    def serving(self, name):
        return Serving(f"region-of-{name}")


def test_a_serving_workflow_enters_at_its_source_region():
    wm = FakeWM(Rec("wf", "READY"))
    there = admit(wm, "wf")
    assert (there.region, there.carried_by) == ("region-of-wf", "wf") and wm.log == []


def test_an_unknown_workflow_is_refused():
    with pytest.raises(NotFound):
        admit(FakeWM(Rec("wf", "READY")), "other")


def test_a_workflow_that_does_not_serve_is_refused_in_words():
    with pytest.raises(FailedPrecondition, match="'wf' is FAILED: no capacity"):
        admit(FakeWM(Rec("wf", "FAILED", message="no capacity")), "wf")
    with pytest.raises(FailedPrecondition, match="DEPLOYING"):        # deploying, not after a wake
        admit(FakeWM(Rec("wf", "DEPLOYING")), "wf")


def test_a_workflow_at_zero_is_woken_and_the_request_goes_on():
    wm = FakeWM(Rec("wf", "IDLE", Deployment(autoscale=object())))
    assert admit(wm, "wf").region == "region-of-wf" and wm.log == ["wake wf"]
    assert admit(wm, "wf").region == "region-of-wf" and wm.log == ["wake wf"]   # deploying after a wake: once


def test_an_adapter_model_enters_through_the_serving_workflow_holding_it():
    wm = FakeWM(Rec("a-idle", "IDLE", assignments=(Assigned("/m/base", "tenant-a"),)),
                Rec("b-ready", "READY", assignments=(Assigned("/m/base", "tenant-a"),)),
                Rec("c-other", "READY", assignments=(Assigned("/m/other", "tenant-a"),)))
    assert is_model("base:tenant-a") and not is_model("wf") and not is_model("sha256:abc")
    there = admit_model(wm, "base:tenant-a")
    assert (there.region, there.carried_by) == ("region-of-b-ready", "b-ready")
    assert admit_model(wm, "other:tenant-a").carried_by == "c-other"
    with pytest.raises(NotFound, match="adapter 'nope' on base 'base'"):
        admit_model(wm, "base:nope")


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
