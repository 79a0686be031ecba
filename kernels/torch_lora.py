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
  under ``policy.gather_bytes``.

Plan, then run: the caller makes one :class:`TorchLoraPlan` per model step (from the step's
``LoraMeta`` and a :class:`TorchLoraPolicy`: which paths are allowed, with what thresholds) and
passes it to every layer's :func:`apply` / :func:`shrink` / :func:`expand`; the decisions are
memoized on the plan, which also records which paths ran (``plan.taken``).

Shapes: x [T, H_in], a [S, N, R, H_in], h [N, T, R] float32, b [S, H_out, R], scales [S] fp32,
y [T, H_out] updated IN PLACE by :func:`expand`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")   # a capability of this torch build, not a switch


@dataclass(frozen=True)
class TorchLoraPolicy:
    """Which batching paths the torch backend may take, and the thresholds between them. The
    defaults are what the runtime serves with; tests and ``bench/kernels_bench.py
    --torch-paths`` pass other policies to reach or force each path."""

    sorted: bool = True               # the whole sorted family (fp32 CPU, two or more slots)
    grouped: bool = HAS_GROUPED_MM    # sorted rows through torch._grouped_mm where strides allow
    padded_max_waste: float = 2.0     # padded bmm when S·Lmax <= this × the adapter rows
    run_min_rows: int = 16            # apply(): a GEMM pair per run when runs average this many rows
    # (prefill of the runtime bench, 32 adapters × 64 rows, rank 16, 2 threads: the four
    # projections of a layer 18.6 ms per run vs 21.7 padded in isolation; LoRA of the whole
    # prefill step about 220 ms vs 400 in the engine, where the padded gate_up's [S, Lmax, 2816]
    # intermediate hurts)
    gather_min_slots: int = 8         # gather + bmm when at least this many distinct slots ...
    gather_max_rows_per_slot: int = 2  # ... with at most this many rows each, on average, ...
    gather_max_row_bytes: int = 48 << 10  # ... and one row's adapter (N*R*H_in or H_out*R) this small
    # (measured on the CPU, 1 thread, 64 distinct rows: gather wins 2.6-8x up to 48 KiB per row
    # and loses from 64 KiB, where copying the adapters costs more than a matmul call per row)
    gather_bytes: int = 64 << 20      # cap on one gathered chunk of adapter weights

    def sorted_for(self, x: torch.Tensor, w: torch.Tensor) -> bool:
        """The sorted family serves fp32 CPU tensors (Triton serves the GPU)."""
        return self.sorted and x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32

    def grouped_for(self, x: torch.Tensor, w: torch.Tensor, *dims: int) -> bool:
        """``torch._grouped_mm`` on CPU wants fp32 strides and offsets in multiples of 16 bytes
        (``dims``: every size that becomes a stride or an offset)."""
        return self.grouped and self.sorted_for(x, w) and all(d % 4 == 0 for d in dims)


DEFAULT_POLICY = TorchLoraPolicy()


def _versions(meta) -> tuple[int, ...]:
    # A tensor's _version counts its in-place writes: a meta whose buffers were refilled in
    # place for a new step never reuses the old step's decisions.
    return tuple(t._version for t in (meta.token_slots, meta.seg_starts, meta.seg_lens,
                                      meta.seg_slots))


