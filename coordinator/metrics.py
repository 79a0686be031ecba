"""Prometheus metrics of the coordinator (names prefixed ``atoll_``, base units).

Fleet gauges are computed at scrape time from the registry (a custom collector), so the
heartbeat path only bumps one counter and one histogram.
"""

from __future__ import annotations

from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from atoll.coordinator.liveness import STATES

IDENTITY_REASONS = ("no_key", "bad_signature", "stale_proof", "replayed_proof", "key_mismatch", "join_token",
                    "scope", "name_taken", "session", "revoked", "join_rate", "fleet_full")


class FleetCollector:
    def __init__(self, registry_fn):
        self._registry_fn = registry_fn

    def describe(self):
        return []

    def collect(self):
        reg = self._registry_fn()
        nodes = GaugeMetricFamily("atoll_nodes", "Nodes by state, tier and region",
                                  labels=["state", "tier", "region"])
        gpus = GaugeMetricFamily("atoll_fleet_gpus", "GPUs on READY nodes, by tier", labels=["tier"])
        mem = GaugeMetricFamily("atoll_fleet_gpu_memory_bytes", "GPU memory on READY nodes, by tier",
                                labels=["tier"])
        price = GaugeMetricFamily("atoll_fleet_price_dollars_per_hour",
                                  "Summed hourly price of READY nodes, by tier", labels=["tier"])
        sessions = GaugeMetricFamily("atoll_agent_sessions", "Open agent heartbeat streams")
        counts: dict[tuple, int] = defaultdict(int)
        g, m, p = defaultdict(int), defaultdict(int), defaultdict(float)
        if reg is not None:
            for rec in reg.nodes.values():
                counts[(rec.state, rec.tier, rec.region)] += 1
                if rec.state == "READY":
                    gl = rec.capacity.get("gpus", [])
                    g[rec.tier] += len(gl)
                    m[rec.tier] += sum(int(x.get("memory_total_bytes", 0)) for x in gl)
                    p[rec.tier] += float(rec.spec.get("price_per_hour", 0.0))
            sessions.add_metric([], len(reg.sessions))
        for (state, tier, region), n in sorted(counts.items()):
            nodes.add_metric([state, tier, region], n)
        for tier in sorted(set(g) | set(p)):
            gpus.add_metric([tier], g[tier])
            mem.add_metric([tier], m[tier])
            price.add_metric([tier], p[tier])
        yield from (nodes, gpus, mem, price, sessions)


class CoordinatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.heartbeats = Counter("atoll_heartbeats_received", "Heartbeats received from agents",
                                  registry=r)
        self.heartbeat_seconds = Histogram(
            "atoll_heartbeat_handling_seconds", "Time to handle one heartbeat message", registry=r,
            buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
        self.heartbeat_delay = Histogram(
            "atoll_heartbeat_delay_seconds",
            "From the agent's send time to handled (queueing included; meaningful when clocks agree)",
            registry=r, buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
        self.registrations = Counter("atoll_registrations", "Agent registrations accepted",
                                     registry=r)
        self.rejections = Counter("atoll_registration_rejections", "Agent registrations refused",
                                  ["reason"], registry=r)
        self.transitions = Counter("atoll_node_state_transitions", "Node liveness transitions",
                                   ["from_state", "to_state"], registry=r)
        for a in STATES:
            for b in STATES:
                if a != b:
                    self.transitions.labels(a, b)
        for reason in ("unauthenticated", "invalid"):
            self.rejections.labels(reason)
        self.identity_refusals = Counter(
            "atoll_identity_refusals", "Registrations and heartbeats refused for who the caller is "
            "(node key, proof, join token, scope, session)", ["reason"], registry=r)
        for reason in IDENTITY_REASONS:
            self.identity_refusals.labels(reason)
        # workflows: both doors forward to agents' entries, which count the requests, stages and bytes
        # themselves (agent/dataplane/metrics.py); these count the OpenAI door's requests as it saw them
        self.requests = Counter("atoll_workflow_requests", "Workflow requests through the coordinator's OpenAI "
                                "door, by outcome", ["workflow", "outcome"], registry=r)
        self.request_seconds = Histogram("atoll_workflow_request_seconds", "End-to-end workflow latency",
                                         ["workflow"], registry=r,
                                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.ttft = Histogram("atoll_workflow_time_to_first_token_seconds",
                              "Time to the first streamed token of a workflow request", ["workflow"], registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.forwarded = Counter("atoll_invoke_forwarded", "gRPC Invoke calls this "
                                 "coordinator forwarded to an agent's entry, by outcome",
                                 ["workflow", "outcome"], registry=r)
        self.forward_seconds = Histogram("atoll_invoke_forward_seconds", "Forwarded Invoke calls, end to end",
                                         ["workflow"], registry=r,
                                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.cold_start = Histogram("atoll_cold_start_seconds", "From a scale-up decision to the replica serving",
                                    ["workflow"], registry=r, buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.plan_cost = Gauge("atoll_plan_cost_dollars_per_hour", "Predicted cost of the current plan",
                               ["workflow", "kind"], registry=r)
        self.autoscale_decisions = Counter("atoll_autoscaler_decisions", "Autoscaling decisions by action "
                                           "(keep, up, down, to_zero, from_zero)", ["workflow", "action"], registry=r)
        self.autoscale_signal = Gauge("atoll_autoscaler_signal", "The last autoscaling decision's inputs and "
                                      "figures (arrivals, work, demand, forecast, floor, queued, plan_rate, "
                                      "target_rate, reaction_s, ...)", ["workflow", "signal"], registry=r)
        self.plan_accuracy = Gauge("atoll_plan_accuracy_ratio", "Predicted end-to-end accuracy of the plan",
                                   ["workflow"], registry=r)
        self._registry_ref = None
        r.register(FleetCollector(lambda: self._registry_ref))

    def bind(self, node_registry) -> None:
        self._registry_ref = node_registry

    def registration(self, result: str, reason: str) -> None:
        if result == "accepted":
            self.registrations.inc()
        else:
            self.rejections.labels(reason or "other").inc()

    def identity_refusal(self, reason: str) -> None:
        self.identity_refusals.labels(reason if reason in IDENTITY_REASONS else "other").inc()

    def transition(self, t) -> None:
        self.transitions.labels(t.old, t.new).inc()

    def observe_heartbeat(self, seconds: float, delay: float | None = None) -> None:
        self.heartbeats.inc()
        self.heartbeat_seconds.observe(seconds)
        if delay is not None and 0 <= delay < 3600:
            self.heartbeat_delay.observe(delay)
