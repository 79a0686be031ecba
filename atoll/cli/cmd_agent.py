"""atoll agent: run the per-host daemon."""

from __future__ import annotations

from atoll.cli.flags import server_flags


def register(sub) -> None:
    p = sub.add_parser("agent", help="run the agent on this host",
                       description="Join the fleet: probe this host, register with the coordinator "
                                   "and keep it informed. SIGTERM drains, then exits.")
    p.add_argument("--coordinator", help="coordinator HOST:PORT, or several comma-separated (A:7070,B:7070) to "
                                         "fail over between (default 127.0.0.1:7070; env ATOLL_COORDINATOR)")
    p.add_argument("--config", help="node.yaml: name, tier, region, zone, price_per_hour, preemptible, labels "
                                    "(env ATOLL_CONFIG)")
    p.add_argument("--state-dir", help="keeps the node id across restarts (default .atoll/agent)")
    p.add_argument("--join-token", help="the coordinator's join token (env ATOLL_JOIN_TOKEN)")
    p.add_argument("--worker-listen", help="Worker gRPC HOST:PORT (default 127.0.0.1:0)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics (runtime: TTFT, tokens/s, KV use, adapter slots) here")
    p.add_argument("--openai-listen", metavar="HOST:PORT",
                   help="OpenAI-compatible HTTP API for this host's model and adapters (edge clients)")
    p.add_argument("--worker-advertise", metavar="HOST:PORT",
                   help="address the coordinator uses for this agent's Worker (default: derived from --worker-listen)")
    p.add_argument("--entry-listen", metavar="HOST:PORT",
                   help="Entry gRPC HOST:PORT: clients invoke workflows at this agent (default 127.0.0.1:0)")
    p.add_argument("--entry-advertise", metavar="HOST:PORT", help="address clients use for this agent's entry")
    p.add_argument("--otlp-endpoint", metavar="URL",
                   help="export request spans to this OpenTelemetry collector (OTLP/HTTP, e.g. http://otel:4318)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA that signed the coordinator's certificate: use TLS")
    server_flags(p, cert_help="this agent's client certificate (mutual TLS)", plaintext="a plaintext Worker")
    p.add_argument("--log-level", default=None)
    p.set_defaults(func=run)


def run(ns) -> int:
    import asyncio
    import os

    from atoll.core import logs
    from atoll.agent.daemon import Agent
    from atoll.core.errors import SpecError
    from atoll.specs.config import AgentSettings, resolve_settings

    if not (ns.config or os.environ.get("ATOLL_CONFIG")):
        raise SpecError("--config is required", source="flag --config", hint="the path of this host's node.yaml")
    settings = resolve_settings(AgentSettings, config_file=None, flags={
        "coordinator": ns.coordinator, "config": ns.config, "state_dir": ns.state_dir,
        "join_token": ns.join_token, "worker_listen": ns.worker_listen,
        "worker_advertise": ns.worker_advertise, "tls_ca": ns.tls_ca, "tls_cert": ns.tls_cert,
        "tls_key": ns.tls_key, "insecure": True if ns.insecure else None,
        "metrics_listen": ns.metrics_listen, "metrics_token_file": ns.metrics_token_file,
        "openai_listen": ns.openai_listen,
        "entry_listen": ns.entry_listen, "entry_advertise": ns.entry_advertise, "otlp_endpoint": ns.otlp_endpoint})
    agent = Agent.from_settings(settings)   # validates node.yaml before anything starts
    logs.setup(ns.log_level)
    asyncio.run(agent.run_until_signal())
    return 0
