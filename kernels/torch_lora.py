"""Fast pure-torch batched LoRA: the ``backend="torch"`` path (CPU serving and GPU fallback).

Same contract as :func:`atoll.kernels.lora.shrink_ref` / :func:`expand_ref` (the segment-loop
references), computed in fp32 like them, but with far fewer small ops per call:

- **one slot for every row** (a single segment): one matmul over all rows;
- **runs** (each slot's rows contiguous, e.g. prefill): one matmul per segment on row slices,
  all packed slices at once for shrink;
- **groups** (rows of a slot scattered, e.g. an unsorted decode batch with 3 adapters): rows
  are grouped by *slot*, not by run, so it costs 3 matmuls, not one per run of equal slots;
- **sorted** (two or more slots, fp32 on the CPU): the adapter rows are sorted by slot once per
  step, then one call serves every slot, reading the stacked weights in place (no copy of the
  adapters, no Python loop over slots):
  - *padded*: when the rows fill the slots evenly (S·Lmax <= 2 × rows: distinct adapters in
    decode, about one row per slot), rows are scattered into a zero-padded [S, Lmax, H] block
    and one ``torch.bmm`` runs against all S slots' weights;
  - *grouped*: otherwise one ``torch._grouped_mm`` over the slots' row groups (needs 16-byte
    strides; without them, a matmul per slot over the sorted rows).
  :func:`apply` (shrink then expand, what the runtime calls) keeps padded rows in their
  [S, Lmax] block between the two GEMMs: the rows are gathered once, the scales multiply the
  small [S, Lmax, N·R] intermediate, and the result is added back in one indexed add (8 ops
  for a 3-slice qkv projection instead of about 25). When each slot's rows form one long run
  (prefill), it runs a scaled shrink GEMM and an ``addmm_`` per slice into each run instead,
  and one adapter for every row is one such run.
  ``bench/kernels_bench.py --torch-paths`` times them side by side through ``lora_apply``;
  on this 2-core CPU (2 threads, 33 slots, rank 16, the runtime bench's qkv / gate_up / down
  shapes), per shrink+expand: 32 distinct decode rows, padded (fused) 355 / 588 / 232 us,
  grouped 704 / 946 / 532, a matmul per slot 2916 / 2476 / 1826, gather + bmm 3015 / 4593 /
  2610; 6 adapters over 32 rows (where the grouped path is the one taken), grouped 791 / 651
  / 420, padded 1046 / 1635 / 606, a matmul per slot 1073 / 1102 / 719;
- **gather** (many distinct slots with about one row each, and small adapters; not fp32 on the
  CPU): the rows' adapter matrices are gathered, ``a[slots]`` /
  ``b[slots]``, and multiplied with one ``torch.bmm``, in chunks that keep the gathered copy
  under ``GATHER_BYTES``.

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
GROUPED = hasattr(torch, "_grouped_mm")   # module switch (tests turn it off to reach the others)
SORTED = True                  # module switch for the whole sorted family (tests turn it off)
PADDED_MAX_WASTE = 2.0         # padded bmm when S·Lmax <= this × the adapter rows
RUN_MIN_ROWS = 16              # apply(): a GEMM pair per run when runs average this many rows
# (prefill of the runtime bench, 32 adapters × 64 rows, rank 16, 2 threads: the four projections
# of a layer 18.6 ms per run vs 21.7 padded in isolation; LoRA of the whole prefill step about
# 220 ms vs 400 in the engine, where the padded gate_up's [S, Lmax, 2816] intermediate hurts)


_LAST_PLANS: tuple = (None, None, {})   # (meta, tensor versions, {row_bytes: plan})


def _versions(meta) -> tuple[int, ...]:
    # A tensor's _version counts its in-place writes: a meta whose buffers were refilled in
    # place for a new step never reuses the old step's plan.
    return tuple(t._version for t in (meta.token_slots, meta.seg_starts, meta.seg_lens,
                                      meta.seg_slots))


def sorted_available(x: torch.Tensor, w: torch.Tensor) -> bool:
    """The sorted family serves fp32 CPU tensors (Triton serves the GPU)."""
    return SORTED and x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32


def grouped_available(x: torch.Tensor, w: torch.Tensor, *dims: int) -> bool:
    """``torch._grouped_mm`` on CPU wants fp32 strides and offsets in multiples of 16 bytes
    (``dims``: every size that becomes a stride or an offset)."""
    return GROUPED and sorted_available(x, w) and all(d % 4 == 0 for d in dims)


def _plan(meta, row_bytes: int, fp32_cpu: bool = False):
    """:func:`_make_plan`, memoized for the most recent ``meta`` (built once per step, then
    passed to every layer and projection: the plan is made once per step and weight size)."""
    global _LAST_PLANS
    last, versions, plans = _LAST_PLANS
    now = _versions(meta)
    if last is not meta or versions != now:
        plans = {}
        _LAST_PLANS = (meta, now, plans)
    # the sorted plan ignores row_bytes: one plan then serves every projection of the step
    key = (0 if fp32_cpu and SORTED else row_bytes, fp32_cpu)
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = _make_plan(meta, row_bytes, fp32_cpu)
    return plan


def _make_plan(meta, row_bytes: int, fp32_cpu: bool = False):
    """How to batch this step (decided from the metadata; no tensor math):

    ("single", slot) | ("sorted", rows, row_slots, {n_slots: layout}) | ("gather", rows, row_slots)
    | ("runs", [(start, len, slot)]) | ("groups", [(slot, rows)]).
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
    if fp32_cpu and SORTED and n_slots >= 2:
        slots = meta.token_slots.long()
        rows = torch.nonzero(slots >= 0, as_tuple=False).flatten()
        row_slots, order = torch.sort(slots[rows], stable=True)
        return ("sorted", rows[order], row_slots, {})
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


