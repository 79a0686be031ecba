"""Does a model fit this host's memory? Asked before a checkpoint is read.

A pushed model is a tenant's input: a GGUF file is dequantized to fp32 (Q4_0 weights grow about
7x) and a bf16 checkpoint served in fp32 doubles, so a file that fits on disk may not fit in
memory, and an agent killed by the kernel's OOM killer takes every replica, entry and data-plane
hop of its host with it. The load is refused instead, FAILED_PRECONDITION naming the sizes
(the replica reports it as its failure), when what it needs is more than ``HEADROOM`` of the
memory the kernel says is available (``MemAvailable``; no check where that is unknown).
"""

from __future__ import annotations

from atoll.core.errors import FailedPrecondition

HEADROOM = 0.9


def available_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo (Linux), in bytes; None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_fits(need: int, what: str, source: str) -> None:
    """Refuse a load that needs ``need`` bytes of host memory when fewer are available."""
    avail = available_bytes()
    if avail is not None and need > HEADROOM * avail:
        raise FailedPrecondition(f"{what} needs {_size(need)} of memory to load and this host has "
                                 f"{_size(avail)} available: {source}",
                                 hint="serve a smaller or more quantized model here, or place it on a host "
                                      "with more memory")
