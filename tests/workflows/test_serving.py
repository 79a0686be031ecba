"""Workflows end to end on real processes: submit -> READY -> invoke, routing shares, bytes per
region pair, failures (agent killed, coordinator restarted) and bad input."""

from __future__ import annotations

import concurrent.futures as cf
import re
from collections import Counter
from types import MappingProxyType

import pytest

from atoll.agent.dataplane.table import CYCLE_MIN, CompiledRoute, Exclusions, InFlight, prefer_local
from atoll.core.errors import FailedPrecondition, InvalidArgument, NotFound, SpecError
from atoll.specs.routing import Endpoint, Route, Stage

from .conftest import wait_until

pytestmark = pytest.mark.integration


def one_stage(h, name: str, rate: float, max_tokens: int = 1) -> dict:
    return {
        "name": name,
        "sources": [{"name": "users", "rate": rate, "region": "us-east", "tier": "datacenter"}],
        "tasks": [{"name": "gen", "max_tokens": max_tokens, "prompt": "Q: {input}\nA:", "variants": [
            {"name": "base", "model": str(h.models / "base"), "accuracy": 0.8, "memory_gb": 1,
             "throughput": {"a100": 10, "rtx4090": 4, "orin": 1}}]}],
        "edges": [{"from": "users", "to": "gen", "size_kb": 0.05}],
        "slo": {"min_accuracy": 0.5},
    }


REQUEST_TEXT = "request {:04d}"      # every request's input the same size (bytes per region pair)


def run_many(c, name: str, n: int, workers: int = 12, on_done=None):
    ok, errors = [], []

    def one(i):
        return c.invoke(name, {"text": REQUEST_TEXT.format(i)}, timeout=60)

    with cf.ThreadPoolExecutor(workers) as ex:
        futs = [ex.submit(one, i) for i in range(n)]
        for k, f in enumerate(cf.as_completed(futs)):
            try:
                ok.append(f.result())
            except Exception as exc:  # noqa: BLE001 - every failure must be a clear error
                errors.append(exc)
            if on_done:
                on_done(k)
    return ok, errors


def bytes_by_pair(metrics: str, workflow: str) -> dict[tuple[str, str], float]:
    out = {}
    for m in re.finditer(r'atoll_bytes_sent_total\{from_region="([^"]+)",to_region="([^"]+)",workflow="([^"]+)"\} (\S+)',
                         metrics):
        if m.group(3) == workflow:
            out[(m.group(1), m.group(2))] = out.get((m.group(1), m.group(2)), 0.0) + float(m.group(4))
    return out


