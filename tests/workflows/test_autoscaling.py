"""Elasticity on real processes: a load ramp scales out and back in; scale to zero and the first
request after it; an on-demand floor keeps serving when every preemptible host vanishes."""

from __future__ import annotations

import threading
import time

import pytest

from .conftest import wait_until
from .test_serving import run_many

pytestmark = pytest.mark.integration


def spec(h, name, rate, autoscaling, max_tokens=12):
    return {
        "name": name,
        "sources": [{"name": "users", "rate": rate, "region": "us-east", "tier": "datacenter"}],
        "tasks": [{"name": "gen", "max_tokens": max_tokens, "variants": [
            {"name": "base", "model": str(h.models / "base"), "accuracy": 0.8, "memory_gb": 1,
             "throughput": {"a100": 10, "rtx4090": 4, "orin": 1}}]}],
        "edges": [{"from": "users", "to": "gen", "size_kb": 0.05}],
        "autoscaling": autoscaling,
    }


def test_load_ramp_scales_out_then_in(harness):
    h = harness
    with h.client(timeout=60) as c:
        c.submit(str(h.write("wf-ramp", spec(h, "wf-ramp", 2, {
            "metric": "in_flight", "target": 1, "scale_up_delay": 1, "scale_down_delay": 2, "max_replicas": 4}))))
        st0 = c.wait_ready("wf-ramp", 90)
        n0 = len(st0.replicas)
        stop = threading.Event()
        done = []

        def load():
            while not stop.is_set():
                c.invoke("wf-ramp", {"text": "ramp"}, timeout=60)
                done.append(1)

        threads = [threading.Thread(target=load, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        try:
            st = wait_until(lambda: (lambda s: s if len(s.replicas) > n0 else None)(c.status("wf-ramp")),
                            40, "scale out under load")
            assert st.plan["autoscale"]["rate"] > 2 and "utilisation" in st.plan["autoscale"]["reason"]
            up = [d for d in st.autoscale_decisions if d["action"] == "up"]      # the decision log
            assert up and up[-1]["rate"] > up[-1]["previous_rate"], str(up)
            # the logged inputs explain the step: the target is max(plan x utilisation, measured demand)
            # (the demand alone can drive it while the new replicas start and nothing is in flight yet)
            g = up[-1]["signals"]
            assert g["plan_rate"] == up[-1]["previous_rate"] and g["target_rate"] > 1.05 * g["plan_rate"], str(g)
            assert g["target_rate"] == pytest.approx(max(g["plan_rate"] * min(g["utilisation"], 2.0), g["demand"]),
                                                     rel=1e-3, abs=1e-3), str(g)
            assert up[-1]["outcome"].startswith("planned") and "utilisation" in up[-1]["reason"]
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert done
        peak = st
        st = wait_until(lambda: (lambda s: s if len(s.replicas) < len(peak.replicas) else None)(c.status("wf-ramp")),
                        60, "scale back in once the load is gone")
        assert st.plan["autoscale"]["rate"] < peak.plan["autoscale"]["rate"]
        assert st.plan["autoscale"]["reason"].startswith("down:") and "below the plan" in st.plan["autoscale"]["reason"]
        c.delete("wf-ramp")


def test_scale_to_zero_and_first_request_waits(harness):
    h = harness
    with h.client(timeout=60) as c:
        c.submit(str(h.write("wf-zero", spec(h, "wf-zero", 1, {
            "scale_to_zero": True, "min_replicas": 0, "idle_seconds": 2, "scale_down_delay": 1}, max_tokens=3))))
        c.wait_ready("wf-zero", 90)
        st = wait_until(lambda: (lambda s: s if s.state == "IDLE" else None)(c.status("wf-zero")), 30, "IDLE")
        assert st.replicas == [] and "scaled to zero" in st.message
        t0 = time.monotonic()
        r = c.invoke("wf-zero", {"text": "wake up"}, timeout=60)     # waits for a replica, never "not ready"
        assert isinstance(r["output"]["text"], str) and time.monotonic() - t0 < 60
        st = c.status("wf-zero")
        assert st.cold_starts and st.cold_starts[-1]["seconds"] > 0
        cs = st.cold_starts[-1]
        assert cs["load"] > 0 and cs["warmup"] > 0 and cs["fetch"] >= 0
        # a deadline shorter than a cold start gives a clear error, not silence
        wait_until(lambda: c.status("wf-zero").state == "IDLE", 30, "IDLE again")
        from atoll.core.errors import DeadlineExceeded
        with pytest.raises(DeadlineExceeded):
            c.invoke("wf-zero", {"text": "too quick"}, timeout=0.05)
        c.delete("wf-zero")


def test_on_demand_floor_survives_losing_every_preemptible_host(harness):
    h = harness
    with h.client(timeout=60) as c:
        c.submit(str(h.write("wf-floor", spec(h, "wf-floor", 8, {"on_demand_floor": 0.5, "scale_up_delay": 600,
                                                                   "scale_down_delay": 600}, max_tokens=2))))
        st = c.wait_ready("wf-floor", 90)
        wait_until(lambda: all(r["state"] == "ready" for r in c.status("wf-floor").replicas), 60, "all ready")
        tiers = {r["node"]: r["tier"] for r in st.replicas}
        assert "rent-1" in tiers, st.replicas                 # the cheap spot host is used ...
        assert any(t == "datacenter" for t in tiers.values())  # ... above an on-demand floor
        assert st.plan["on_demand_floor"]["share"] == 0.5

        def kill_at(k):
            if k == 30:
                h.fleet.kill9("rent-1")                        # every preemptible host, at once
        ok, errors = run_many(c, "wf-floor", 200, workers=8, on_done=kill_at)
        assert len(ok) >= 198, errors[:3]
        c.delete("wf-floor")
    h.restart_agent("rent-1")
    h.wait_nodes_ready(["rent-1"])


def test_price_change_triggers_a_replan(harness):
    import signal

    import yaml as _yaml

    h = harness
    with h.client(timeout=60) as c:
        c.submit(str(h.write("wf-price", spec(h, "wf-price", 3, None, max_tokens=2) | {"autoscaling": None})))
        st = c.wait_ready("wf-price", 90)
        assert [r["node"] for r in st.replicas] == ["rent-1"], st.replicas      # the cheapest host
        cfg = h.fleet.dir / "rent-1.yaml"
        data = _yaml.safe_load(cfg.read_text())
        data["price_per_hour"] = 9.0                                            # the renter re-prices itself
        cfg.write_text(_yaml.safe_dump(data))
        h.fleet.agents["rent-1"].send_signal(signal.SIGHUP)
        st2 = wait_until(lambda: (lambda s: s if s.generation > st.generation and s.state == "READY" else None)(
            c.status("wf-price")), 40, "a re-plan after the price change")
        assert "rent-1" not in {r["node"] for r in st2.replicas}
        assert {n.name: n.price_per_hour for n in c.nodes()}["rent-1"] == 9.0
        data["price_per_hour"] = 0.5
        cfg.write_text(_yaml.safe_dump(data))
        h.fleet.agents["rent-1"].send_signal(signal.SIGHUP)
        wait_until(lambda: {n.name: n.price_per_hour for n in c.nodes()}["rent-1"] == 0.5, 20, "price back")
        c.delete("wf-price")


def test_replicas_spread_over_failure_domains(harness):
    h = harness
    with h.client(timeout=60) as c:
        s = spec(h, "wf-spread", 4, None, max_tokens=2) | {"autoscaling": None}
        s["placement"] = {"min_failure_domains": 2, "failure_domain": "region"}
        c.submit(str(h.write("wf-spread", s)))
        st = c.wait_ready("wf-spread", 90)
        assert len({r["region"] for r in st.replicas}) >= 2, st.replicas
        assert st.plan["failure_domains"] == {"label": "region", "domains": 2}
        c.delete("wf-spread")
        s["placement"]["min_failure_domains"] = 5
        from atoll.core.errors import FailedPrecondition
        with pytest.raises(FailedPrecondition, match="failure domains"):
            c.submit(str(h.write("wf-spread5", s | {"name": "wf-spread5"})))
