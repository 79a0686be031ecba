"""The compose file parses and what it names exists and agrees: build files, mounted files,
services, ports, Prometheus targets, Grafana provisioning and the agent's node.yaml."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from .deploy_helpers import COMPOSE, DASHBOARD, PROMETHEUS_CONFIG, REPO

HERE = COMPOSE.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(svc) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with the variables unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _mounts(svc):
    for v in svc.get("volumes", []):
        src, dst, *_ = v.split(":")
        yield src, dst


def test_services(compose):
    assert {"coordinator", "postgres", "prometheus", "grafana", "agent-cpu"} <= set(compose["services"])


def test_builds_and_images(compose):
    for name, svc in compose["services"].items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and re.search(r"\d", tag) and tag != "latest", f"{name}: image {image} is not pinned"
        if "build" in svc:
            ctx = (HERE / svc["build"]["context"]).resolve()
            assert ctx == REPO, f"{name}: build context must be the repository root"
            dockerfile = ctx / svc["build"]["dockerfile"]
            assert dockerfile.exists(), f"{name}: {dockerfile} missing"
            assert image.startswith("atoll/") and dockerfile.name == image.split("/")[1].split(":")[0] + ".Dockerfile"


def test_mounts_and_volumes_exist(compose):
    declared = set(compose.get("volumes", {}))
    for name, svc in compose["services"].items():
        for src, _dst in _mounts(svc):
            if src.startswith((".", "/")):
                assert (HERE / src).exists(), f"{name}: bind mount {src} does not exist"
            else:
                assert src in declared, f"{name}: volume {src} is not declared"


def test_dependencies(compose):
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep in deps:
            assert dep in services, f"{name} depends on unknown {dep}"
            if isinstance(deps, dict) and deps[dep].get("condition") == "service_healthy":
                other = services[dep]
                has_check = "healthcheck" in other or (
                    "build" in other and "HEALTHCHECK" in (REPO / other["build"]["dockerfile"]).read_text())
                assert has_check, f"{name} waits for {dep} to be healthy but {dep} has no health check"


def test_coordinator_and_agent_settings(compose):
    from atoll.specs.config import AgentSettings, CoordinatorSettings

    services = compose["services"]
    coord = _env(services["coordinator"])
    known = {"ATOLL_" + f.upper() for f in CoordinatorSettings.model_fields}
    assert set(coord) <= known, set(coord) - known
    grpc_port = coord["ATOLL_LISTEN"].rsplit(":", 1)[1]
    assert coord["ATOLL_ADVERTISE"] == f"coordinator:{grpc_port}"
    assert f"{grpc_port}:{grpc_port}" in services["coordinator"]["ports"]
    url = _interpolate(coord["ATOLL_DATABASE_URL"])
    pg = _env(services["postgres"])
    assert url == (f"postgresql://{pg['POSTGRES_USER']}:{_interpolate(pg['POSTGRES_PASSWORD'])}"
                   f"@postgres:5432/{pg['POSTGRES_DB']}")

    agent = _env(services["agent-cpu"])
    known = {"ATOLL_" + f.upper() for f in AgentSettings.model_fields}
    assert set(agent) <= known, set(agent) - known
    assert agent["ATOLL_COORDINATOR"] == f"coordinator:{grpc_port}"
    assert agent["ATOLL_JOIN_TOKEN"] == coord["ATOLL_JOIN_TOKEN"]
    assert len(_interpolate(coord["ATOLL_JOIN_TOKEN"])) >= 8          # CoordinatorSettings.join_token
    host = agent["ATOLL_WORKER_LISTEN"].rsplit(":", 1)[0]
    assert host == services["agent-cpu"].get("hostname", "agent-cpu"), "the agent must advertise its own name"


def test_agent_node_yaml(compose):
    from atoll.specs.common import load_yaml
    from atoll.specs.node import NodeConfig

    svc = compose["services"]["agent-cpu"]
    config = _env(svc)["ATOLL_CONFIG"]
    (src,) = [s for s, d in _mounts(svc) if d == config]
    node = load_yaml(NodeConfig, HERE / src)
    assert node.simulated_hardware and node.simulated_hardware.gpus, "the CPU agent declares simulated GPUs"


def test_prometheus_scrapes_the_coordinator(compose):
    services = compose["services"]
    prom = services["prometheus"]
    conf_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    mounts = dict((d, s) for s, d in _mounts(prom))
    assert (HERE / mounts[conf_path]).resolve() == PROMETHEUS_CONFIG
    conf = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    conf_dir = conf_path.rsplit("/", 1)[0]
    for rule_file in conf["rule_files"]:            # mounted next to the config, as in the repository
        assert (HERE / mounts[f"{conf_dir}/{rule_file}"]).resolve() == PROMETHEUS_CONFIG.parent / rule_file
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    target = jobs["atoll-coordinator"]["static_configs"][0]["targets"][0]
    metrics_port = _env(services["coordinator"])["ATOLL_METRICS_LISTEN"].rsplit(":", 1)[1]
    assert target == f"coordinator:{metrics_port}"


def test_grafana_provisioning(compose):
    graf = compose["services"]["grafana"]
    mounts = dict((d, s) for s, d in _mounts(graf))
    prov = HERE / mounts["/etc/grafana/provisioning"]
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((prov / "dashboards" / "atoll.yaml").read_text())["providers"]
    dash_mounts = [d for d, s in mounts.items() if (HERE / s).resolve() == DASHBOARD]
    assert dash_mounts and dash_mounts[0].rsplit("/", 1)[0] == provider["options"]["path"]
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    current = {v["name"]: v.get("current", {}) for v in variables}
    assert current["datasource"].get("value") == ds["uid"]


def test_docker_compose_config_when_available():
    """With the docker compose plugin installed, compose itself must accept the file."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        return      # the structural checks above still ran; CI images without compose end here
    res = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "GRAFANA_ADMIN_PASSWORD": "a-real-one"})
    assert res.returncode == 0, res.stderr
    env = {k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    res = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in res.stderr


def test_monitoring_is_not_published_to_the_network(compose):
    """Prometheus has no authentication (its query API serves every metric it scraped, a
    /metrics token notwithstanding) and its lifecycle API would let anyone stop it; Grafana's
    admin password had a default: both publish on loopback only, Prometheus without the
    lifecycle API, Grafana with no default password and no anonymous viewers."""
    services = compose["services"]
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    assert not any("lifecycle" in a for a in services["prometheus"]["command"])
    env = services["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
