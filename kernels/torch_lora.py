"""Fast pure-torch batched LoRA: the ``backend="torch"`` path (CPU serving and GPU fallback).

Same contract as :func:`atoll.kernels.lora.shrink_ref` / :func:`expand_ref` (the segment-loop
references), computed in fp32 like them, but with far fewer small ops per call:

- **one slot for every row** (a single segment): one matmul over all rows;
- **runs** (each slot's rows contiguous, e.g. prefill): one matmul per segment on row slices,
  all packed slices at once for shrink;
- **groups** (rows of a slot scattered, e.g. an unsorted decode batch with 3 adapters): rows
  are grouped by *slot*, not by run, so it costs 3 matmuls, not one per run of equal slots;
- **gather** (many distinct slots with about one row each, and small adapters): the rows'
  adapter matrices are gathered, ``a[slots]`` / ``b[slots]``, and multiplied with one
  ``torch.bmm``, in chunks that keep the gathered copy under ``GATHER_BYTES``.

Shapes: x [T, H_in], a [S, N, R, H_in], h [N, T, R] float32, b [S, H_out, R], scales [S] fp32,
y [T, H_out] updated IN PLACE by :func:`expand`.
"""

from __future__ import annotations

import torch

GATHER_MIN_SLOTS = 8           # gather + bmm when at least this many distinct slots ...
GATHER_MAX_ROWS_PER_SLOT = 2   # ... with at most this many rows each, on average, ...
GATHER_MAX_ROW_BYTES = 48 << 10  # ... and one row's adapter (N*R*H_in or H_out*R) this small
# (measured on the CPU, 1 thread, 64 distinct rows: gather wins 2.6-8x up to 48 KiB per row and
# loses from 64 KiB, where copying the adapters costs more than a matmul call per row)
GATHER_BYTES = 64 << 20        # cap on one gathered chunk of adapter weights


_LAST_PLANS: tuple = (None, None, {})   # (meta, tensor versions, {row_bytes: plan})


def _versions(meta) -> tuple[int, ...]:
    # A tensor's _version counts its in-place writes: a meta whose buffers were refilled in
    # place for a new step never reuses the old step's plan.
    return tuple(t._version for t in (meta.token_slots, meta.seg_starts, meta.seg_lens,
                                      meta.seg_slots))


def _plan(meta, row_bytes: int):
    """:func:`_make_plan`, memoized for the most recent ``meta`` (built once per step, then
    passed to every layer and projection: the plan is made once per step and weight size)."""
    global _LAST_PLANS
    last, versions, plans = _LAST_PLANS
    now = _versions(meta)
    if last is not meta or versions != now:
        plans = {}
        _LAST_PLANS = (meta, now, plans)
    plan = plans.get(row_bytes)
    if plan is None:
        plan = plans[row_bytes] = _make_plan(meta, row_bytes)
    return plan


