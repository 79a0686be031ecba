"""Fast pure-torch batched LoRA: the ``backend="torch"`` path (CPU serving and GPU fallback).

Same contract as :func:`atoll.kernels.lora.shrink_ref` / :func:`expand_ref` (the segment-loop
references), computed in fp32 like them, but with far fewer small ops per call:

- **one slot for every row** (a single segment): one matmul over all rows;
- **rows grouped by slot** (few distinct slots): rows are grouped by *slot*, not by run, so an
  unsorted batch with 3 adapters costs 3 matmuls, not one per run of equal slots;
- **gather** (many distinct slots with about one row each, i.e. decode): the rows' adapter
  matrices are gathered, ``a[slots]`` / ``b[slots]``, and multiplied with one ``torch.bmm``,
  in chunks that keep the gathered copy under ``GATHER_BYTES``.

Shapes: x [T, H_in], a [S, N, R, H_in], h [N, T, R] float32, b [S, H_out, R], scales [S] fp32,
y [T, H_out] updated IN PLACE by :func:`expand`.
"""

from __future__ import annotations

import torch

GATHER_MIN_SLOTS = 8      # gather + bmm when at least this many distinct slots ...
GATHER_MAX_ROWS_PER_SLOT = 2   # ... with at most this many rows each, on average
GATHER_BYTES = 64 << 20   # cap on one gathered chunk of adapter weights


def _groups(meta):
    """Active rows grouped by slot: (slots [U] list, rows [L] long, counts [U] list, row_slots)."""
    slots = meta.token_slots.long()
    rows = torch.nonzero(slots >= 0, as_tuple=False).flatten()
    row_slots = slots[rows]
    row_slots, order = torch.sort(row_slots, stable=True)
    rows = rows[order]
    uniq, counts = torch.unique_consecutive(row_slots, return_counts=True)
    return uniq.tolist(), rows, counts.tolist(), row_slots


def _use_gather(n_slots: int, n_rows: int) -> bool:
    return n_slots >= GATHER_MIN_SLOTS and n_rows <= GATHER_MAX_ROWS_PER_SLOT * n_slots


def _chunks(n_rows: int, bytes_per_row: int):
    step = max(1, GATHER_BYTES // max(1, bytes_per_row))
    for i in range(0, n_rows, step):
        yield i, min(n_rows, i + step)


def shrink(x: torch.Tensor, a: torch.Tensor, meta) -> torch.Tensor:
    """h[n, t] = x[t] @ a[slot(t), n].T in fp32; zeros where slot(t) = -1. Returns new [N, T, R]."""
    t, h_in = x.shape
    _, n, r, _ = a.shape
    h = torch.zeros(n, t, r, dtype=torch.float32, device=x.device)
    if not meta.any_lora or t == 0:
        return h
    if meta.seg_slots.numel() == 1:                                 # one slot, every row
        slot = int(meta.seg_slots[0])
        out = x.float() @ a[slot].reshape(n * r, h_in).float().T    # [T, N*R]
        h.copy_(out.view(t, n, r).transpose(0, 1))
        return h
    uniq, rows, counts, row_slots = _groups(meta)
    if _use_gather(len(uniq), rows.numel()):
        for i, j in _chunks(rows.numel(), n * r * h_in * a.element_size()):
            ar = a[row_slots[i:j]].reshape(j - i, n * r, h_in).float()       # [L, N*R, H_in]
            xr = x[rows[i:j]].float().unsqueeze(2)                           # [L, H_in, 1]
            out = torch.bmm(ar, xr).view(j - i, n, r)                        # [L, N, R]
            h[:, rows[i:j]] = out.transpose(0, 1)
        return h
    start = 0
    for slot, cnt in zip(uniq, counts):
        idx = rows[start:start + cnt]
        start += cnt
        out = x[idx].float() @ a[slot].reshape(n * r, h_in).float().T        # [L, N*R]
        h[:, idx] = out.view(cnt, n, r).transpose(0, 1)
    return h


def expand(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, meta,
           slice_offsets: tuple[int, ...]) -> torch.Tensor:
    """In place: y[t, slice n] += scales[slot(t)] * h[n, t] @ b[slot(t), slice n].T. Returns y.

    The product is formed in fp32, scaled, rounded to y's dtype, then added (as the reference).
    """
    n = h.shape[0]
    offs = [int(o) for o in slice_offsets]
    spans = list(zip(offs, offs[1:]))
    if not meta.any_lora or y.shape[0] == 0:
        return y
    if meta.seg_slots.numel() == 1:                                 # one slot, every row
        slot = int(meta.seg_slots[0])
        sc = float(scales[slot])
        for i, (lo, hi) in enumerate(spans):
            y[:, lo:hi] += (sc * (h[i] @ b[slot, lo:hi].float().T)).to(y.dtype)
        return y
    uniq, rows, counts, row_slots = _groups(meta)
    if _use_gather(len(uniq), rows.numel()):
        h_out, r = b.shape[1], b.shape[2]
        for i, j in _chunks(rows.numel(), h_out * r * b.element_size()):
            rr, ss = rows[i:j], row_slots[i:j]
            br = b[ss].float()                                                  # [L, H_out, R]
            hr = h[:, rr]                                                       # [N, L, R]
            delta = torch.empty(j - i, h_out, dtype=torch.float32, device=y.device)
            for k, (lo, hi) in enumerate(spans):
                delta[:, lo:hi] = torch.bmm(br[:, lo:hi], hr[k].unsqueeze(2)).squeeze(2)
            delta *= scales[ss].float().unsqueeze(1)
            y.index_add_(0, rr, delta.to(y.dtype))
        return y
    start = 0
    for slot, cnt in zip(uniq, counts):
        idx = rows[start:start + cnt]
        start += cnt
        sc = float(scales[slot])
        hs = h[:, idx]                                                          # [N, L, R]
        delta = torch.cat([hs[k] @ b[slot, lo:hi].float().T for k, (lo, hi) in enumerate(spans)],
                          dim=1) if n > 1 else hs[0] @ b[slot].float().T
        y.index_add_(0, idx, (sc * delta).to(y.dtype))
    return y