def _layout(plan, n_slots: int, aligned: bool):
    """How a "sorted" plan runs against a stack of ``n_slots`` slots, cached on the plan:
    ("padded", flat index slot·Lmax + place of each row, Lmax) when the rows fill the slots evenly, else
    ("grouped", offs, counts): a grouped GEMM when ``aligned``, else a matmul per slot."""
    key = (n_slots, aligned)
    lay = plan[3].get(key)
    if lay is None:
        row_slots = plan[2]
        counts = torch.bincount(row_slots, minlength=n_slots)
        ends = torch.cumsum(counts, 0)
        lmax = int(counts.max())
        if n_slots * lmax <= PADDED_MAX_WASTE * row_slots.numel():
            place = torch.arange(row_slots.numel()) - (ends - counts)[row_slots]
            lay = ("padded", row_slots * lmax + place, lmax)
        else:
            lay = ("grouped", ends.to(torch.int32), counts.tolist())
        plan[3][key] = lay
    return lay


def _sorted_mm(xs: torch.Tensor, w: torch.Tensor, lay, aligned: bool) -> torch.Tensor:
    """out[i] = xs[i] @ w[slot(i)] for rows sorted by slot: xs [L, K], w [S, K, M] (any
    strides). Returns [L, M] fp32."""
    if lay[0] == "padded":          # index_copy_ / index_select: much cheaper than advanced indexing
        flat, lmax = lay[1], lay[2]
        xp = xs.new_zeros(w.shape[0] * lmax, xs.shape[1]).index_copy_(0, flat, xs)
        out = torch.bmm(xp.view(w.shape[0], lmax, xs.shape[1]), w)
        return out.view(-1, w.shape[2]).index_select(0, flat)
    if aligned:
        return torch._grouped_mm(xs, w, offs=lay[1])
    out = xs.new_empty(xs.shape[0], w.shape[2])
    r0 = 0
    for slot, c in enumerate(lay[2]):
        if c:
            torch.mm(xs[r0:r0 + c], w[slot], out=out[r0:r0 + c])
            r0 += c
    return out


def _padded_index(plan, lay, n_slots: int, n_rows: int):
    """For a padded layout, cached on the plan: ``src`` [S·Lmax], the step row that fills each
    padded place (places no row fills repeat a real row: their products are never read), and
    ``dst`` [T], the padded place of each step row, when every row has an adapter (else None)."""
    key = ("padded_index", n_slots, lay[2])
    got = plan[3].get(key)
    if got is None:
        rows, flat = plan[1], lay[1]
        src = rows[:1].repeat(n_slots * lay[2])
        src[flat] = rows
        dst = None
        if rows.numel() == n_rows:
            dst = torch.empty_like(flat)
            dst[rows] = flat
        got = plan[3][key] = (src, dst)
    return got


def apply(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor,
          meta, slice_offsets: tuple[int, ...]) -> torch.Tensor:
    """In place: y += LoRA(x), i.e. ``expand(y, shrink(x, a, meta), b, scales, meta, offsets)``.

    fp32 on the CPU: a run of rows sharing one adapter (all rows; or, in prefill, each slot's
    contiguous run of ``RUN_MIN_ROWS`` or more rows) costs one GEMM for the shrink (scaled in
    place) and one ``addmm_`` per slice straight into y; when the step takes the sorted plan in
    its padded form (distinct adapters in decode) the rows stay padded between shrink and
    expand. Otherwise it is exactly :func:`shrink` then :func:`expand`."""
    if not meta.any_lora or y.shape[0] == 0:
        return y
    if sorted_available(x, a) and sorted_available(y, b):
        s, n, r, h_in = a.shape
        plan = _plan(meta, n * r * h_in * a.element_size(), True)
        spans = _spans(slice_offsets)
        if plan[0] == "single":                 # one adapter for every row
            return _apply_run(y, x, a, b, scales, 0, y.shape[0], plan[1], spans)
        if plan[0] == "sorted":
            runs = _long_runs(plan, meta)
            if runs is not None:                # prefill-like: each slot's rows in one long run
                for s0, ln, slot in runs:
                    _apply_run(y, x, a, b, scales, s0, ln, slot, spans)
                return y
            lay = _layout(plan, s, False)
            if lay[0] == "padded":
                return _apply_padded(y, x, a, b, scales, plan, lay, spans)
    return expand(y, shrink(x, a, meta), b, scales, meta, slice_offsets)


