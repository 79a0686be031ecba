"""Settings of the long-running processes, from flags, ``ATOLL_*`` environment variables and a
YAML config file, in that order of precedence (a flag beats the environment, which beats the
file, which beats the defaults).

    coordinator.yaml                 environment                 flag
    listen: 0.0.0.0:7070             ATOLL_LISTEN                --listen
    metrics_listen: 0.0.0.0:9090     ATOLL_METRICS_LISTEN        --metrics-listen
    state_dir: /var/lib/atoll        ATOLL_STATE_DIR             --state-dir
    heartbeat_interval: 5            ATOLL_HEARTBEAT_INTERVAL    --heartbeat-interval
    join_token: s3cret               ATOLL_JOIN_TOKEN            --join-token
    database_url: postgresql://...   ATOLL_DATABASE_URL          --database-url
    advertise: 10.0.0.5:7070         ATOLL_ADVERTISE             --advertise
    metrics_token_file: /run/tok     ATOLL_METRICS_TOKEN_FILE    --metrics-token-file
    join_rate: 2                     ATOLL_JOIN_RATE             (file or environment only)
    join_burst: 100                  ATOLL_JOIN_BURST
    max_nodes: 20000                 ATOLL_MAX_NODES

An agent's or a client's ``coordinator`` may list several coordinators, comma-separated
(``a:7070,b:7070``): they fail over to the next one when one is down or on standby.
"""

from __future__ import annotations

import os
import re
from typing import Any, TypeVar

from pydantic import BaseModel, Field, field_validator

from atoll.core.errors import SpecError
from atoll.specs.common import Spec, parse_obj, read_yaml

_ADDR = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]*):(?P<port>\d{1,5})$")


def check_address(value: str, *, allow_zero_port: bool = True) -> str:
    """Validate HOST:PORT (IPv6 in brackets). Raises ValueError with the allowed form."""
    m = _ADDR.match(value or "")
    if not m:
        raise ValueError(f"{value!r} is not HOST:PORT (for example 127.0.0.1:7070 or [::1]:7070)")
    port = int(m.group("port"))
    if port > 65535 or (port == 0 and not allow_zero_port):
        raise ValueError(f"port {port} out of range 1-65535")
    return value


def check_addresses(value: str) -> str:
    """Validate one HOST:PORT or a comma-separated list of them (coordinators to fail over
    between). Raises ValueError naming the bad entry."""
    parts = [p.strip() for p in (value or "").split(",")]
    if len(parts) > 1 and not all(parts):
        raise ValueError(f"{value!r} has an empty entry; list coordinators as HOST:PORT,HOST:PORT")
    for p in parts:
        check_address(p)
    return ",".join(parts)


def split_addresses(value: str) -> list[str]:
    """The addresses of a comma-separated list (one entry for a plain HOST:PORT)."""
    return check_addresses(value).split(",")


# gRPC channel options added when several coordinators are listed: a channel to one that died
# retries its connection at most every 2 s (gRPC's default backoff grows to 120 s), so the
# address is usable again soon after that coordinator comes back.
FAILOVER_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                            ("grpc.max_reconnect_backoff_ms", 2000)]

_STANDBY = re.compile(r"standby; leader is at (\S+)")


def leader_from_refusal(details: str) -> str | None:
    """The leader's HOST:PORT named in a standby coordinator's UNAVAILABLE refusal
    ("standby; leader is at ADDR"), or None."""
    m = _STANDBY.search(details or "")
    return m.group(1) if m else None


def split_address(value: str) -> tuple[str, int]:
    m = _ADDR.match(check_address(value))
    assert m
    host = m.group("host").strip("[]") or "0.0.0.0"
    return host, int(m.group("port"))


class ServerSettings(Spec):
    """Settings both daemons have."""

    metrics_token_file: str | None = Field(default=None, description="file holding a bearer token /metrics "
                                                                      "requires; unset: /metrics is open")
    tls_key: str | None = Field(default=None, description="PEM private key of tls_cert")