class TorchLoraPlan:
    """Plan, then run: how one model step's rows are batched, decided once from its
    :class:`~atoll.kernels.lora.LoraMeta` and reused by every layer and projection.

    ``rows(row_bytes, fp32_cpu)`` is the decision for one adapter-weight size (made on first use,
    then memoized here); ``taken`` names every path that ran with this plan, so a caller (a
    test, a benchmark) sees which one served it: "single", "runs", "groups", "gather",
    "sorted.padded", "sorted.grouped", "sorted.per_slot", "apply.run" (a GEMM pair per run of
    rows) and "apply.padded" (rows kept padded between shrink and expand)."""

    def __init__(self, meta, policy: TorchLoraPolicy = DEFAULT_POLICY):
        self.meta, self.policy = meta, policy
        self.taken: set[str] = set()
        self._versions = _versions(meta)
        self._memo: dict = {}

    def rows(self, row_bytes: int, fp32_cpu: bool = False):
        """The batching decision (see :func:`_make_plan`) for adapters of ``row_bytes`` per row."""
        now = _versions(self.meta)
        if now != self._versions:            # the meta was refilled in place: decide again
            self._versions, self._memo = now, {}
        # the sorted plan ignores row_bytes: one decision then serves every projection of the step
        key = (0 if fp32_cpu and self.policy.sorted else row_bytes, fp32_cpu)
        got = self._memo.get(key)
        if got is None:
            got = self._memo[key] = _make_plan(self.meta, row_bytes, self.policy, fp32_cpu)
        return got

    def layout(self, rows_plan, n_slots: int, aligned: bool):
        """How a "sorted" decision runs against a stack of ``n_slots`` slots, memoized on it:
        ("padded", flat index (slot - lo)·Lmax + place of each row, Lmax, lo, used) when the rows
        fill the slots evenly (S·Lmax <= ``padded_max_waste`` × rows), where slots lo … lo+used-1
        are the range the step's rows use (the padded GEMMs read only those slots' weights, a
        view), else ("grouped", offs, counts): a grouped GEMM when ``aligned``, else a matmul
        per slot."""
        key = (n_slots, aligned)
        lay = rows_plan[3].get(key)
        if lay is None:
            row_slots = rows_plan[2]
            counts = torch.bincount(row_slots, minlength=n_slots)
            ends = torch.cumsum(counts, 0)
            lmax = int(counts.max())
            if n_slots * lmax <= self.policy.padded_max_waste * row_slots.numel():
                lo, hi = int(row_slots[0]), int(row_slots[-1])           # sorted: the used range
                place = torch.arange(row_slots.numel()) - (ends - counts)[row_slots]
                lay = ("padded", (row_slots - lo) * lmax + place, lmax, lo, hi - lo + 1)
            else:
                lay = ("grouped", ends.to(torch.int32), counts.tolist())
            rows_plan[3][key] = lay
        return lay

    def long_runs(self, rows_plan):
        """The step's adapter segments when every slot's rows form one contiguous run of at least
        ``run_min_rows`` rows on average (prefill chunks), else None; memoized on the decision."""
        got = rows_plan[3].get("long_runs", False)
        if got is False:
            seg = _segments(self.meta)
            one_run_each = len({sl for _, _, sl in seg}) == len(seg)
            enough = sum(ln for _, ln, _ in seg) >= self.policy.run_min_rows * len(seg)
            got = seg if one_run_each and enough else None
            rows_plan[3]["long_runs"] = got
        return got

    def padded_index(self, rows_plan, lay, n_slots: int, n_rows: int):
        """For a padded layout, memoized on the decision: ``src`` [used·Lmax], the step row that
        fills each padded place (places no row fills repeat a real row: their products are never
        read), and ``dst`` [T], the padded place of each step row, when every row has an adapter
        (else None)."""
        key = ("padded_index", n_slots, lay[2])
        got = rows_plan[3].get(key)
        if got is None:
            rows, flat = rows_plan[1], lay[1]
            src = rows[:1].repeat(lay[4] * lay[2])
            src[flat] = rows
            dst = None
            if rows.numel() == n_rows:
                dst = torch.empty_like(flat)
                dst[rows] = flat
            got = rows_plan[3][key] = (src, dst)
        return got

    def padded_in_order(self, rows_plan, lay, dst) -> bool:
        """Whether ``dst`` is 0 … T-1: every row has an adapter and the rows already sit in their
        padded places (rows sorted by slot, each slot's rows filling Lmax places: e.g. 8 adapters
        over 32 decode rows), so the padded product adds to y as one contiguous view."""
        key = ("padded_in_order", lay[2], lay[3])
        got = rows_plan[3].get(key)
        if got is None:
            got = rows_plan[3][key] = bool(torch.equal(dst, torch.arange(dst.numel())))
        return got


