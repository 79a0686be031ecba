"""atoll coordinator: run the control plane."""

from __future__ import annotations

from atoll.cli.flags import server_flags


def register(sub) -> None:
    p = sub.add_parser("coordinator", help="run the coordinator (control plane)",
                       description="Run the coordinator. Settings come from flags, ATOLL_* environment "
                                   "variables and --config, in that order of precedence.")
    p.add_argument("--listen", help="gRPC HOST:PORT (default 127.0.0.1:7070)")
    p.add_argument("--metrics-listen", help="Prometheus HTTP HOST:PORT (default 127.0.0.1:9090)")
    p.add_argument("--state-dir", help="directory of the SQLite state (default .atoll/coordinator)")
    p.add_argument("--heartbeat-interval", type=_positive_float, metavar="SECONDS",
                   help="seconds between agent heartbeats (default 5)")
    p.add_argument("--join-token", help="token agents must present (generated into STATE_DIR/join-token if unset)")
    p.add_argument("--database-url", metavar="URL",
                   help="PostgreSQL URL shared by highly available coordinators (env ATOLL_DATABASE_URL; "
                        "default: SQLite in STATE_DIR)")
    p.add_argument("--advertise", metavar="HOST:PORT",
                   help="address agents and clients should use to reach this coordinator, told to them by "
                        "standbys (default: the listen address)")
    p.add_argument("--openai-listen", metavar="HOST:PORT",
                   help="serve an OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions)")
    server_flags(p, cert_help="serve TLS with this certificate", plaintext="plaintext gRPC")
    p.add_argument("--tls-client-ca", metavar="PEM", help="CA of agent certificates: agents must use mutual TLS")
    p.add_argument("--agent-listen", metavar="HOST:PORT",
                   help="port for agents, mutual TLS required (with --tls-client-ca)")
    p.add_argument("--allow-empty-store", action="store_true",
                   help="start even when the database is empty but the state dir shows it held data before "
                        "(an emptied or replaced database is refused otherwise)")
    p.add_argument("--config", help="YAML file with the same settings (keys: listen, metrics_listen, ...)")
    p.add_argument("--log-level", default=None, help="debug | info | warning")
    p.set_defaults(func=run)


def _positive_float(s: str) -> float:
    import argparse

    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def run(ns) -> int:
    import asyncio

    from atoll.core import logs
    from atoll.coordinator.server import Coordinator
    from atoll.specs.config import CoordinatorSettings, resolve_settings

    settings = resolve_settings(CoordinatorSettings, config_file=ns.config, flags={
        "listen": ns.listen, "metrics_listen": ns.metrics_listen,
        "metrics_token_file": ns.metrics_token_file, "state_dir": ns.state_dir,
        "heartbeat_interval": ns.heartbeat_interval, "join_token": ns.join_token,
        "database_url": ns.database_url, "advertise": ns.advertise, "openai_listen": ns.openai_listen,
        "tls_cert": ns.tls_cert, "tls_key": ns.tls_key, "tls_client_ca": ns.tls_client_ca,
        "insecure": True if ns.insecure else None, "agent_listen": ns.agent_listen,
        "allow_empty_store": True if ns.allow_empty_store else None})
    logs.setup(ns.log_level)
    return asyncio.run(Coordinator(settings).run_until_signal()) or 0
