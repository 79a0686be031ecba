"""The router's choice of a replica inside a location: smooth weighted round-robin, unless the
replica it proposes is backlogged with this router's requests (coordinator/router.py: Router.pick)."""

import asyncio
import time
from collections import Counter

from atoll.coordinator.router import Router
from atoll.specs.routing import Endpoint, Route, Stage


def ep(rid: str, weight: float) -> Endpoint:
    return Endpoint(replica_id=rid, task="gen", variant="v", node_id=rid, node_name=rid, region="r",
                    address="127.0.0.1:1", weight=weight, adapter="", location="r/renter")


def picks(router: Router, eps: list[Endpoint], n: int, hold: bool = False) -> list[str]:
    """``n`` picks; with ``hold`` each pick's call stays in flight (as concurrent requests do)."""
    out = []
    for _ in range(n):
        rid = router.pick(eps, set(), workflow="wf", task="gen").replica_id
        if hold:
            router.in_flight[rid] = router.in_flight.get(rid, 0) + 1
        out.append(rid)
    return out


def test_without_backlog_the_shares_follow_the_weights_exactly():
    eps = [ep("a", 6.0), ep("b", 3.0), ep("c", 1.0)]
    router = Router(workers=object())
    assert Counter(picks(router, eps, 100)) == {"a": 60, "b": 30, "c": 10}
    router.in_flight = {"a": 6, "b": 3, "c": 1}          # loaded in proportion: no replica is backlogged
    assert Counter(picks(router, eps, 100)) == {"a": 60, "b": 30, "c": 10}
    # busier than its share but under twice it plus the slack (a closed loop of clients, a replica a
    # little slower than planned): the plan's shares still hold
    router.in_flight = {"a": 12, "b": 1, "c": 1}         # share 6/10 of 15 = 9; 13 <= 2 x 9 + 4
    assert Counter(picks(router, eps, 100)) == {"a": 60, "b": 30, "c": 10}


def test_a_backlogged_replica_is_passed_over_for_the_least_loaded():
    eps = [ep("survivor", 6.0), ep("new-1", 6.0), ep("new-2", 6.0)]
    router = Router(workers=object())
    router.in_flight = {"survivor": 30, "new-1": 2}       # the survivor holds the storm's queue
    got = picks(router, eps, 8, hold=True)              # the survivor holds > 2 x its share + 4 throughout
    assert "survivor" not in got and Counter(got) == {"new-2": 5, "new-1": 3}    # they even out
    assert router.in_flight == {"survivor": 30, "new-1": 5, "new-2": 5}
    got = picks(router, eps, 12, hold=True)             # once the others hold their part, it serves again
    assert "survivor" in got
    # one request more than the least loaded replica would hold after this one is not a backlog
    router.in_flight = {"survivor": 1}
    assert Counter(picks(router, eps, 30)) == {"survivor": 10, "new-1": 10, "new-2": 10}


def test_calls_in_flight_are_counted_per_replica_and_released():
    class Workers:
        def __init__(self):
            self.seen = []

        async def generate(self, address, prompt, **kw):
            self.seen.append(dict(router.in_flight))

            class R:                    # one Worker delta: choice 0, finished
                text, prompt_tokens, completion_tokens = "ok", 1, 1
                index, logprobs, finished, finish_reason = 0, [], True, "stop"
            yield R()

    router = Router(workers=Workers())
    stage = Stage(task="gen", kind="llm", prompt="{input}", parents=(), max_tokens=4, temperature=0.0)
    route = Route("wf", (stage,), {"gen": (ep("a", 1.0),)}, "r", "gen", "r/renter", {})
    res = asyncio.run(router.invoke(route, "hi", deadline=time.monotonic() + 5))
    assert res.output == {"text": "ok"} and router.workers.seen == [{"a": 1}] and router.in_flight == {}
