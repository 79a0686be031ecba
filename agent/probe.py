"""Hardware probe: what a host can learn about itself (GPUs, CPU, memory, disk, version).

GPUs come from ``nvidia-smi`` when it is present; a ``simulated_hardware`` block in node.yaml
replaces the GPU list (and marks the node simulated) for tests and demos.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from atoll.core.version import __version__
from atoll.specs.node import NodeConfig

GIB = 1024 ** 3
MIB = 1024 ** 2


def _meminfo_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def probe_gpus(timeout: float = 5.0) -> list[dict]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total,memory.free,compute_cap",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=timeout, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        try:
            gpus.append({"index": int(parts[0]), "name": parts[1],
                         "memory_total_bytes": int(float(parts[2]) * MIB),
                         "memory_free_bytes": int(float(parts[3]) * MIB),
                         "compute_capability": parts[4]})
        except ValueError:
            continue
    return gpus


def probe(config: NodeConfig, state_dir: str = ".") -> dict:
    """Capacity as a plain dict (the JSON form of ``atoll.v1.NodeCapacity``)."""
    sim = config.simulated_hardware
    try:
        disk = shutil.disk_usage(state_dir).free
    except OSError:
        disk = 0
    cap = {"cpu_cores": os.cpu_count() or 1, "memory_bytes": _meminfo_bytes(), "disk_bytes": disk,
           "agent_version": __version__, "simulated": False, "gpus": []}
    if sim is not None:
        gpus = []
        for g in sim.gpus:
            for _ in range(g.count):
                mem = int(g.memory_gb * GIB)
                gpus.append({"index": len(gpus), "name": g.name, "memory_total_bytes": mem,
                             "memory_free_bytes": mem, "compute_capability": g.compute_capability})
        cap["gpus"] = gpus
        cap["simulated"] = True
        if sim.cpu_cores:
            cap["cpu_cores"] = sim.cpu_cores
        if sim.memory_gb:
            cap["memory_bytes"] = int(sim.memory_gb * GIB)
    else:
        cap["gpus"] = probe_gpus()
    return cap