def _segments(meta) -> list[tuple[int, int, int]]:
    """(first row, rows, slot) of each segment that uses an adapter."""
    return [(s0, ln, s) for s0, ln, s in zip(meta.seg_starts.tolist(), meta.seg_lens.tolist(),
                                             meta.seg_slots.tolist()) if s >= 0]


def _make_plan(meta, row_bytes: int, policy: TorchLoraPolicy, fp32_cpu: bool = False):
    """How to batch this step (decided from the metadata; no tensor math):

    ("single", slot) | ("sorted", rows, row_slots, {memo}) | ("gather", rows, row_slots)
    | ("runs", [(start, len, slot)]) | ("groups", [(slot, rows)]).
    "gather" copies each row's adapter, which pays when per-op overhead (~tens of us per slot
    group) outweighs copying ``row_bytes`` per row; "runs" slices contiguous segments (views,
    no gather) and is used when every slot occupies one run; "groups" indexes rows by slot.
    """
    seg = _segments(meta)
    if len(seg) == 1 and seg[0][1] == meta.num_tokens:
        return ("single", seg[0][2])
    n_slots = len({s for _, _, s in seg})
    n_rows = sum(ln for _, ln, _ in seg)
    if fp32_cpu and policy.sorted and n_slots >= 2:
        slots = meta.token_slots.long()
        rows = torch.nonzero(slots >= 0, as_tuple=False).flatten()
        row_slots, order = torch.sort(slots[rows], stable=True)
        return ("sorted", rows[order], row_slots, {})
    if (n_slots >= policy.gather_min_slots and n_rows <= policy.gather_max_rows_per_slot * n_slots
            and row_bytes <= policy.gather_max_row_bytes):
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


def _sorted_mm(xs: torch.Tensor, w: torch.Tensor, lay, aligned: bool) -> torch.Tensor:
    """out[i] = xs[i] @ w[slot(i)] for rows sorted by slot: xs [L, K], w [S, K, M] (any
    strides). Returns [L, M] fp32."""
    if lay[0] == "padded":          # index_copy_ / index_select: much cheaper than advanced indexing
        flat, lmax, lo, used = lay[1], lay[2], lay[3], lay[4]
        xp = xs.new_zeros(used * lmax, xs.shape[1]).index_copy_(0, flat, xs)
        out = torch.bmm(xp.view(used, lmax, xs.shape[1]), w[lo:lo + used])
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


def _sorted_name(lay, aligned: bool) -> str:
    return "sorted." + ("padded" if lay[0] == "padded" else "grouped" if aligned else "per_slot")


def apply(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor,
          plan: TorchLoraPlan, slice_offsets: tuple[int, ...]) -> torch.Tensor:
    """In place: y += LoRA(x), i.e. ``expand(y, shrink(x, a, plan), b, scales, plan, offsets)``.

    fp32 on the CPU: a run of rows sharing one adapter (all rows; or, in prefill, each slot's
    contiguous run of ``policy.run_min_rows`` or more rows) costs one GEMM for the shrink
    (scaled in place) and one ``addmm_`` per slice straight into y; when the step takes the
    sorted plan in its padded form (distinct adapters in decode) the rows stay padded between
    shrink and expand. Otherwise it is exactly :func:`shrink` then :func:`expand`."""
    if not plan.meta.any_lora or y.shape[0] == 0:
        return y
    pol = plan.policy
    if pol.sorted_for(x, a) and pol.sorted_for(y, b):
        s, n, r, h_in = a.shape
        rp = plan.rows(n * r * h_in * a.element_size(), True)
        spans = _spans(slice_offsets)
        if rp[0] == "single":                   # one adapter for every row
            plan.taken.add("apply.run")
            return _apply_run(y, x, a, b, scales, 0, y.shape[0], rp[1], spans)
        if rp[0] == "sorted":
            runs = plan.long_runs(rp)
            if runs is not None:                # prefill-like: each slot's rows in one long run
                plan.taken.add("apply.run")
                for s0, ln, slot in runs:
                    _apply_run(y, x, a, b, scales, s0, ln, slot, spans)
                return y
            lay = plan.layout(rp, s, False)
            if lay[0] == "padded":
                plan.taken.add("apply.padded")
                return _apply_padded(y, x, a, b, scales, plan, rp, lay, spans)
    return expand(y, shrink(x, a, plan), b, scales, plan, slice_offsets)


