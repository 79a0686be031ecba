"""Dockerfiles: hadolint, pinned base images, what they copy, and the two scripts they ship."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
import subprocess
import sys

import pytest

from .deploy_helpers import DEPLOY, DOCKERFILES, HADOLINT_CONFIG, REPO, run, tool


def test_dockerfiles_present():
    names = {p.name for p in DOCKERFILES}
    assert {"coordinator.Dockerfile", "agent.Dockerfile", "agent-cpu.Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    res = run([tool("hadolint"), "--config", str(HADOLINT_CONFIG), "--no-color", str(dockerfile)])
    assert res.returncode == 0, f"hadolint {dockerfile.name}:\n{res.stdout}{res.stderr}"


def test_hadolint_config_still_catches_problems(tmp_path):
    """The config fails the lint on any finding: an unpinned image, a missing
    --no-install-recommends, `latest`, and an untrusted registry are all reported."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n"
                   "FROM python:latest\nFROM quay.io/someone/image:1.0\n")
    res = run([tool("hadolint"), "--config", str(HADOLINT_CONFIG), "--no-color", str(bad)])
    assert res.returncode != 0
    for rule in ("DL3006", "DL3015", "DL3007", "DL3026"):
        assert rule in res.stdout, (rule, res.stdout)


def _instructions(path):
    text = re.sub(r"\\\n", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _base_images(path) -> list[str]:
    lines = _instructions(path)
    args = {}
    for line in lines:
        m = re.match(r"ARG\s+(\w+)=(\S+)", line)
        if m:
            args[m.group(1)] = m.group(2)
    out = []
    for line in lines:
        m = re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)", line)
        if m:
            image = re.sub(r"\$\{?(\w+)\}?", lambda v: args.get(v.group(1), v.group(0)), m.group(1))
            stages = {re.match(r"FROM\s+\S+\s+AS\s+(\w+)", ln, re.I).group(1)
                      for ln in lines if re.match(r"FROM\s+\S+\s+AS\s+\w+", ln, re.I)}
            if image not in stages:
                out.append(image)
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_pinned(dockerfile):
    images = _base_images(dockerfile)
    assert images
    for image in images:
        assert "$" not in image, f"{dockerfile.name}: unresolved {image}"
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), \
            f"{dockerfile.name}: {image} is not pinned to a version tag"
    if dockerfile.name == "agent.Dockerfile":
        assert all(re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", i) for i in images), images
    else:
        assert all(i.startswith("python:3.") for i in images), images


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_the_locked_set_and_runs_as_non_root(dockerfile):
    """Nothing is resolved at build time: every dependency but the GPU image's CUDA torch comes
    from the run-time subsets of the lock with their hashes, atoll itself without dependencies,
    and the build ends with `pip check`."""
    lines = _instructions(dockerfile)
    installs = [cmd.strip() for ln in lines if ln.startswith("RUN ")
                for cmd in ln[4:].split("&&") if "pip install" in cmd]
    gpu = dockerfile.name == "agent.Dockerfile"
    wanted = ["requirements/runtime.txt"] + ([] if gpu else ["requirements/runtime-torch-cpu.txt"])
    for req in wanted:
        (cmd,) = [c for c in installs if c.endswith("-r " + req)]
        assert "--require-hashes" in cmd and "--no-deps" in cmd, cmd
        assert ("download.pytorch.org/whl/cpu" in cmd) == req.endswith("torch-cpu.txt"), cmd
    resolving = [c for c in installs if "--no-deps" not in c]
    if gpu:
        assert resolving == ["pip install torch==2.13.0"], \
            "the GPU image resolves only the CUDA torch (which pins triton and the CUDA libraries)"
        assert not any("download.pytorch.org/whl/cpu" in c for c in installs)
    else:
        assert not resolving, resolving
    (own,) = [c for c in installs if c.endswith(" .")]
    assert "--no-deps" in own and "--no-build-isolation" in own, own
    assert any("pip check" in ln for ln in lines if ln.startswith("RUN ") and "pip install" in ln)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert any(ln.startswith("HEALTHCHECK ") for ln in lines)
    assert lines[-1].startswith("ENTRYPOINT ")


@pytest.mark.parametrize("dockerfile", [p for p in DOCKERFILES if p.name != "agent.Dockerfile"],
                         ids=lambda p: p.name)
def test_cpu_images_run_the_python_the_lock_is_resolved_for(dockerfile):
    lock = (REPO / "requirements" / "lock.txt").read_text()
    lock_py = re.search(r"autogenerated by pip-compile with Python (\d+\.\d+)", lock).group(1)
    for image in _base_images(dockerfile):
        assert re.match(rf"python:{re.escape(lock_py)}\.\d+-", image), (image, lock_py)


def _dockerignore_allows(rel: str) -> bool:
    allowed = False
    for pat in (REPO / ".dockerignore").read_text().splitlines():
        pat = pat.strip()
        if not pat or pat.startswith("#"):
            continue
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if pat == "**" or rel == pat or rel.startswith(pat + "/"):
            allowed = neg
    return allowed


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_files_exist_and_reach_the_build_context(dockerfile):
    for line in _instructions(dockerfile):
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        *sources, _dest = line.split()[1:]
        for src in sources:
            rel = src.rstrip("/")
            assert (REPO / rel).exists(), f"{dockerfile.name}: COPY {src}: no such file in the repository"
            assert _dockerignore_allows(rel), f"{dockerfile.name}: COPY {src}: excluded by .dockerignore"
    # everything `pip install .` needs is copied: the packages pyproject maps
    text = dockerfile.read_text()
    for folder in ("atoll", "coordinator", "agent", "planner", "kernels", "proto"):
        assert f"COPY {folder}/ {folder}/" in text, folder


# --- the scripts the images ship -----------------------------------------------------------

def _fake_atoll(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "atoll"
    fake.write_text('#!/bin/sh\necho "args: $*"\necho "config: $ATOLL_CONFIG"\ncat "$ATOLL_CONFIG"\n')
    fake.chmod(0o755)
    return bin_dir


def test_agent_entrypoint_writes_a_valid_node_yaml(tmp_path):
    from atoll.specs.common import load_yaml
    from atoll.specs.node import NodeConfig

    env = {"PATH": f"{_fake_atoll(tmp_path)}:{os.environ['PATH']}", "ATOLL_CONFIG": str(tmp_path / "node.yaml"),
           "ATOLL_NODE_NAME": "gpu-node-7", "ATOLL_NODE_TIER": "renter", "ATOLL_NODE_REGION": "eu-west",
           "ATOLL_NODE_PRICE_PER_HOUR": "1.25", "ATOLL_NODE_PREEMPTIBLE": "true", "ATOLL_NODE_HARDWARE": "a100"}
    res = subprocess.run(["sh", str(DEPLOY / "docker" / "agent-entrypoint.sh"), "--log-level", "info"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "args: agent --log-level info" in res.stdout
    node = load_yaml(NodeConfig, tmp_path / "node.yaml")
    assert (node.name, node.tier, node.region, node.price_per_hour, node.preemptible) == \
        ("gpu-node-7", "renter", "eu-west", 1.25, True)
    assert node.labels == {"hardware": "a100"}


def test_agent_entrypoint_keeps_an_existing_node_yaml(tmp_path):
    own = DEPLOY / "compose" / "agent-cpu-node.yaml"
    env = {"PATH": f"{_fake_atoll(tmp_path)}:{os.environ['PATH']}", "ATOLL_CONFIG": str(own),
           "ATOLL_NODE_NAME": "ignored"}
    res = subprocess.run(["sh", str(DEPLOY / "docker" / "agent-entrypoint.sh")], env=env, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert f"config: {own}" in res.stdout and "ignored" not in res.stdout


def test_healthcheck_script(port):
    """healthcheck.py exits 0 for SERVING, 1 for NOT_SERVING and for nothing listening."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(ThreadPoolExecutor(2))
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    bound = server.add_insecure_port("127.0.0.1:0")
    server.start()
    script = str(DEPLOY / "docker" / "healthcheck.py")

    def check(env):
        return subprocess.run([sys.executable, script], env={**{k: v for k, v in os.environ.items() if not k.startswith("ATOLL_")}, **env}, capture_output=True,
                              text=True, timeout=30)
    try:
        hs.set("", health_pb2.HealthCheckResponse.SERVING)
        assert check({"ATOLL_LISTEN": f"0.0.0.0:{bound}"}).returncode == 0
        hs.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        res = check({"ATOLL_LISTEN": f"0.0.0.0:{bound}"})
        assert res.returncode == 1 and "NOT_SERVING" in res.stderr
    finally:
        server.stop(None)
    res = check({"ATOLL_HEALTHCHECK_ADDRESS": f"127.0.0.1:{port}"})     # a free port: nothing listens
    assert res.returncode == 1 and "UNAVAILABLE" in res.stderr
