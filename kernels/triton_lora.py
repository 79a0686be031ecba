"""Triton SGMV / BGMV kernels for batched multi-LoRA (shrink and expand), with their launchers.

Semantics and shapes are those of :mod:`atoll.kernels.lora` (T rows, S slots, N packed slices,
R = padded rank; row t uses slot ``token_slots[t]``, -1 = no adapter)::

    shrink:  h[n, t, :]  = x[t] @ a[slot(t), n].T          h: [N, T, R] float32 (new tensor)
    expand:  y[t, c]    += scales[slot(t)] * h[n(c), t] @ b[slot(t), c]     IN PLACE on y
             where n(c) is the slice owning output column c (slice_offsets[n] <= c < ...[n+1])

Two kernel families, one numerical contract (fp32 accumulation, fp32 h):

- **SGMV** (segmented gather matrix-matrix): one program per (segment, block of BLOCK_M rows,
  slice[, K split]) for shrink and per (segment, row block, slice column block) for expand.
  The adapter tile is read once per segment row-block and multiplied with ``tl.dot``. The
  minimum ``tl.dot`` tile is 16, so the rank block is padded to >= 16 with masks.
- **BGMV** (batched gather matrix-vector): one program per (row, slice, K split) for shrink and
  per (row, column block) for expand: a gather-GEMV with CUDA-core FMAs, no 16-row padding.
  For decode steps where every row may carry a different adapter.

Shrink splits the H_in reduction into ``split_k`` parts (a function of H_in only, so a row's
result never depends on its batch-mates); with more than one part each program writes its
fp32 partial into a workspace [split_k, N, T, R] that is summed (a fixed order: deterministic).
Expand never races: every (row, column) of y is owned by exactly one program.

Dispatch (:func:`shrink` / :func:`expand`): BGMV when ``meta.max_seg_len <=
BGMV_MAX_SEG_LEN`` (4), else SGMV. Reason: a segment of at most 4 rows fills at most a quarter
of SGMV's smallest (16-row) MMA tile, and SGMV's only advantage - reading the adapter once per
segment instead of once per row - saves at most three re-reads that BGMV takes from L2, while
BGMV runs more, smaller programs, which is what a small decode batch needs to fill the GPU.
This threshold is reasoned, not tuned on a GPU: ``bench/kernels_bench.py`` times both families
for every case so it can be tuned where a GPU is available.

Caveats. (1) SGMV (``tl.dot``) and BGMV (FMA + ``tl.sum``) reduce in different orders, so
because the family is chosen from the whole step's layout, a row's h may differ in the last
bits with its batch-mates; callers that need bitwise batch invariance call one family's
launchers directly. (2) Grids depend on ``meta.max_seg_len`` and the segment count: a CUDA
graph captured for one step's metadata must not be replayed with another's. The expand launchers
take ``slice_offsets`` already on the device from the step's plan
(:class:`atoll.kernels.lora.TritonLoraPlan`); without one they copy them per call, which a
capture must not contain.
"""

from __future__ import annotations

import triton
import triton.language as tl

import torch

from atoll.kernels.checks import LoraArgumentError, check_expand, check_shrink

BGMV_MAX_SEG_LEN = 4
_SPLIT_K_CHUNK = 512      # target columns of H_in per shrink program
_MAX_SPLIT_K = 8


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

