"""The data plane: every agent is an entry for workflow requests and runs them stage by stage
along the plan's paths, handing each stage's output straight to the next stage's replica.

- :mod:`.table`: a route compiled for picking (the plan's flows, then replica weights; O(1) a pick);
- :mod:`.chain`: :class:`~.chain.DataPlane`, running a request from one stage to the end;
- :mod:`.entry`: the ``Entry`` service (clients' ``Invoke``) and the keys and tenants it checks;
- :mod:`.hop`: the ``DataPlane`` service (another agent's ``Forward``);
- :mod:`.door`: the OpenAI-compatible HTTP door over the same data plane;
- :mod:`.load`: what an entry reports to the coordinator for autoscaling;
- :mod:`.trace`: request ids, W3C ``traceparent`` and the OpenTelemetry export;
- :mod:`.metrics`: the data plane's Prometheus families (bytes per region pair among them).
"""
