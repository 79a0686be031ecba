"""Batched multi-LoRA: ``y += scale[slot] * (x @ A[slot].T) @ B[slot].T`` with a slot per row.

Shapes (T tokens in the step, S adapter slots, N packed slices, R = max rank, zero-padded):

- ``x``:      [T, H_in]            activations (fp32 / fp16 / bf16)
- ``a``:      [S, N, R, H_in]      stacked "shrink" weights, one [R, H_in] matrix per slice
- ``b``:      [S, H_out_total, R]  stacked "expand" weights; slice n owns output columns
                                   ``slice_offsets[n]:slice_offsets[n+1]``
- ``scales``: [S] float32          alpha/r (or alpha/sqrt(r) for rsLoRA) per slot
- ``h``:      [N, T, R] float32    shrink output (fp32 accumulation)
- ``y``:      [T, H_out_total]     projection output, updated IN PLACE by expand

Rows whose slot is -1 use no adapter: expand leaves them untouched. A packed projection (q,k,v
or gate,up) is one call with N slices: the single shrink reads ``x`` once for all slices.

``LoraMeta.build(token_slots)`` describes the step once (segments of consecutive rows sharing a
slot for SGMV, the per-row slot for BGMV); :func:`plan_step` then makes the backend's per-step
plan from it (the torch backend's batching decisions, the Triton launches' device offsets), and
every layer passes that plan to :func:`lora_apply` (plan once per step, run in every layer).

``backend``: "torch" (vectorized pure torch, :mod:`atoll.kernels.torch_lora`: the CPU path and
GPU fallback), "triton" (GPU, or CPU tensors under ``TRITON_INTERPRET=1``; launchers in
:mod:`atoll.kernels.triton_lora`) or "ref" (:func:`shrink_ref` / :func:`expand_ref`, the fp32
segment loops every other backend is tested against).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atoll.kernels import torch_lora
from atoll.kernels.torch_lora import DEFAULT_POLICY, TorchLoraPlan, TorchLoraPolicy

BACKENDS = ("torch", "triton", "ref")


@dataclass(frozen=True)
class LoraMeta:
    """Per-step batch metadata, built once per model step and reused by every layer."""

    token_slots: torch.Tensor  # [T] int32: slot of each row, -1 = no adapter
    seg_starts: torch.Tensor   # [G] int32: first row of each segment
    seg_lens: torch.Tensor     # [G] int32: rows in each segment
    seg_slots: torch.Tensor    # [G] int32: slot of each segment (-1 allowed)
    max_seg_len: int
    num_tokens: int
    any_lora: bool             # False when every row is -1 (skip all LoRA work)

    @staticmethod
    def build(token_slots: torch.Tensor) -> "LoraMeta":
        """Segments = maximal runs of equal slots in ``token_slots`` (order is kept)."""
        if token_slots.dim() != 1:
            raise ValueError(f"token_slots must be 1-D [T], got shape {tuple(token_slots.shape)}")
        slots = token_slots.to(torch.int32)
        t = int(slots.numel())
        if t == 0:
            z = torch.zeros(0, dtype=torch.int32, device=slots.device)
            return LoraMeta(slots, z, z, z, 0, 0, False)
        change = torch.ones(t, dtype=torch.bool, device=slots.device)
        change[1:] = slots[1:] != slots[:-1]
        starts = torch.nonzero(change, as_tuple=False).flatten().to(torch.int32)
        ends = torch.cat([starts[1:], torch.tensor([t], dtype=torch.int32, device=slots.device)])
        lens = (ends - starts).to(torch.int32)
        seg_slots = slots[starts.long()]
        return LoraMeta(slots, starts, lens, seg_slots, int(lens.max().item()), t,
                        bool((slots >= 0).any().item()))


class TritonLoraPlan:
    """The Triton backend's per-step plan: each packed layout's ``slice_offsets`` as an int32
    tensor on the activations' device, copied on first use in the step and read by every
    layer's expand launches (no host copy per launch)."""

    def __init__(self, meta: LoraMeta):
        self.meta = meta
        self._offsets: dict[tuple, torch.Tensor] = {}

    def offsets(self, slice_offsets, device: torch.device) -> torch.Tensor:
        key = (tuple(int(o) for o in slice_offsets), str(device))
        t = self._offsets.get(key)
        if t is None:
            t = self._offsets[key] = torch.tensor(key[0], dtype=torch.int32, device=device)
        return t


def plan_step(meta: LoraMeta, *, backend: str = "torch",
              policy: TorchLoraPolicy = DEFAULT_POLICY) -> TorchLoraPlan | TritonLoraPlan | None:
    """The per-step plan ``backend`` reuses in every layer: a :class:`TorchLoraPlan` (under
    ``policy``) for "torch", a :class:`TritonLoraPlan` for "triton", None for "ref"."""
    if backend == "torch":
        return TorchLoraPlan(meta, policy)
    if backend == "triton":
        return TritonLoraPlan(meta)
    if backend == "ref":
        return None
    raise ValueError(f"unknown LoRA backend {backend!r}: use one of {BACKENDS}")


def _torch_plan(meta: LoraMeta, plan) -> TorchLoraPlan:
    if plan is None:
        return TorchLoraPlan(meta)
    if not isinstance(plan, TorchLoraPlan) or plan.meta is not meta:
        raise ValueError("plan must be the TorchLoraPlan made by plan_step() from this step's LoraMeta")
    return plan


