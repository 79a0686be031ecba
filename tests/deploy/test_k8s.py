"""Kubernetes manifests: kubernetes-validate (strict schema validation) and cross-references
between the objects (selectors, ports, secrets, probes, settings)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml

from .deploy_helpers import COMPOSE, DEPLOY, K8S, load_yaml_docs, run, tool

# The oldest Kubernetes the manifests support (gRPC probes are GA since 1.27) and the newest
# schema kubernetes-validate bundles (its default).
K8S_VERSIONS = ["1.28.0", None]


def _validate(paths, version):
    cmd = [tool("kubernetes-validate"), "--strict"] + (["-k", version] if version else []) + [str(p) for p in paths]
    return run(cmd)


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "newest")
def test_kubernetes_validate(version):
    assert K8S, "no manifests in deploy/k8s"
    res = _validate(K8S, version)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "ERROR" not in out and "WARN" not in out, f"kubernetes-validate:\n{out}"
    assert out.count("passed for resource") == sum(len(load_yaml_docs(p)) for p in K8S), out


def test_kubernetes_validate_rejects_a_broken_manifest(tmp_path):
    """The check above can fail: an unknown field and a wrong type are refused."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((DEPLOY / "k8s" / "30-coordinator.yaml").read_text()
                   .replace("periodSeconds: 10", "periodSecond: 10").replace("port: 7070\n", "port: seven\n", 1))
    res = _validate([bad], "1.28.0")
    assert res.returncode != 0 and "periodSecond" in res.stdout + res.stderr


# --- cross-references --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def objs():
    return [d for p in K8S for d in load_yaml_docs(p)]


def _find(objs, kind, name=None):
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''} in deploy/k8s"
    return found[0] if name else found


def _workloads(objs):
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def _containers(w, init=False):
    spec = w["spec"]["template"]["spec"]
    return spec.get("containers", []) + (spec.get("initContainers", []) if init else [])


def _env(container) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _known_settings():
    from atoll.specs.config import AgentSettings, CoordinatorSettings

    coord = {"ATOLL_" + f.upper() for f in CoordinatorSettings.model_fields}
    node = set(re.findall(r"ATOLL_NODE_[A-Z_]+", (DEPLOY / "docker" / "agent-entrypoint.sh").read_text()))
    agent = {"ATOLL_" + f.upper() for f in AgentSettings.model_fields} | node
    return coord, agent


def test_namespaced_and_labelled(objs):
    for o in objs:
        assert o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "atoll", o["metadata"]["name"]
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "atoll", o["metadata"]["name"]


