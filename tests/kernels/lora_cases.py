"""Builders for batched-LoRA test cases: adapter popularity, decode/prefill layouts, packed slices.

``make_case(**overrides)`` returns a :class:`Case` with random weights whose every field can be
overridden; the defaults are small enough for the Triton interpreter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from atoll.kernels.lora import LoraMeta

POPULARITIES = ("identical", "distinct", "uniform", "zipf1.5", "skewed", "with_none")
SLICES = {                       # packed output layouts: widths of the slices
    "single": (37,),
    "gate_up": (45, 45),
    "qkv": (40, 17, 17),         # GQA-like: q wider than k and v, odd widths
    "qkv_aligned": (48, 16, 16),  # 16-byte multiples in fp32: the torch backend's grouped path
}
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (5e-3, 5e-3), torch.bfloat16: (2e-2, 2e-2)}


def request_slots(popularity: str, n_req: int, n_slots: int, rng: np.random.Generator) -> list[int]:
    """One slot per request under an adapter popularity; -1 = the request uses no adapter."""
    if popularity == "identical":
        return [0] * n_req
    if popularity == "distinct":
        assert n_slots >= n_req
        return [int(s) for s in rng.permutation(n_slots)[:n_req]]
    if popularity == "uniform":
        k = math.ceil(math.sqrt(n_req))
        return [int(s) for s in rng.integers(0, k, n_req)]
    if popularity == "zipf1.5":
        p = 1.0 / np.arange(1, n_slots + 1) ** 1.5
        return [int(s) for s in rng.choice(n_slots, n_req, p=p / p.sum())]
    if popularity == "skewed":                       # [1, B-1]: one request on A, the rest on B
        out = [1] * n_req
        out[int(rng.integers(0, n_req))] = 0
        return out
    if popularity == "with_none":                    # uniform, with about a third of rows bare
        k = math.ceil(math.sqrt(n_req))
        out = [int(s) for s in rng.integers(0, k, n_req)]
        for i in rng.choice(n_req, max(1, n_req // 3), replace=False):
            out[int(i)] = -1
        out[0] = out[0] if out[0] >= 0 else 0         # keep at least one adapter row
        return out
    if popularity == "all_none":
        return [-1] * n_req
    raise ValueError(popularity)


@dataclass
class Case:
    x: torch.Tensor          # [T, H_in]
    a: torch.Tensor          # [S, N, R, H_in]
    b: torch.Tensor          # [S, H_out, R]
    scales: torch.Tensor     # [S] fp32
    y0: torch.Tensor         # [T, H_out] initial projection output
    slots: torch.Tensor      # [T] int32
    meta: LoraMeta
    offsets: tuple[int, ...]


def token_slots(popularity: str, phase: str, n_req: int, n_slots: int,
                rng: np.random.Generator) -> list[int]:
    """Rows of one step: decode = one row per request; prefill = 1..6 consecutive rows each."""
    per_req = request_slots(popularity, n_req, n_slots, rng)
    if phase == "decode":
        return per_req
    lens = rng.integers(1, 7, n_req)
    return [s for s, ln in zip(per_req, lens) for _ in range(int(ln))]


def make_case(popularity: str = "uniform", phase: str = "decode", dtype=torch.float32,
              layout: str = "qkv", rank: int = 8, h_in: int = 129, n_req: int = 11,
              seed: int = 0, slots: list[int] | None = None) -> Case:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    n_slots = n_req + 2
    if slots is None:
        slots = token_slots(popularity, phase, n_req, n_slots, rng)
    widths = SLICES[layout]
    offsets = tuple(int(v) for v in np.concatenate([[0], np.cumsum(widths)]))
    t, n, h_out = len(slots), len(widths), offsets[-1]
    x = torch.randn(t, h_in, generator=gen).to(dtype)
    a = (torch.randn(n_slots, n, rank, h_in, generator=gen) / math.sqrt(h_in)).to(dtype)
    b = torch.randn(n_slots, h_out, rank, generator=gen).to(dtype)
    scales = (torch.rand(n_slots, generator=gen) + 0.5).float()
    y0 = torch.randn(t, h_out, generator=gen).to(dtype)
    st = torch.tensor(slots, dtype=torch.int32)
    return Case(x, a, b, scales, y0, st, LoraMeta.build(st), offsets)


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype) -> None:
    """Elementwise |got - want| <= atol * max(1, max|want|) + rtol * |want| (per-dtype tolerances)."""
    rtol, atol = TOL[dtype]
    mag = max(1.0, float(want.float().abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol * mag)


def is_close(got: torch.Tensor, want: torch.Tensor, dtype) -> bool:
    try:
        assert_close(got, want, dtype)
    except AssertionError:
        return False
    return True