class CoordinatorSettings(ServerSettings):
    listen: str = Field(default="127.0.0.1:7070", description="gRPC address HOST:PORT")
    metrics_listen: str = Field(default="127.0.0.1:9090", description="Prometheus HTTP HOST:PORT")
    state_dir: str = Field(default=".atoll/coordinator", description="where the SQLite database lives")
    heartbeat_interval: float = Field(default=5.0, gt=0, le=3600, description="seconds between heartbeats")
    join_token: str | None = Field(default=None, min_length=8, max_length=256,
                                   description="token agents must present; generated if unset")
    database_url: str | None = Field(default=None, max_length=4096,
                                     description="PostgreSQL URL (postgresql://user@host:port/db) shared by "
                                                 "highly available coordinators; unset: SQLite under state_dir")
    advertise: str | None = Field(default=None, description="HOST:PORT others should use to reach this "
                                                            "coordinator (default: the listen address)")
    openai_listen: str | None = Field(default=None, description="HOST:PORT of the OpenAI-compatible HTTP "
                                                                "endpoint (/v1/...); unset: off")
    tls_cert: str | None = Field(default=None, description="PEM certificate: serve TLS")
    tls_client_ca: str | None = Field(default=None, description="PEM CA that signs agent certificates: "
                                                                 "agents must present one (mutual TLS)")
    agent_listen: str | None = Field(default=None, description="HOST:PORT for agents, with mutual TLS "
                                                               "(required with tls_client_ca)")
    insecure: bool = Field(default=False, description="allow plaintext on a non-loopback address")
    join_burst: int = Field(default=100, ge=1, le=1_000_000,
                            description="new nodes one join token (the bootstrap token included) admits at once")
    join_rate: float = Field(default=2.0, gt=0, le=10_000,
                             description="new nodes per second one join token admits after its burst")
    max_nodes: int = Field(default=20_000, ge=1, le=1_000_000,
                           description="live nodes the fleet holds (LOST ones do not count); a new node past "
                                       "it is refused")
    allow_empty_store: bool = Field(default=False, description="start even when the store is empty but the "
                                                               "state dir shows it held data before")

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _addr(cls, v: str) -> str:
        return check_address(v)

    @field_validator("openai_listen", "agent_listen")
    @classmethod
    def _openai(cls, v: str | None) -> str | None:
        return None if not v else check_address(v)

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, v: str | None) -> str | None:
        return None if not v else check_address(v, allow_zero_port=False)

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a PostgreSQL URL such as postgresql://atoll@db:5432/atoll "
                             "(leave it unset for the embedded SQLite store)")
        return v


class AgentSettings(ServerSettings):
    coordinator: str = Field(default="127.0.0.1:7070",
                             description="coordinator HOST:PORT, or several comma-separated to fail over between")
    config: str = Field(description="path of node.yaml")
    state_dir: str = Field(default=".atoll/agent", description="keeps the node id across restarts")
    join_token: str | None = Field(default=None, max_length=256)
    worker_listen: str = Field(default="127.0.0.1:0", description="Worker gRPC HOST:PORT (port 0: any)")
    metrics_listen: str | None = Field(default=None, description="Prometheus HTTP HOST:PORT")
    worker_advertise: str | None = Field(default=None, description="HOST:PORT the coordinator should use to "
                                                                    "reach this agent's Worker")
    openai_listen: str | None = Field(default=None, description="HOST:PORT of an OpenAI-compatible endpoint "
                                                                "serving this host's model directly (edge clients)")
    tls_ca: str | None = Field(default=None, description="PEM CA that signed the coordinator's certificate")
    tls_cert: str | None = Field(default=None, description="PEM client certificate of this agent (mutual TLS)")
    insecure: bool = Field(default=False, description="allow a plaintext Worker on a non-loopback address")
    entry_listen: str = Field(default="127.0.0.1:0", description="HOST:PORT of this agent's Entry service, "
                                                                 "where clients invoke workflows (port 0: any)")
    entry_advertise: str | None = Field(default=None, description="HOST:PORT clients should use to reach the "
                                                                  "entry (default: derived from entry_listen)")
    otlp_endpoint: str | None = Field(default=None, description="OpenTelemetry collector (OTLP/HTTP, e.g. "
                                                                "http://collector:4318): export request spans")
    cache_keep_seconds: float = Field(default=600.0, ge=0, le=30 * 86400,
                                      description="keep a fetched model or adapter this long after the last "
                                                  "assignment naming it went away (warm caches for re-plans)")

    @field_validator("worker_listen", "metrics_listen", "entry_listen")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        return None if v is None else check_address(v)

    @field_validator("coordinator")
    @classmethod
    def _coordinators(cls, v: str) -> str:
        return check_addresses(v)


T = TypeVar("T", bound=BaseModel)


def resolve_settings(model: type[T], *, flags: dict[str, Any], config_file: str | None,
                     env: dict[str, str] | None = None) -> T:
    """Merge defaults < config file < ATOLL_* environment < flags (None flags are unset)."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = "settings"
    if config_file:
        raw = read_yaml(config_file)
        if raw is not None and not isinstance(raw, dict):
            raise SpecError("expected a mapping at the top level", source=config_file)
        data.update(raw or {})
        source = config_file
    for name in model.model_fields:
        val = env.get("ATOLL_" + name.upper())
        if val is not None and val != "":
            data[name] = val
    for name, val in flags.items():
        if val is not None:
            data[name] = val
    origin = {n: ("flag --" + n.replace("_", "-")) if flags.get(n) is not None
              else ("environment ATOLL_" + n.upper()) if env.get("ATOLL_" + n.upper())
              else source for n in model.model_fields}
    try:
        return parse_obj(model, data, source=None)
    except SpecError as exc:
        # Name where the bad value came from: the flag, the variable or the file.
        where = origin.get((exc.path or "").split(".")[0].split("[")[0], source)
        raise SpecError(exc.message.split(": ", 1)[-1] if exc.path else exc.message,
                        source=where, path=exc.path) from None