def test_selectors_match_their_pods(objs):
    for w in _workloads(objs):
        sel = w["spec"]["selector"]["matchLabels"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert sel.items() <= labels.items(), w["metadata"]["name"]
    for svc in _find(objs, "Service"):
        pods = [w for w in _workloads(objs)
                if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, f"Service {svc['metadata']['name']} selects no workload"
        names = {p.get("name") for w in pods for c in _containers(w) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, (svc["metadata"]["name"], port)


def test_references_resolve(objs):
    secrets = {s["metadata"]["name"]: set(s.get("stringData", {})) | set(s.get("data", {}))
               for s in _find(objs, "Secret")}
    configmaps = {c["metadata"]["name"]: set(c.get("data", {})) for c in _find(objs, "ConfigMap")}
    claims = {c["metadata"]["name"] for c in objs if c["kind"] == "PersistentVolumeClaim"}
    for w in _workloads(objs):
        for c in _containers(w, init=True):
            defined = set()
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], ()), (w["metadata"]["name"], ref)
                for var in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                    assert var in defined, f"{c['name']}: ${var} used before it is defined"
                defined.add(e["name"])
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] in configmaps
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            vols = {v["name"] for v in w["spec"]["template"]["spec"].get("volumes", [])}
            vols |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
            assert mounts <= vols, (c["name"], mounts - vols)
        for v in w["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims


def _port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def test_coordinators(objs):
    coord_settings, _ = _known_settings()
    sts = _find(objs, "StatefulSet", "atoll-coordinator")
    (c,) = _containers(sts)
    env = _env(c)
    assert set(k for k in env if k.startswith("ATOLL_")) <= coord_settings, set(env) - coord_settings
    grpc_port = _port_of(env["ATOLL_LISTEN"]["value"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": _port_of(env["ATOLL_METRICS_LISTEN"]["value"])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # the overall status "": SERVING on the leader and on a standby (a standby answers reads)
        assert c[probe]["grpc"]["port"] == grpc_port and not c[probe]["grpc"].get("service"), probe
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    # several replicas share PostgreSQL; each advertises its stable name under the headless Service
    assert sts["spec"]["replicas"] >= 2
    headless = _find(objs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["ATOLL_ADVERTISE"]["value"] == f"$(POD_NAME).{sts['spec']['serviceName']}.atoll.svc:{grpc_port}"
    # ATOLL_DATABASE_URL points at the PostgreSQL Service and database
    url = env["ATOLL_DATABASE_URL"]["value"]
    m = re.fullmatch(r"postgresql://(\w+):\$\(POSTGRES_PASSWORD\)@([\w.-]+):(\d+)/(\w+)", url)
    assert m, url
    pg = _find(objs, "StatefulSet", "postgres")
    pg_env = {e["name"]: e.get("value") for e in _containers(pg)[0]["env"]}
    assert m.group(1) == pg_env["POSTGRES_USER"] and m.group(4) == pg_env["POSTGRES_DB"]
    assert m.group(2).split(".")[0] == "postgres" and int(m.group(3)) == 5432
    assert _find(objs, "Service", "postgres")["spec"]["ports"][0]["port"] == 5432


def test_agent_daemonset(objs):
    from atoll.specs.config import split_addresses

    _, agent_settings = _known_settings()
    ds = _find(objs, "DaemonSet", "atoll-agent")
    spec = ds["spec"]["template"]["spec"]
    assert "nvidia.com/gpu.present" in spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    (c,) = _containers(ds)
    env = _env(c)
    cm = _find(objs, "ConfigMap", "atoll-agent-node")
    names = {k for k in env if k.startswith("ATOLL_")} | set(cm["data"])
    assert names <= agent_settings, names - agent_settings
    worker_port = _port_of(env["ATOLL_WORKER_LISTEN"]["value"])
    assert env["ATOLL_WORKER_LISTEN"]["value"].startswith("$(POD_IP):"), "the agent must advertise a routable address"
    entry_port = _port_of(env["ATOLL_ENTRY_LISTEN"]["value"])
    assert env["ATOLL_ENTRY_LISTEN"]["value"].startswith("$(POD_IP):"), "clients must reach the agent's entry"
    assert [p["containerPort"] for p in c["ports"]] == [worker_port, entry_port]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == worker_port, probe
    # the agent knows every coordinator replica by its stable name
    sts = _find(objs, "StatefulSet", "atoll-coordinator")
    grpc_port = _port_of(_env(_containers(sts)[0])["ATOLL_LISTEN"]["value"])
    want = [f"atoll-coordinator-{i}.{sts['spec']['serviceName']}.atoll.svc:{grpc_port}"
            for i in range(sts["spec"]["replicas"])]
    assert split_addresses(env["ATOLL_COORDINATOR"]["value"]) == want


def test_agent_configmap_makes_a_valid_node_yaml(objs, tmp_path):
    """The DaemonSet's ConfigMap, through the image's entry point, gives a node.yaml atoll accepts."""
    from atoll.specs.common import load_yaml
    from atoll.specs.node import NodeConfig

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "atoll").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "atoll").chmod(0o755)
    cm = _find(objs, "ConfigMap", "atoll-agent-node")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "ATOLL_CONFIG": str(tmp_path / "node.yaml"),
           "ATOLL_NODE_NAME": "gpu-node-1", **cm["data"]}
    res = subprocess.run(["sh", str(DEPLOY / "docker" / "agent-entrypoint.sh")], env=env, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    node = load_yaml(NodeConfig, tmp_path / "node.yaml")
    assert node.name == "gpu-node-1" and node.labels.get("hardware") == cm["data"]["ATOLL_NODE_HARDWARE"]


def test_pods_are_hardened(objs):
    for w in _workloads(objs):
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"].get("runAsNonRoot") is True, w["metadata"]["name"]
        for c in _containers(w):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["name"]
            assert c["resources"]["requests"], c["name"]
            assert c.get("readinessProbe") and c.get("livenessProbe"), c["name"]


def test_images_match_compose_and_dockerfiles(objs):
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    images = {c["image"] for w in _workloads(objs) for c in _containers(w, init=True)}
    coordinator = compose["coordinator"]["image"]
    assert coordinator in images
    version = coordinator.rsplit(":", 1)[1]
    assert f"atoll/agent:{version}" in images
    assert compose["agent-cpu"]["image"] == f"atoll/agent-cpu:{version}"
    assert compose["postgres"]["image"] in images
    for image in images:
        if image.startswith("atoll/"):
            name = image.split("/")[1].split(":")[0]
            assert (DEPLOY / "docker" / f"{name}.Dockerfile").exists(), image