def _make_plan(meta, row_bytes: int):
    """How to batch this step (decided from the metadata; no tensor math):

    ("single", slot) | ("gather", rows, row_slots) | ("runs", [(start, len, slot)]) |
    ("groups", [(slot, rows)]).
    "gather" copies each row's adapter, which pays when per-op overhead (~tens of us per slot
    group) outweighs copying ``row_bytes`` per row; "runs" slices contiguous segments (views,
    no gather) and is used when every slot occupies one run; "groups" indexes rows by slot.
    """
    seg = [(s0, ln, s) for s0, ln, s in zip(meta.seg_starts.tolist(), meta.seg_lens.tolist(),
                                            meta.seg_slots.tolist()) if s >= 0]
    if len(seg) == 1 and seg[0][1] == meta.num_tokens:
        return ("single", seg[0][2])
    n_slots = len({s for _, _, s in seg})
    n_rows = sum(ln for _, ln, _ in seg)
    if (n_slots >= GATHER_MIN_SLOTS and n_rows <= GATHER_MAX_ROWS_PER_SLOT * n_slots
            and row_bytes <= GATHER_MAX_ROW_BYTES):
        slots = meta.token_slots.long()
        rows = torch.nonzero(slots >= 0, as_tuple=False).flatten()
        return ("gather", rows, slots[rows])
    if n_slots == len(seg):
        return ("runs", seg)
    slots = meta.token_slots.long()
    rows = torch.nonzero(slots >= 0, as_tuple=False).flatten()
    row_slots, order = torch.sort(slots[rows], stable=True)
    rows = rows[order]
    uniq, counts = torch.unique_consecutive(row_slots, return_counts=True)
    return ("groups", list(zip(uniq.tolist(), torch.split(rows, counts.tolist()))))


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
    row_bytes = n * r * h_in * a.element_size()
    plan = _plan(meta, row_bytes)

    def mm(xs, slot):                                   # [L, H_in] -> [N, L, R] fp32
        out = xs.float() @ a[slot].reshape(n * r, h_in).float().T
        return out.view(xs.shape[0], n, r).transpose(0, 1)

    if plan[0] == "single":
        h.copy_(mm(x, plan[1]))
    elif plan[0] == "runs":
        for s0, ln, slot in plan[1]:
            h[:, s0:s0 + ln] = mm(x[s0:s0 + ln], slot)
    elif plan[0] == "groups":
        for slot, idx in plan[1]:
            h[:, idx] = mm(x[idx], slot)
    else:                                                # gather
        rows, row_slots = plan[1], plan[2]
        for i, j in _chunks(rows.numel(), row_bytes):
            ar = a[row_slots[i:j]].reshape(j - i, n * r, h_in).float()     # [L, N*R, H_in]
            xr = x[rows[i:j]].float().unsqueeze(2)                         # [L, H_in, 1]
            h[:, rows[i:j]] = torch.bmm(ar, xr).view(j - i, n, r).transpose(0, 1)
    return h


def expand(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, meta,
           slice_offsets: tuple[int, ...]) -> torch.Tensor:
    """In place: y[t, slice n] += scales[slot(t)] * h[n, t] @ b[slot(t), slice n].T. Returns y.

    The product is formed in fp32, scaled, rounded to y's dtype, then added (as the reference).
    """
    offs = [int(o) for o in slice_offsets]
    spans = list(enumerate(zip(offs, offs[1:])))
    if not meta.any_lora or y.shape[0] == 0:
        return y
    h_out, r = b.shape[1], b.shape[2]
    row_bytes = h_out * r * b.element_size()
    plan = _plan(meta, row_bytes)

    def delta(hs, slot):                                # hs [N, L, R] -> [L, H_out] fp32, scaled
        sc = float(scales[slot])
        if len(spans) == 1:
            return sc * (hs[0] @ b[slot].float().T)
        return sc * torch.cat([hs[k] @ b[slot, lo:hi].float().T for k, (lo, hi) in spans], dim=1)

    def add_rows(s0, ln, slot):                         # y[s0:s0+ln] += delta, on row views
        if y.dtype != torch.float32:
            y[s0:s0 + ln] += delta(h[:, s0:s0 + ln], slot).to(y.dtype)
            return
        sc = float(scales[slot])                        # fp32: fused, no [L, H_out] temporary
        for k, (lo, hi) in spans:
            y[s0:s0 + ln, lo:hi].addmm_(h[k, s0:s0 + ln], b[slot, lo:hi].float().T, alpha=sc)

    if plan[0] == "single":
        add_rows(0, y.shape[0], plan[1])
    elif plan[0] == "runs":
        for s0, ln, slot in plan[1]:
            add_rows(s0, ln, slot)
    elif plan[0] == "groups":
        for slot, idx in plan[1]:
            y.index_add_(0, idx, delta(h[:, idx], slot).to(y.dtype))
    else:                                                # gather
        rows, row_slots = plan[1], plan[2]
        for i, j in _chunks(rows.numel(), row_bytes):
            rr, ss = rows[i:j], row_slots[i:j]
            br = b[ss].float()                                                  # [L, H_out, R]
            hr = h[:, rr]                                                       # [N, L, R]
            d = torch.empty(j - i, h_out, dtype=torch.float32, device=y.device)
            for k, (lo, hi) in spans:
                d[:, lo:hi] = torch.bmm(br[:, lo:hi], hr[k].unsqueeze(2)).squeeze(2)
            d *= scales[ss].float().unsqueeze(1)
            y.index_add_(0, rr, d.to(y.dtype))
    return y
