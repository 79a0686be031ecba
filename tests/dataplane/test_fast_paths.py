"""The entry path's shortcuts give what the long way gives: a request that sets no settings
reads back as the one shared ``NO_SINK`` (and one that sets some reads back exactly); an answer's
``output_json`` is the encoder's own; a cached labelled series is the one ``labels()`` gives;
a pick with nothing to skip picks what the full search picks, backlog rule included."""

from __future__ import annotations

import json

import pytest

from atoll.agent.dataplane.metrics import DataPlaneMetrics
from atoll.agent.dataplane.table import CompiledRoute, Exclusions, InFlight
from atoll.wire import dataplane as dp

from .helpers import endpoint, route

SINKS = [dp.NO_SINK, dp.Sink(max_tokens=7), dp.Sink(temperature=0.0), dp.Sink(n=1, seed=0),
         dp.Sink(12, 0.3, 0.9, 2 ** 63, ("\n", "END"), 3, True, 5), dp.Sink(no_max_tokens=True),
         dp.Sink(top_p=1.0), dp.Sink(logprobs=True)]


@pytest.mark.parametrize("sink", SINKS)
def test_settings_round_trip_through_invoke_and_forward(sink):
    inv = dp.Invocation("wf", '{"text": "hi"}', True, 5.0, "rid", "llm", sink=sink,
                        messages=({"role": "user", "content": "hi"},), prompt_ids=(1, 2, 3))
    m = dp.invocation_to_pb(inv)
    assert dp.invocation_from_pb(dp.control_pb2.InvokeRequest.FromString(m.SerializeToString())) == inv
    fw = dp.forward_request(workflow="wf", task="gen", replica_id="r", outputs={"a": "x"}, text="hi", stream=False,
                            sink=sink, messages=None, request_id="rid", tenant="t")
    assert dp.forwarded_from_pb(fw).sink == sink
    # nothing set: nothing sent, and the shared value read back (no Sink built per request)
    assert m.HasField("sampling") == (sink != dp.NO_SINK)
    if sink == dp.NO_SINK:
        assert dp.invocation_from_pb(m).sink is dp.NO_SINK and dp.forwarded_from_pb(fw).sink is dp.NO_SINK


def test_a_sender_that_always_packs_sampling_reads_the_same():
    """Settings packed the way senders packed them before (``sampling`` always there, n=1)."""
    m = dp.control_pb2.InvokeRequest(workflow="wf", input_json="{}", sampling=dp.control_pb2.SinkSampling(n=1))
    assert dp.invocation_from_pb(m).sink == dp.NO_SINK
    m = dp.control_pb2.InvokeRequest(workflow="wf", input_json="{}", max_tokens=3, temperature=0.5,
                                     sampling=dp.control_pb2.SinkSampling(n=2, stop=["x"]))
    assert dp.invocation_from_pb(m).sink == dp.Sink(3, 0.5, stop=("x",), n=2)


@pytest.mark.parametrize("output", [{"text": "plain"}, {"text": 'quo"te\\ \n\t é ✓ \u2028 \x00'}, {"text": ""},
                                    {"embedding": [0.5, -1.0]}, {"text": "a", "extra": 1}])
def test_the_answers_output_json_is_the_encoders(output):
    stages = [dp.StageDone("gen", "v", "n", "eu", 0.25, 2, 5, 3, 4)]
    choices = [dp.ChoiceDone(0, "abc", "stop", 4)]
    m = dp.done_message(output, stages, "rid", False, choices)
    assert m.output_json == json.dumps(dict(output))
    ans = dp.answer_from_pb(m)
    assert ans.done and ans.output == output and ans.stages == stages and ans.choices == choices


def test_a_cached_series_is_the_one_labels_gives():
    m = DataPlaneMetrics()
    s = m.series(m.bytes_sent, "wf", "eu", "us")
    assert s is m.bytes_sent.labels("wf", "eu", "us") and m.series(m.bytes_sent, "wf", "eu", "us") is s
    s.inc(5)
    assert m.registry.get_sample_value("atoll_bytes_sent_total",
                                       {"workflow": "wf", "from_region": "eu", "to_region": "us"}) == 5
    assert m.series(m.bytes_sent, "wf", "eu", "eu") is not s


def test_a_pick_with_nothing_to_skip_picks_what_the_full_search_picks():
    eps = [endpoint("a1", region="eu", weight=2.0), endpoint("a2", region="eu", weight=1.0),
           endpoint("b1", region="us", weight=5.0), endpoint("b2", region="us", weight=0.5)]
    flows = {("users", "gen"): [("eu/edge", "eu/datacenter", 3.0), ("eu/edge", "us/datacenter", 1.0)]}
    fast, full = CompiledRoute(route(endpoints=eps, flows=flows)), CompiledRoute(route(endpoints=eps, flows=flows))
    none = Exclusions()
    other = Exclusions()
    other.add("not-a-replica-of-this-route")         # something to check: the full search runs
    held = InFlight()
    for _ in range(9):                                # a1 backed up: the backlog rule moves picks off it
        held.add(eps[0])
    for source in ("eu/edge", "ap/edge"):
        for flight in (None, held):
            got = [fast.pick(fast.stages[0], source, set(), none, flight).replica_id for _ in range(600)]
            want = [full.pick(full.stages[0], source, set(), other, flight).replica_id for _ in range(600)]
            assert got == want
    assert CompiledRoute(route(endpoints=())).pick(CompiledRoute(route(endpoints=())).stages[0], "", set(),
                                                   none) is None