def _triton_offsets(plan, slice_offsets, device: torch.device) -> torch.Tensor | None:
    if plan is None:
        return None
    if not isinstance(plan, TritonLoraPlan):
        raise ValueError("plan must be the TritonLoraPlan made by plan_step(backend='triton')")
    return plan.offsets(slice_offsets, device)


def _check(x, a, b=None, meta=None):
    if x.dim() != 2:
        raise ValueError(f"x must be [T, H_in], got {tuple(x.shape)}")
    if a.dim() != 4 or a.shape[-1] != x.shape[1]:
        raise ValueError(f"a must be [S, N, R, H_in={x.shape[1]}], got {tuple(a.shape)}")
    if meta is not None and meta.num_tokens != x.shape[0]:
        raise ValueError(f"meta has {meta.num_tokens} rows, x has {x.shape[0]}")


def shrink_ref(x: torch.Tensor, a: torch.Tensor, meta: LoraMeta) -> torch.Tensor:
    """Reference shrink, a loop over segments in fp32. Returns h [N, T, R] float32."""
    _check(x, a, meta=meta)
    _, n, r, _ = a.shape
    h = torch.zeros(n, x.shape[0], r, dtype=torch.float32, device=x.device)
    for s0, ln, slot in zip(meta.seg_starts.tolist(), meta.seg_lens.tolist(), meta.seg_slots.tolist()):
        if slot < 0:
            continue
        xs = x[s0:s0 + ln].float()                       # [L, H_in]
        h[:, s0:s0 + ln] = torch.einsum("lh,nrh->nlr", xs, a[slot].float())
    return h


def _check_slices(y, n: int, b, slice_offsets):
    if len(slice_offsets) != n + 1 or slice_offsets[-1] != y.shape[1] or b.shape[1] != y.shape[1]:
        raise ValueError(f"slice_offsets {slice_offsets} must have {n + 1} entries ending at "
                         f"H_out={y.shape[1]} (= b.shape[1]={b.shape[1]})")


def expand_ref(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scales: torch.Tensor,
               meta: LoraMeta, slice_offsets: tuple[int, ...]) -> torch.Tensor:
    """Reference expand, in place on ``y``: y[rows, slice n] += scale * h[n, rows] @ b[slot, slice n].T"""
    n = h.shape[0]
    _check_slices(y, h.shape[0], b, slice_offsets)
    for s0, ln, slot in zip(meta.seg_starts.tolist(), meta.seg_lens.tolist(), meta.seg_slots.tolist()):
        if slot < 0:
            continue
        sc = float(scales[slot])
        for i in range(n):
            lo, hi = slice_offsets[i], slice_offsets[i + 1]
            delta = h[i, s0:s0 + ln] @ b[slot, lo:hi].float().T   # [L, hi-lo] fp32
            y[s0:s0 + ln, lo:hi] += (sc * delta).to(y.dtype)
    return y


def lora_shrink(x: torch.Tensor, a: torch.Tensor, meta: LoraMeta, *, backend: str = "torch",
                plan=None) -> torch.Tensor:
    """h[n, t, :] = x[t] @ a[slot(t), n].T in fp32; zero where slot(t) = -1. Returns [N, T, R].
    ``plan``: this step's :func:`plan_step` (None: planned for this call alone)."""
    if backend == "torch":
        _check(x, a, meta=meta)
        return torch_lora.shrink(x, a, _torch_plan(meta, plan))
    if backend == "ref":
        return shrink_ref(x, a, meta)
    if backend == "triton":
        # imported here: Triton is optional (absent on CPU-only installs that serve with "torch")
        from atoll.kernels import triton_lora

        return triton_lora.shrink(x, a, meta)
    raise ValueError(f"unknown LoRA backend {backend!r}: use one of {BACKENDS}")


def lora_expand(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scales: torch.Tensor,
                meta: LoraMeta, slice_offsets: tuple[int, ...], *, backend: str = "torch",
                plan=None) -> torch.Tensor:
    """In place: y[t, slice n] += scales[slot(t)] * h[n, t] @ b[slot(t), slice n].T. Returns y.
    ``plan``: this step's :func:`plan_step` (None: planned for this call alone)."""
    if backend == "torch":
        _check_slices(y, h.shape[0], b, slice_offsets)
        return torch_lora.expand(y, h, b, scales, _torch_plan(meta, plan), slice_offsets)
    if backend == "ref":
        return expand_ref(y, h, b, scales, meta, slice_offsets)
    if backend == "triton":
        # imported here: Triton is optional (absent on CPU-only installs that serve with "torch")
        from atoll.kernels import triton_lora

        return triton_lora.expand(y, h, b, scales, meta, slice_offsets,
                                  offsets=_triton_offsets(plan, slice_offsets, y.device))
    raise ValueError(f"unknown LoRA backend {backend!r}: use one of {BACKENDS}")


def lora_apply(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               scales: torch.Tensor, meta: LoraMeta, slice_offsets: tuple[int, ...], *,
               backend: str = "torch", plan=None) -> torch.Tensor:
    """Shrink then expand, in place on ``y``. No-op when no row has an adapter. ``plan``: this
    step's :func:`plan_step`, made once and passed by every layer (None: planned for this call)."""
    if not meta.any_lora:
        return y
    if backend == "torch":
        _check(x, a, meta=meta)
        _check_slices(y, a.shape[1], b, slice_offsets)
        return torch_lora.apply(y, x, a, b, scales, _torch_plan(meta, plan), slice_offsets)
    h = lora_shrink(x, a, meta, backend=backend, plan=plan)
    return lora_expand(y, h, b, scales, meta, slice_offsets, backend=backend, plan=plan)