def sample_sum(metrics: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (every agent's, joined)."""
    out = 0.0
    for m in re.finditer(r'^' + re.escape(name) + r'\{([^}]*)\} (\S+)$', metrics, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(got.get(k) == v for k, v in labels.items()):
            out += float(m.group(2))
    return out


def unserved_picks(before: str, after: str, workflow: str) -> float:
    """Picks between two scrapes of every agent's metrics that served no request: retried calls
    and hedges, sent or not (each took its turn in the plan's cycles)."""
    return sum(sample_sum(m, name, workflow=workflow, **lab) * sign for m, sign in ((after, 1), (before, -1))
               for name, lab in (("atoll_stage_retries_total", {}), ("atoll_stage_hedges_total", {"outcome": "sent"}),
                                 ("atoll_stage_hedges_total", {"outcome": "unsent"})))


def entries_taking(before: dict[str, str], after: dict[str, str], workflow: str) -> dict[str, float]:
    """The requests each agent's entry took between two scrapes (by node name)."""
    return {a: sample_sum(m, "atoll_workflow_requests_total", workflow=workflow)
            - sample_sum(before.get(a, ""), "atoll_workflow_requests_total", workflow=workflow)
            for a, m in after.items()}


def split_slack(n: int, extra: float, entries: int, locations: int) -> float:
    """How far from the plan's share ``n`` requests' count in a location may be: each entry's
    picks run along its location cycle (agent/dataplane/table.py: cycle) from wherever it stood,
    so in any run of picks a location's count is its cycle share's within 1, plus up to 1 per
    location for where the run's ends cut; its cycle share is its weight within 1 in CYCLE_MIN
    picks (rounding); and a pick that served no request (``extra``: a retry's, a hedge's, sent
    or not) moves one at most. Nothing here depends on timing: the agents count those picks."""
    return entries * (1 + locations) + (n + extra) / CYCLE_MIN + extra


def deployed_route(st, task: str, source: str) -> tuple[Route, str]:
    """The route the coordinator publishes for a one-stage workflow (coordinator/routing.py:
    build_route), from its status: the ready replicas with their weights and locations, and the
    plan's flows; and the location its requests come from."""
    eps = tuple(Endpoint(replica_id=r["replica_id"], task=task, variant=r["variant"], adapter="", weight=r["weight"],
                         node_id=r["node_id"], node_name=r["node"], address=r["node"], region=r["region"],
                         tier=r["tier"], location=f"{r['region']}/{r['tier']}") for r in st.replicas)
    flows = tuple((f["from_location"], f["to_location"], float(f["rate"])) for f in st.plan["routes"]
                  if f["src"] == source and f["dst"] == task)
    froms = {a for a, _, _ in flows}
    assert len(froms) == 1, flows
    stage = Stage(task, "llm", "{input}", (source,))
    return Route(st.name, (stage,), MappingProxyType({task: eps}), "", task, "",
                 MappingProxyType({(source, task): flows})), froms.pop()


def test_submit_route_shares_and_bytes(harness):
    """The plan's split, in two parts that do not depend on how fast anything runs:

    - the routing decision (agent/dataplane/table.py) on the route deployed for this plan, with
      no load signal: every replica's and every location's share of the picks is its weight's
      within the cycles' rounding; under a load signal set by the test (a queue reported by one
      replica, a replica on the entry's own host), picks move between replicas of a location and
      never between locations;
    - 1000 requests through the real fleet: every location's share of the answers is the plan's
      within the cycles' rounding at each entry, give or take one request per pick that did not
      serve one (a retried call, a hedge: the agents count both). Which replica inside a location
      serves is load-aware by design (two choices on reported loads, the entry's own host first),
      so it follows the machine's speed and is not held to the weights here.
    """
    h = harness
    with h.client() as c:
        st = c.submit(str(h.write("wf-route", one_stage(h, "wf-route", 22))))
        assert st.plan["status"] in ("optimal", "feasible") and st.plan["total_cost_per_hour"] > 0
        c.wait_ready("wf-route", 90)      # READY: every stage has a ready replica; wait for all of them
        st = wait_until(lambda: (lambda s: s if all(r["state"] == "ready" for r in s.replicas) else None)(
            c.status("wf-route")), 60, "every replica ready")
        assert {w["name"] for w in c.workflows()} >= {"wf-route"}
        weights = {r["replica_id"]: r["weight"] for r in st.replicas}
        assert len(weights) >= 3 and abs(sum(weights.values()) - 1) < 1e-6
        by_node = {r["node"]: r["weight"] for r in st.replicas}
        where = {r["node"]: f"{r['region']}/{r['tier']}" for r in st.replicas}
        want_loc = {loc: sum(w for n, w in by_node.items() if where[n] == loc) for loc in set(where.values())}

        # 1. the decision, on the deployed route, with the load signal under the test's control
        route, source_loc = deployed_route(st, "gen", "users")
        n = 4 * CYCLE_MIN
        cr = CompiledRoute(route)                                   # cycles from their head: deterministic
        calm = [cr.pick(cr.stages[0], source_loc, set(), Exclusions(), InFlight()) for _ in range(n)]
        got = Counter(e.node_name for e in calm)
        for node, w in by_node.items():          # rounding: 1 pick in CYCLE_MIN per cycle, location and replica
            assert abs(got[node] - w * n) <= 2 + 2 * n / CYCLE_MIN, (node, got, by_node)
        crowded = max(want_loc, key=lambda loc: sum(where[x] == loc for x in where))
        members = sorted(x for x in where if where[x] == crowded)
        assert len(members) >= 2, where
        busy = min(members, key=lambda x: by_node[x])             # at most half its location's weight
        clock = [1000.0]
        loaded = InFlight(clock=lambda: clock[0])                   # a report that never goes stale
        loaded.report(next(r["replica_id"] for r in st.replicas if r["node"] == busy), 50)
        cr = CompiledRoute(route)
        shed = [cr.pick(cr.stages[0], source_loc, set(), Exclusions(), loaded) for _ in range(n)]
        assert [e.location for e in shed] == [e.location for e in calm]        # the locations, pick by pick
        moved = Counter(e.node_name for e in shed)
        # it keeps only the picks whose second draw is itself too: its share of its location's weight
        q = by_node[busy] / want_loc[crowded]
        assert moved[busy] <= (q + 0.1) * got[busy], (busy, moved, got)       # shed inside its location
        home = next(e for e in calm if e.node_name == members[0])             # a replica on the entry's host
        local = [prefer_local(e, home, 0, InFlight()) for e in calm]
        assert [e.location for e in local] == [e.location for e in calm]
        assert all(e.node_name == members[0] for e in local if e.location == crowded)

        # 2. real requests on real processes, once every entry holds the whole route: status says
        # READY from the replicas' reports, and the entries get the routing state a tick later (an
        # entry without a location yet sends that location's share to the others). An entry that
        # took 20 picks in a row has sent to every location (the cycles spread each one evenly).
        entry_region = source_loc.split("/")[0]
        regions = {where[x].split("/")[0] for x in where}

        def warmed() -> bool:
            run_many(c, "wf-route", 60, workers=6)
            took = [m for m in h.each_agent_metrics().values()
                    if sample_sum(m, "atoll_workflow_requests_total", workflow="wf-route") >= 20]
            return bool(took) and all(sample_sum(m, "atoll_bytes_sent_total", workflow="wf-route",
                                                 from_region=entry_region, to_region=r) > 0
                                      for m in took for r in regions)
        wait_until(warmed, 60, "every entry holding the whole route")
        each0 = h.each_agent_metrics()
        metrics0 = "\n".join(each0.values())
        before = bytes_by_pair(metrics0, "wf-route")
        ok, errors = run_many(c, "wf-route", 1000, workers=16)
        assert not errors, errors[:3]
        each1 = h.each_agent_metrics()
        metrics1 = "\n".join(each1.values())
        seen = Counter(r["stages"][0]["node"] for r in ok)
        assert set(seen) == set(by_node), (seen, by_node)          # every replica serves, none else does
        extra = unserved_picks(metrics0, metrics1, "wf-route")
        took = entries_taking(each0, each1, "wf-route")
        entries = sum(1 for v in took.values() if v > 0)          # the agents that took these requests
        assert sum(took.values()) == len(ok) and entries >= 1, took
        slack = split_slack(len(ok), extra, entries, len(want_loc))
        for loc, want in want_loc.items():
            got = sum(v for x, v in seen.items() if where[x] == loc)
            assert abs(got - want * len(ok)) <= slack, (loc, got, want, dict(seen), by_node, extra, took)
        # bytes per region pair: every call's input counted once, towards the region it went to
        # (all inputs are the same size); the plan's flows name the same pairs
        after = bytes_by_pair(metrics1, "wf-route")
        measured = {k: after[k] - before.get(k, 0.0) for k in after}
        size = len(REQUEST_TEXT.format(0).encode())
        for region in regions:
            served = sum(v for x, v in seen.items() if where[x].split("/")[0] == region)
            sent = measured.get((entry_region, region), 0.0) / size
            assert served <= sent <= served + extra, (region, served, sent, extra, measured)
        flows = {}
        for f in st.plan["routes"]:
            a, b = f["from_location"].split("/")[0], f["to_location"].split("/")[0]
            flows[(a, b)] = flows.get((a, b), 0.0) + f["rate"]
        assert set(measured) == {k for k, v in flows.items() if v > 0}, (measured, flows)
        c.delete("wf-route")


def test_agent_killed_during_serving_is_retried_and_replanned(harness):
    h = harness
    with h.client() as c:
        c.submit(str(h.write("wf-kill", one_stage(h, "wf-kill", 22))))
        st = c.wait_ready("wf-kill", 90)
        nodes = {r["node"] for r in st.replicas}
        assert "rent-1" in nodes and len(nodes) >= 3, st.replicas   # the renter is cheapest
        gen0 = st.generation

        def kill_at(k):
            if k == 40:
                h.fleet.kill9("rent-1")
        ok, errors = run_many(c, "wf-kill", 200, workers=8, on_done=kill_at)
        assert len(ok) + len(errors) == 200
        assert len(ok) >= 198, errors[:3]
        for e in errors:
            assert str(e)                                          # a clear message, never silence
        st = wait_until(lambda: (lambda s: s if s.generation > gen0 and s.state == "READY" else None)(
            c.status("wf-kill")), 40, "re-plan onto the remaining nodes")
        assert "rent-1" not in {r["node"] for r in st.replicas}
        ok2, errors2 = run_many(c, "wf-kill", 20)
        assert not errors2
        c.delete("wf-kill")
    h.restart_agent("rent-1")
    h.wait_nodes_ready(["rent-1"])


def test_two_stages_with_adapters_stream_and_status(harness):
    h = harness
    m = h.models
    spec = {
        "name": "wf-llm",
        "sources": [{"name": "users", "rate": 3, "region": "eu-west", "tier": "edge"}],
        "tasks": [
            {"name": "summarize", "max_tokens": 8, "prompt": "Summarize: {input}", "variants": [
                {"name": "base", "model": str(m / "base"), "accuracy": 0.7, "memory_gb": 1,
                 "throughput": {"a100": 20, "rtx4090": 10, "orin": 4}},
                {"name": "tenant-a", "model": str(m / "base"), "adapter": "tenant-a",
                 "adapter_path": str(m / "tenant-a"), "accuracy": 0.9, "memory_gb": 1, "adapter_memory_gb": 0.01,
                 "throughput": {"a100": 18, "rtx4090": 9, "orin": 3.5}}]},
            {"name": "answer", "max_tokens": 8, "prompt": "Answer using: {input}", "variants": [
                {"name": "tenant-b", "model": str(m / "base"), "adapter": "tenant-b",
                 "adapter_path": str(m / "tenant-b"), "accuracy": 0.92, "memory_gb": 1, "adapter_memory_gb": 0.01,
                 "throughput": {"a100": 18, "rtx4090": 9, "orin": 3.5}}]},
        ],
        "edges": [{"from": "users", "to": "summarize", "size_kb": 0.1},
                  {"from": "summarize", "to": "answer", "size_kb": 0.1}],
        "slo": {"min_accuracy": 0.8},
    }
    with h.client() as c:
        st = c.submit(str(h.write("wf-llm", spec)))
        assert st.plan["tasks"]["summarize"]["variant"] == "tenant-a"      # accuracy SLO rules out base
        st = c.wait_ready("wf-llm", 90)
        r = c.invoke("wf-llm", {"text": "the quick brown fox"})
        assert isinstance(r["output"]["text"], str) and [s["task"] for s in r["stages"]] == ["summarize", "answer"]
        spec_tokens = r["stages"][1]["completion_tokens"]
        assert 2 < spec_tokens <= 8 and r["stages"][1]["prompt_tokens"] > 0     # the spec's max_tokens 8
        # a per-request completion budget replaces the sink stage's, not the first stage's
        r2 = c.invoke("wf-llm", {"text": "the quick brown fox"}, max_tokens=2)
        assert r2["stages"][1]["completion_tokens"] == 2
        assert r2["stages"][0]["completion_tokens"] == r["stages"][0]["completion_tokens"]
        with pytest.raises(InvalidArgument, match="max_tokens"):
            c.invoke("wf-llm", {"text": "x"}, max_tokens=-1)
        parts = list(c.invoke("wf-llm", {"text": "stream me"}, stream=True))
        assert isinstance(parts[-1], dict) and all(isinstance(p, str) for p in parts[:-1])
        assert len(parts) >= 2 and "".join(parts[:-1]) == parts[-1]["output"]["text"]
        st = c.status("wf-llm")
        assert {p["variant"] for p in st.profiles} >= {"summarize/tenant-a", "answer/tenant-b"}
        prof = c.profile("wf-llm", "answer", requests=6, concurrency=3)
        assert prof["requests_per_second"] > 0
        st = c.status("wf-llm")
        measured = [p for p in st.profiles if p["variant"] == "answer/tenant-b" and p["source"] == "profiled"]
        assert measured and measured[0]["measured_rps"] == pytest.approx(prof["requests_per_second"], rel=1e-3)
        c.delete("wf-llm")


def test_restarted_agent_converges_by_itself(harness):
    """An agent restarted (kill -9, then started again before it is LOST) gets its assignments
    again and its replica is ready, with no re-plan."""
    h = harness
    with h.client() as c:
        c.submit(str(h.write("wf-conv", one_stage(h, "wf-conv", 2, max_tokens=2))))
        st = c.wait_ready("wf-conv", 90)
        node = st.replicas[0]["node"]
        h.fleet.kill9(node)
        h.restart_agent(node)
        st2 = wait_until(lambda: (lambda s: s if s.state == "READY" and all(
            r["state"] == "ready" for r in s.replicas) and s.replicas[0]["node"] == node else None)(
            c.status("wf-conv")), 40, "the restarted agent's replica ready again")
        assert st2.generation == st.generation
        assert c.invoke("wf-conv", {"text": "again"})["stages"][0]["node"] == node
        with pytest.raises(InvalidArgument, match="tensor"):
            bad = one_stage(h, "wf-tensor", 2)
            bad["edges"][0]["type"] = "tensor"
            c.submit(str(h.write("wf-tensor", bad)))
        c.delete("wf-conv")


def test_coordinator_restart_during_serving(harness):
    h = harness
    with h.client() as c:
        c.submit(str(h.write("wf-restart", one_stage(h, "wf-restart", 4, max_tokens=2))))
        c.wait_ready("wf-restart", 90)

        def restart_at(k):
            if k == 15:
                h.restart_coordinator()
        ok, errors = run_many(c, "wf-restart", 60, workers=4, on_done=restart_at)
        assert not errors, errors[:3]
        assert c.status("wf-restart").state in ("READY", "DEGRADED")
        wait_until(lambda: c.status("wf-restart").state == "READY", 30, "READY after restart")
        c.delete("wf-restart")


def test_bad_input_gets_clear_errors(harness):
    h = harness
    with h.client() as c:
        with pytest.raises(FailedPrecondition) as ei:
            c.submit(str(h.write("wf-big", one_stage(h, "wf-big", 5000))))
        assert "throughput" in str(ei.value) and "5000" in str(ei.value)

        bad = one_stage(h, "wf-noadapter", 2)
        bad["tasks"][0]["variants"][0].update(adapter="ghost", adapter_path=str(h.models / "ghost"))
        with pytest.raises(NotFound) as ei:
            c.submit(str(h.write("wf-noadapter", bad)))
        assert "ghost" in str(ei.value)

        with pytest.raises(NotFound):
            c.invoke("no-such-workflow", {"text": "x"})
        with pytest.raises(SpecError):
            c.submit(str(h.write("wf-cycle", {**one_stage(h, "wf-cycle", 2),
                                               "edges": [{"from": "users", "to": "nowhere"}]})))

        c.submit(str(h.write("wf-wait", one_stage(h, "wf-wait", 2))))
        if c.status("wf-wait").state != "READY":
            try:                         # refused while not ready, unless it became ready meanwhile
                c.invoke("wf-wait", {"text": "too early"})
            except FailedPrecondition as e:
                assert "wf-wait" in str(e) or "READY" in str(e).upper(), str(e)
            else:
                assert c.status("wf-wait").state == "READY"
        c.wait_ready("wf-wait", 90)
        with pytest.raises(InvalidArgument):
            c.invoke("wf-wait", "{not json")
        with pytest.raises(InvalidArgument):
            c.invoke("wf-wait", {"wrong": 1})
        c.delete("wf-wait")


def test_model_store_names_and_embedding_stage(harness):
    """Models and adapters pushed to the coordinator's store and named by sha256 are fetched by
    the agents (checksummed chunks); an embedding stage returns a vector."""
    h = harness
    with h.client() as c:
        base = c.push(h.models / "base", "model")
        adapter = c.push(h.models / "tenant-c", "adapter")
        assert base.startswith("sha256:") and len(base) == 71 and adapter != base
        assert c.push(h.models / "base", "model") == base              # content-addressed: same name
        spec = {
            "name": "wf-embed",
            "sources": [{"name": "docs", "rate": 2, "region": "us-east", "tier": "datacenter"}],
            "tasks": [{"name": "embed", "kind": "embedding", "variants": [
                {"name": "tenant-c", "model": base, "adapter": "tenant-c", "adapter_path": adapter,
                 "accuracy": 0.9, "memory_gb": 1, "throughput": {"a100": 50, "rtx4090": 20, "orin": 5}}]}],
            "edges": [{"from": "docs", "to": "embed", "size_kb": 1}],
        }
        c.submit(str(h.write("wf-embed", spec)))
        st = c.wait_ready("wf-embed", 90)
        r = c.invoke("wf-embed", {"text": "a document to embed"})
        vec = r["output"]["embedding"]
        assert isinstance(vec, list) and len(vec) == 64 and all(isinstance(x, float) for x in vec)
        # the heartbeat reports what the replica served
        node = st.replicas[0]["node"]
        for i in range(5):
            c.invoke("wf-embed", {"text": f"doc {i}"})
        wait_until(lambda: any(p["source"] == "heartbeat" and p["measured_rps"] > 0
                               for p in c.status("wf-embed").profiles), 10, "heartbeat throughput")
        assert (h.fleet.dir / f"agent-{node}" / "blobs" / base.split(":")[1] / ".complete").exists()
        c.delete("wf-embed")

        with pytest.raises(NotFound):
            bad = dict(spec, name="wf-embed2")
            bad["tasks"] = [dict(spec["tasks"][0], variants=[dict(spec["tasks"][0]["variants"][0],
                                                                  model="sha256:" + "0" * 64)])]
            c.submit(str(h.write("wf-embed2", bad)))