def _apply_run(y, x, a, b, scales, s0: int, ln: int, slot: int, spans):
    """Rows s0 … s0+ln-1 all use ``slot``: one scaled shrink GEMM, one ``addmm_`` per slice,
    written straight into y's rows (no intermediate of y's width)."""
    _, n, r, h_in = a.shape
    hs = torch.mm(x[s0:s0 + ln], a[slot].view(n * r, h_in).t()).mul_(scales[slot].float())   # [L, N*R]
    for k, (lo, hi) in spans:
        y[s0:s0 + ln, lo:hi].addmm_(hs[:, k * r:(k + 1) * r], b[slot, lo:hi].t())
    return y


def _apply_padded(y, x, a, b, scales, plan: TorchLoraPlan, rp, lay, spans):
    """Rows gathered once into their padded places [used, Lmax], both GEMMs batched over the
    used slots (views of the stacks), the scaled product added back to y."""
    h_out, lmax, lo, used = b.shape[1], lay[2], lay[3], lay[4]
    s, n, r, h_in = a.shape
    src, dst = plan.padded_index(rp, lay, s, y.shape[0])
    a, b, sc = a[lo:lo + used], b[lo:lo + used], scales[lo:lo + used]
    xp = x.index_select(0, src).view(used, lmax, h_in)
    hp = torch.bmm(xp, a.view(used, n * r, h_in).transpose(1, 2))               # [used, Lmax, N*R]
    hp.mul_(sc.float().view(used, 1, 1))
    if n == 1:
        dp = torch.bmm(hp, b.transpose(1, 2))                                    # [used, Lmax, H_out]
    else:                                       # (bmm's out= into a strided slice is 2x slower)
        dp = torch.cat([torch.bmm(hp[:, :, k * r:(k + 1) * r], b[:, lo_:hi_].transpose(1, 2))
                        for k, (lo_, hi_) in spans], dim=2)
    dv = dp.view(used * lmax, h_out)
    if dst is not None:                         # every row has an adapter
        if plan.padded_in_order(rp, lay, dst):  # ... in its padded place already: one add
            return y.add_(dv[:y.shape[0]])
        return y.add_(dv.index_select(0, dst))  # ... else one gather, one add
    return y.index_add_(0, rp[1], dv.index_select(0, lay[1]))


def _spans(slice_offsets) -> list[tuple[int, tuple[int, int]]]:
    """[(slice n, (first column, end column))] of a packed projection's output."""
    offs = [int(o) for o in slice_offsets]
    return list(enumerate(zip(offs, offs[1:])))