@triton.jit
def _sgmv_shrink_kernel(
    x_ptr, a_ptr, out_ptr,                       # x [T, H]; a [S, N, R, H]; out [SPLIT_K, N, T, R] fp32
    seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,  # [G] int32 each
    H, R, row_blocks, k_per_split,
    stride_xt, stride_as, stride_an, stride_ar,
    stride_ok, stride_on, stride_ot,
    SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid_mg = tl.program_id(0)                     # segment * row_blocks + row block
    pid_nk = tl.program_id(1)                     # slice * SPLIT_K + K part
    g = pid_mg // row_blocks
    mb = pid_mg % row_blocks
    slot = tl.load(seg_slots_ptr + g)
    seg_len = tl.load(seg_lens_ptr + g)
    if (slot < 0) | (mb * BLOCK_M >= seg_len):
        return
    seg_start = tl.load(seg_starts_ptr + g)
    n = pid_nk // SPLIT_K
    ks = pid_nk % SPLIT_K

    local = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = local < seg_len
    rows = (seg_start + local).to(tl.int64)
    rr = tl.arange(0, BLOCK_R)
    r_mask = rr < R
    kk = tl.arange(0, BLOCK_K)

    x_rows = x_ptr + rows[:, None] * stride_xt                                     # [BM, 1]
    a_base = a_ptr + slot.to(tl.int64) * stride_as + n * stride_an + rr[None, :] * stride_ar  # [1, BR]
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    k_start = ks * k_per_split
    for k0 in range(k_start, k_start + k_per_split, BLOCK_K):
        k = k0 + kk
        k_mask = k < H
        xt = tl.load(x_rows + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        at = tl.load(a_base + k[:, None], mask=k_mask[:, None] & r_mask[None, :], other=0.0)
        if IEEE:
            acc += tl.dot(xt, at, input_precision="ieee")
        else:
            acc += tl.dot(xt, at)                                                  # fp32 accumulate
    o = out_ptr + ks * stride_ok + n * stride_on + rows[:, None] * stride_ot + rr[None, :]
    tl.store(o, acc, mask=row_mask[:, None] & r_mask[None, :])


@triton.jit
def _sgmv_expand_kernel(
    h_ptr, b_ptr, y_ptr, scales_ptr, offs_ptr,   # h [N, T, R] fp32; b [S, H_out, R]; y [T, H_out]
    seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,  # scales [S] fp32; offs [N + 1] int32
    R, row_blocks, col_blocks,
    stride_hn, stride_ht, stride_bs, stride_bc, stride_yt,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, IEEE: tl.constexpr,
):
    pid_mg = tl.program_id(0)                     # segment * row_blocks + row block
    pid_c = tl.program_id(1)                      # slice * col_blocks + column block in the slice
    g = pid_mg // row_blocks
    mb = pid_mg % row_blocks
    n = pid_c // col_blocks
    cb = pid_c % col_blocks
    slot = tl.load(seg_slots_ptr + g)
    seg_len = tl.load(seg_lens_ptr + g)
    lo = tl.load(offs_ptr + n)
    hi = tl.load(offs_ptr + n + 1)
    c0 = lo + cb * BLOCK_N
    if (slot < 0) | (mb * BLOCK_M >= seg_len) | (c0 >= hi):
        return
    seg_start = tl.load(seg_starts_ptr + g)

    local = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = local < seg_len
    rows = (seg_start + local).to(tl.int64)
    rr = tl.arange(0, BLOCK_R)
    r_mask = rr < R
    cols = c0 + tl.arange(0, BLOCK_N)
    col_mask = cols < hi

    hb = tl.load(h_ptr + n * stride_hn + rows[:, None] * stride_ht + rr[None, :],
                 mask=row_mask[:, None] & r_mask[None, :], other=0.0)               # [BM, BR] fp32
    bb = tl.load(b_ptr + slot.to(tl.int64) * stride_bs + cols[None, :] * stride_bc + rr[:, None],
                 mask=r_mask[:, None] & col_mask[None, :], other=0.0)              # [BR, BN]
    if IEEE:
        acc = tl.dot(hb, bb.to(tl.float32), input_precision="ieee")
    else:
        # h rounded to the weight dtype (as y is stored in it anyway) for tensor cores.
        acc = tl.dot(hb.to(bb.dtype), bb)
    scale = tl.load(scales_ptr + slot)
    y_blk = y_ptr + rows[:, None] * stride_yt + cols[None, :]
    mask = row_mask[:, None] & col_mask[None, :]
    yv = tl.load(y_blk, mask=mask, other=0.0)
    tl.store(y_blk, (yv.to(tl.float32) + scale * acc).to(yv.dtype), mask=mask)


@triton.jit
def _bgmv_shrink_kernel(
    x_ptr, a_ptr, out_ptr, slots_ptr,            # x [T, H]; a [S, N, R, H]; out [SPLIT_K, N, T, R]
    H, R, k_per_split,
    stride_xt, stride_as, stride_an, stride_ar,
    stride_ok, stride_on, stride_ot,
    SPLIT_K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    t = tl.program_id(0)
    pid_nk = tl.program_id(1)
    slot = tl.load(slots_ptr + t)
    if slot < 0:
        return
    n = pid_nk // SPLIT_K
    ks = pid_nk % SPLIT_K
    rr = tl.arange(0, BLOCK_R)
    r_mask = rr < R
    kk = tl.arange(0, BLOCK_K)
    x_row = x_ptr + t.to(tl.int64) * stride_xt
    a_base = a_ptr + slot.to(tl.int64) * stride_as + n * stride_an + rr[:, None] * stride_ar
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    k_start = ks * k_per_split
    for k0 in range(k_start, k_start + k_per_split, BLOCK_K):
        k = k0 + kk
        k_mask = k < H
        xv = tl.load(x_row + k, mask=k_mask, other=0.0).to(tl.float32)              # [BK]
        av = tl.load(a_base + k[None, :], mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        acc += av.to(tl.float32) * xv[None, :]
    hv = tl.sum(acc, axis=1)                                                       # [BR]
    tl.store(out_ptr + ks * stride_ok + n * stride_on + t.to(tl.int64) * stride_ot + rr, hv,
             mask=r_mask)


@triton.jit
def _bgmv_expand_kernel(
    h_ptr, b_ptr, y_ptr, scales_ptr, slots_ptr, offs_ptr,
    H_out, R,
    stride_hn, stride_ht, stride_bs, stride_bc, stride_yt,
    N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    t, cb = tl.program_id(0), tl.program_id(1)      # token, column block
    slot = tl.load(slots_ptr + t)
    if slot < 0:
        return
    cols = cb * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < H_out
    # Slice owning each column: the number of inner slice boundaries at or left of it.
    nidx = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for i in tl.static_range(1, N):
        nidx += (cols >= tl.load(offs_ptr + i)).to(tl.int32)
    rr = tl.arange(0, BLOCK_R)
    r_mask = rr < R
    mask2 = col_mask[:, None] & r_mask[None, :]
    hb = tl.load(h_ptr + nidx[:, None] * stride_hn + t.to(tl.int64) * stride_ht + rr[None, :],
                 mask=mask2, other=0.0)                                            # [BN, BR] fp32
    bb = tl.load(b_ptr + slot.to(tl.int64) * stride_bs + cols[:, None] * stride_bc + rr[None, :],
                 mask=mask2, other=0.0)
    delta = tl.sum(hb * bb.to(tl.float32), axis=1)                                 # [BN]
    scale = tl.load(scales_ptr + slot)
    y_row = y_ptr + t.to(tl.int64) * stride_yt + cols
    yv = tl.load(y_row, mask=col_mask, other=0.0)
    tl.store(y_row, (yv.to(tl.float32) + scale * delta).to(yv.dtype), mask=col_mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def default_split_k(h_in: int) -> int:
    """K parts for shrink: one per ~512 columns of H_in, at most 8 (depends on H_in only)."""
    return max(1, min(_MAX_SPLIT_K, h_in // _SPLIT_K_CHUNK))


def _rank_block(r: int, minimum: int) -> int:
    return max(minimum, triton.next_power_of_2(max(r, 1)))


def _offsets_tensor(slice_offsets, device: torch.device, given: torch.Tensor | None) -> torch.Tensor:
    """slice_offsets as an int32 device tensor: ``given`` (the step plan's copy) or a new one."""
    if given is not None:
        return given
    return torch.tensor([int(o) for o in slice_offsets], dtype=torch.int32, device=device)


def _finish_shrink(ws: torch.Tensor) -> torch.Tensor:
    return ws[0] if ws.shape[0] == 1 else ws.sum(dim=0)


def _shrink_workspace(x, a, split_k):
    _, n, r, _ = a.shape
    return torch.zeros(split_k, n, x.shape[0], r, dtype=torch.float32, device=x.device)


def _shrink_prologue(launcher: str, x, a, meta, split_k: int | None, block_m: int | None):
    """Checks a shrink's arguments; returns (H_in, N, R, split_k, zeroed workspace, idle), idle
    when there is nothing to compute (no LoRA row, no token or rank 0)."""
    _refuse(launcher, check_shrink(x, a, meta), split_k=split_k, block_m=block_m)
    t, h_in = x.shape
    _, n, r, _ = a.shape
    split_k = split_k or default_split_k(h_in)
    return h_in, n, r, split_k, _shrink_workspace(x, a, split_k), not meta.any_lora or t == 0 or r == 0


def _k_per_split(h_in: int, split_k: int, block_k: int) -> int:
    return triton.cdiv(triton.cdiv(h_in, split_k), block_k) * block_k


def _refuse(launcher: str, problems: list[str], *, split_k: int | None = None,
            block_m: int | None = None) -> None:
    """Add the tuning arguments' problems to ``problems`` and raise if there are any."""
    if split_k is not None and split_k < 1:
        problems.append(f"split_k must be >= 1, got {split_k}")
    if block_m is not None and (block_m < 16 or block_m & (block_m - 1)):
        problems.append(f"block_m must be a power of two >= 16, got {block_m}")
    if problems:
        raise LoraArgumentError(launcher, problems)


def sgmv_shrink(x: torch.Tensor, a: torch.Tensor, meta, *, split_k: int | None = None,
                block_m: int | None = None, block_k: int = 64) -> torch.Tensor:
    """SGMV shrink. x [T, H_in], a [S, N, R, H_in] (same dtype) -> new h [N, T, R] float32.

    h[n, t] = x[t] @ a[slot(t), n].T accumulated in fp32; rows with slot -1 get zeros.
    ``split_k`` (default :func:`default_split_k`) splits the H_in reduction; ``block_m`` (rows
    per program, >= 16) defaults to the segment length rounded up to a power of two, at most 64.
    """
    h_in, n, r, split_k, ws, idle = _shrink_prologue("sgmv_shrink", x, a, meta, split_k, block_m)
    if idle:
        return _finish_shrink(ws)
    bm = block_m or min(64, max(16, triton.next_power_of_2(meta.max_seg_len)))
    row_blocks = triton.cdiv(meta.max_seg_len, bm)
    grid = (meta.seg_slots.shape[0] * row_blocks, n * split_k)
    _sgmv_shrink_kernel[grid](
        x, a, ws, meta.seg_starts, meta.seg_lens, meta.seg_slots,
        h_in, r, row_blocks, _k_per_split(h_in, split_k, block_k),
        x.stride(0), a.stride(0), a.stride(1), a.stride(2),
        ws.stride(0), ws.stride(1), ws.stride(2),
        SPLIT_K=split_k, BLOCK_M=bm, BLOCK_K=block_k, BLOCK_R=_rank_block(r, 16),
        IEEE=x.dtype == torch.float32,
    )
    return _finish_shrink(ws)


def bgmv_shrink(x: torch.Tensor, a: torch.Tensor, meta, *, split_k: int | None = None,
                block_k: int = 128) -> torch.Tensor:
    """BGMV shrink: same contract as :func:`sgmv_shrink`, one program per (row, slice, K part)."""
    h_in, n, r, split_k, ws, idle = _shrink_prologue("bgmv_shrink", x, a, meta, split_k, None)
    if idle:
        return _finish_shrink(ws)
    _bgmv_shrink_kernel[(x.shape[0], n * split_k)](
        x, a, ws, meta.token_slots,
        h_in, r, _k_per_split(h_in, split_k, block_k),
        x.stride(0), a.stride(0), a.stride(1), a.stride(2),
        ws.stride(0), ws.stride(1), ws.stride(2),
        SPLIT_K=split_k, BLOCK_K=block_k, BLOCK_R=_rank_block(r, 1),
    )
    return _finish_shrink(ws)


def sgmv_expand(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, meta,
                slice_offsets, *, block_m: int | None = None, block_n: int = 64,
                offsets: torch.Tensor | None = None) -> torch.Tensor:
    """SGMV expand, IN PLACE on y [T, H_out]; returns y.

    y[t, c] += scales[slot(t)] * h[n(c), t] @ b[slot(t), c].T for rows with slot >= 0, where
    slice n owns columns slice_offsets[n]:slice_offsets[n+1]. h [N, T, R] float32,
    b [S, H_out, R] in y's dtype, scales [S] float32. Column blocks never straddle slices.
    ``offsets``: slice_offsets already on y's device as int32 (the step plan's; None: copied now).
    """
    _refuse("sgmv_expand", check_expand(y, h, b, scales, meta, slice_offsets), block_m=block_m)
    n, t, r = h.shape
    if not meta.any_lora or t == 0 or r == 0 or y.shape[1] == 0:
        return y
    widths = [hi - lo for lo, hi in zip(slice_offsets, slice_offsets[1:])]
    bm = block_m or min(64, max(16, triton.next_power_of_2(meta.max_seg_len)))
    row_blocks = triton.cdiv(meta.max_seg_len, bm)
    col_blocks = triton.cdiv(max(widths), block_n)
    grid = (meta.seg_slots.shape[0] * row_blocks, n * col_blocks)
    _sgmv_expand_kernel[grid](
        h, b, y, scales, _offsets_tensor(slice_offsets, y.device, offsets),
        meta.seg_starts, meta.seg_lens, meta.seg_slots,
        r, row_blocks, col_blocks,
        h.stride(0), h.stride(1), b.stride(0), b.stride(1), y.stride(0),
        BLOCK_M=bm, BLOCK_N=block_n, BLOCK_R=_rank_block(r, 16), IEEE=y.dtype == torch.float32,
    )
    return y


def bgmv_expand(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, meta,
                slice_offsets, *, block_n: int = 128, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """BGMV expand: same contract as :func:`sgmv_expand` (IN PLACE on y), one program per
    (row, column block); a block may straddle slices (each column finds its slice)."""
    _refuse("bgmv_expand", check_expand(y, h, b, scales, meta, slice_offsets))
    n, t, r = h.shape
    h_out = y.shape[1]
    if not meta.any_lora or t == 0 or r == 0 or h_out == 0:
        return y
    _bgmv_expand_kernel[(t, triton.cdiv(h_out, block_n))](
        h, b, y, scales, meta.token_slots, _offsets_tensor(slice_offsets, y.device, offsets),
        h_out, r,
        h.stride(0), h.stride(1), b.stride(0), b.stride(1), y.stride(0),
        N=n, BLOCK_N=block_n, BLOCK_R=_rank_block(r, 1),
    )
    return y


def use_bgmv(meta) -> bool:
    """The dispatch rule: BGMV when every segment has at most BGMV_MAX_SEG_LEN rows."""
    return meta.max_seg_len <= BGMV_MAX_SEG_LEN


def shrink(x: torch.Tensor, a: torch.Tensor, meta) -> torch.Tensor:
    """Shrink with the family :func:`use_bgmv` picks. Returns a new h [N, T, R] float32."""
    return bgmv_shrink(x, a, meta) if use_bgmv(meta) else sgmv_shrink(x, a, meta)


def expand(y, h, b, scales, meta, slice_offsets, *, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Expand with the family :func:`use_bgmv` picks, IN PLACE on y. Returns y."""
    if use_bgmv(meta):
        return bgmv_expand(y, h, b, scales, meta, slice_offsets, offsets=offsets)
    return sgmv_expand(y, h, b, scales, meta, slice_offsets, offsets=offsets)