def _long_runs(plan, meta):
    """The step's adapter segments when every slot's rows form one contiguous run of at least
    ``RUN_MIN_ROWS`` rows on average (prefill chunks), else None; cached on the plan."""
    got = plan[3].get("long_runs", False)
    if got is False:
        seg = [(s0, ln, sl) for s0, ln, sl in zip(meta.seg_starts.tolist(), meta.seg_lens.tolist(),
                                                  meta.seg_slots.tolist()) if sl >= 0]
        one_run_each = len({sl for _, _, sl in seg}) == len(seg)
        got = seg if one_run_each and sum(ln for _, ln, _ in seg) >= RUN_MIN_ROWS * len(seg) else None
        plan[3]["long_runs"] = got
    return got


def _apply_run(y, x, a, b, scales, s0: int, ln: int, slot: int, spans):
    """Rows s0 … s0+ln-1 all use ``slot``: one scaled shrink GEMM, one ``addmm_`` per slice,
    written straight into y's rows (no intermediate of y's width)."""
    _, n, r, h_in = a.shape
    hs = torch.mm(x[s0:s0 + ln], a[slot].view(n * r, h_in).t()).mul_(scales[slot].float())   # [L, N*R]
    for k, (lo, hi) in spans:
        y[s0:s0 + ln, lo:hi].addmm_(hs[:, k * r:(k + 1) * r], b[slot, lo:hi].t())
    return y


def _apply_padded(y, x, a, b, scales, plan, lay, spans):
    s, n, r, h_in = a.shape
    h_out, lmax = b.shape[1], lay[2]
    src, dst = _padded_index(plan, lay, s, y.shape[0])
    xp = x.index_select(0, src).view(s, lmax, h_in)
    hp = torch.bmm(xp, a.view(s, n * r, h_in).transpose(1, 2))                  # [S, Lmax, N*R]
    hp.mul_(scales.float().view(s, 1, 1))
    if n == 1:
        dp = torch.bmm(hp, b.transpose(1, 2))                                    # [S, Lmax, H_out]
    else:                                       # (bmm's out= into a strided slice is 2x slower)
        dp = torch.cat([torch.bmm(hp[:, :, k * r:(k + 1) * r], b[:, lo:hi].transpose(1, 2))
                        for k, (lo, hi) in spans], dim=2)
    dv = dp.view(s * lmax, h_out)
    if dst is not None:                         # every row has an adapter: one gather, one add
        return y.add_(dv.index_select(0, dst))
    return y.index_add_(0, plan[1], dv.index_select(0, lay[1]))


def _spans(slice_offsets) -> list[tuple[int, tuple[int, int]]]:
    """[(slice n, (first column, end column))] of a packed projection's output."""
    offs = [int(o) for o in slice_offsets]
    return list(enumerate(zip(offs, offs[1:])))


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
    plan = _plan(meta, row_bytes, sorted_available(x, a))

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
    elif plan[0] == "sorted":
        rows, s = plan[1], a.shape[0]
        w = a.view(s, n * r, h_in).transpose(1, 2)                             # [S, H_in, N*R] view
        aligned = grouped_available(x, a, h_in, n * r)
        out = _sorted_mm(x.index_select(0, rows), w, _layout(plan, s, aligned), aligned)
        h.index_copy_(1, rows, out.view(rows.numel(), n, r).transpose(0, 1))
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
    spans = _spans(slice_offsets)
    if not meta.any_lora or y.shape[0] == 0:
        return y
    h_out, r = b.shape[1], b.shape[2]
    row_bytes = h_out * r * b.element_size()
    plan = _plan(meta, row_bytes, sorted_available(y, b))

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
    elif plan[0] == "sorted":
        rows, row_slots, s = plan[1], plan[2], b.shape[0]
        aligned = grouped_available(y, b, h_out, r, *(lo for _, (lo, _) in spans))
        lay = _layout(plan, s, aligned)
        hr = h.index_select(1, rows)                                           # [N, L, R]
        d = torch.empty(rows.numel(), h_out, dtype=torch.float32, device=y.device)
        for k, (lo, hi) in spans:
            d[:, lo:hi] = _sorted_mm(hr[k], b[:, lo:hi].transpose(1, 2), lay, aligned)
        d *= scales[row_slots].float().unsqueeze(1)
        if rows.numel() == y.shape[0]:                   # every row has an adapter: unsort, add
            inv = plan[3].get("inverse")
            if inv is None:
                inv = plan[3]["inverse"] = torch.argsort(rows)
            y.add_(d.index_select(0, inv))
        else:
            y.index_add_(0, rows, d)
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