def _chunks(n_rows: int, bytes_per_row: int, cap: int):
    step = max(1, cap // max(1, bytes_per_row))
    for i in range(0, n_rows, step):
        yield i, min(n_rows, i + step)


def shrink(x: torch.Tensor, a: torch.Tensor, plan: TorchLoraPlan) -> torch.Tensor:
    """h[n, t] = x[t] @ a[slot(t), n].T in fp32; zeros where slot(t) = -1. Returns new [N, T, R]."""
    t, h_in = x.shape
    _, n, r, _ = a.shape
    h = torch.zeros(n, t, r, dtype=torch.float32, device=x.device)
    if not plan.meta.any_lora or t == 0:
        return h
    row_bytes = n * r * h_in * a.element_size()
    rp = plan.rows(row_bytes, plan.policy.sorted_for(x, a))
    kind = rp[0]

    def mm(xs, slot):                                   # [L, H_in] -> [N, L, R] fp32
        out = xs.float() @ a[slot].reshape(n * r, h_in).float().T
        return out.view(xs.shape[0], n, r).transpose(0, 1)

    if kind == "single":
        h.copy_(mm(x, rp[1]))
    elif kind == "runs":
        for s0, ln, slot in rp[1]:
            h[:, s0:s0 + ln] = mm(x[s0:s0 + ln], slot)
    elif kind == "groups":
        for slot, idx in rp[1]:
            h[:, idx] = mm(x[idx], slot)
    elif kind == "sorted":
        rows, s = rp[1], a.shape[0]
        w = a.view(s, n * r, h_in).transpose(1, 2)                             # [S, H_in, N*R] view
        aligned = plan.policy.grouped_for(x, a, h_in, n * r)
        lay = plan.layout(rp, s, aligned)
        kind = _sorted_name(lay, aligned)
        out = _sorted_mm(x.index_select(0, rows), w, lay, aligned)
        h.index_copy_(1, rows, out.view(rows.numel(), n, r).transpose(0, 1))
    else:                                                # gather
        rows, row_slots = rp[1], rp[2]
        for i, j in _chunks(rows.numel(), row_bytes, plan.policy.gather_bytes):
            ar = a[row_slots[i:j]].reshape(j - i, n * r, h_in).float()     # [L, N*R, H_in]
            xr = x[rows[i:j]].float().unsqueeze(2)                         # [L, H_in, 1]
            h[:, rows[i:j]] = torch.bmm(ar, xr).view(j - i, n, r).transpose(0, 1)
    plan.taken.add(kind)
    return h


def expand(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, plan: TorchLoraPlan,
           slice_offsets: tuple[int, ...]) -> torch.Tensor:
    """In place: y[t, slice n] += scales[slot(t)] * h[n, t] @ b[slot(t), slice n].T. Returns y.

    The product is formed in fp32, scaled, rounded to y's dtype, then added (as the reference).
    """
    spans = _spans(slice_offsets)
    if not plan.meta.any_lora or y.shape[0] == 0:
        return y
    h_out, r = b.shape[1], b.shape[2]
    row_bytes = h_out * r * b.element_size()
    rp = plan.rows(row_bytes, plan.policy.sorted_for(y, b))
    kind = rp[0]

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

    if kind == "single":
        add_rows(0, y.shape[0], rp[1])
    elif kind == "runs":
        for s0, ln, slot in rp[1]:
            add_rows(s0, ln, slot)
    elif kind == "groups":
        for slot, idx in rp[1]:
            y.index_add_(0, idx, delta(h[:, idx], slot).to(y.dtype))
    elif kind == "sorted":
        rows, row_slots, s = rp[1], rp[2], b.shape[0]
        aligned = plan.policy.grouped_for(y, b, h_out, r, *(lo for _, (lo, _) in spans))
        lay = plan.layout(rp, s, aligned)
        kind = _sorted_name(lay, aligned)
        hr = h.index_select(1, rows)                                           # [N, L, R]
        d = torch.empty(rows.numel(), h_out, dtype=torch.float32, device=y.device)
        for k, (lo, hi) in spans:
            d[:, lo:hi] = _sorted_mm(hr[k], b[:, lo:hi].transpose(1, 2), lay, aligned)
        d *= scales[row_slots].float().unsqueeze(1)
        if rows.numel() == y.shape[0]:                   # every row has an adapter: unsort, add
            inv = rp[3].get("inverse")
            if inv is None:
                inv = rp[3]["inverse"] = torch.argsort(rows)
            y.add_(d.index_select(0, inv))
        else:
            y.index_add_(0, rows, d)
    else:                                                # gather
        rows, row_slots = rp[1], rp[2]
        for i, j in _chunks(rows.numel(), row_bytes, plan.policy.gather_bytes):
            rr, ss = rows[i:j], row_slots[i:j]
            br = b[ss].float()                                                  # [L, H_out, R]
            hr = h[:, rr]                                                       # [N, L, R]
            d = torch.empty(j - i, h_out, dtype=torch.float32, device=y.device)
            for k, (lo, hi) in spans:
                d[:, lo:hi] = torch.bmm(br[:, lo:hi], hr[k].unsqueeze(2)).squeeze(2)
            d *= scales[ss].float().unsqueeze(1)
            y.index_add_(0, rr, d.to(y.dtype))
    plan.taken.add(kind)
    return y
