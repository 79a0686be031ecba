"""The data plane's Prometheus families on an agent (``/metrics``, with the runtime's).

The alert rules and the dashboard read the workflow and stage families from agents; ``atoll_bytes_sent_total`` counts the
bytes this agent sent towards a stage (a request's input, a stage's output) per (from region, to
region), the flows the planner priced, and ``atoll_result_bytes_sent_total`` the answers sent
back towards the entry.

The request path looks its labelled series up through :meth:`DataPlaneMetrics.series`, which
keeps each one after its first use (``labels()`` checks and joins the label values every call;
the series it returns is the same object every time, and nothing here removes one).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class DataPlaneMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.requests = Counter("atoll_workflow_requests", "Workflow requests taken at this entry, by outcome",
                                ["workflow", "outcome"], registry=r)
        self.request_seconds = Histogram("atoll_workflow_request_seconds", "End-to-end workflow latency at the entry",
                                         ["workflow"], registry=r, buckets=_LATENCY)
        self.ttft = Histogram("atoll_workflow_time_to_first_token_seconds",
                              "Time to the first streamed token of a workflow request", ["workflow"], registry=r,
                              buckets=_LATENCY)
        self.stage_seconds = Histogram("atoll_stage_seconds", "Latency of one stage run here (retries included)",
                                       ["workflow", "task"], registry=r, buckets=_LATENCY)
        self.retries = Counter("atoll_stage_retries", "Stage attempts retried on another replica",
                               ["workflow", "task"], registry=r)
        self.stage_errors = Counter("atoll_stage_errors", "Failed stage attempts by status code",
                                    ["workflow", "task", "code"], registry=r)
        self.bytes_sent = Counter("atoll_bytes_sent", "Bytes sent towards a stage, by region pair",
                                  ["workflow", "from_region", "to_region"], registry=r)
        self.result_bytes = Counter("atoll_result_bytes_sent", "Answer bytes sent back towards the entry",
                                    ["workflow", "from_region", "to_region"], registry=r)
        self.hedges = Counter("atoll_stage_hedges", "Last-stage calls also sent to an idle replica after no first "
                              "token for a while (sent), and those the second replica answered first (won)",
                              ["workflow", "task", "outcome"], registry=r)
        self.hops = Counter("atoll_dataplane_hops", "Requests handed on to another agent or taken from one",
                            ["direction"], registry=r)
        self.coordinator_connected = Gauge("atoll_dataplane_coordinator_connected",
                                           "1 while this agent's heartbeat stream to the coordinator is up",
                                           registry=r)
        self.degraded = Gauge("atoll_dataplane_degraded",
                              "1 while serving from the last routing state without the coordinator", registry=r)
        self.routing_age = Gauge("atoll_dataplane_routing_age_seconds",
                                 "Seconds since the routing state was last received or confirmed", registry=r)
        self.excluded = Gauge("atoll_dataplane_excluded_replicas",
                              "Replicas skipped for a while after they failed", registry=r)
        self.workflows = Gauge("atoll_dataplane_workflows", "Workflows in this agent's routing state", registry=r)
        self._series: dict[tuple, object] = {}

    def series(self, family, *values: str):
        """``family.labels(*values)``, looked up once per family and label values."""
        key = (id(family), values)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = family.labels(*values)
        return child
