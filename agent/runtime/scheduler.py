"""Continuous batching: which requests run in the next step, and the step's tensors.

Each step (a token budget ``max_num_batched_tokens``, at most ``max_num_seqs`` running):

1. every running request past its prompt decodes one token;
2. running requests still in their prompt continue it, in chunks, while budget remains;
3. waiting requests are admitted while budget remains, taking turns by owner (the node that
   asked, or this host: :class:`Waiting`) and in arrival order within one owner: the adapter
   must be on the device (otherwise its load is queued and the request is skipped, not blocking
   others) and the KV cache must have room for prompt + max_tokens (otherwise admission stops,
   so a large request is not overtaken forever).

Rows of the step are ordered: decodes first, then prefill chunks, each group sorted by adapter
slot, so rows sharing an adapter form one LoRA segment.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from atoll.core.errors import AtollError

from .adapters import AdapterStore
from .kv_cache import PagedKVCache
from .model import PrefillChunk, StepBatch
from .request import Request

from atoll.kernels.lora import LoraMeta


@dataclass
class StepPlan:
    work: list[tuple[Request, int]]       # (request, tokens to compute this step), in row order
    failed: list[tuple[Request, AtollError]]

    @property
    def empty(self) -> bool:
        return not self.work


class Waiting:
    """The waiting requests: one queue per owner, and the owners in turn. :meth:`popleft` takes
    the next owner's oldest request and sends that owner to the back of the line, so a caller
    that queued a thousand requests delays another's next one by at most one admission per
    owner, where a single line made it wait behind all of them (one renter node's 1,024
    requests made a tenant's own requests on that host miss their 30 s deadlines). With one
    owner it is a plain first-in, first-out queue."""

    def __init__(self):
        self._by: collections.OrderedDict[str, collections.deque[Request]] = collections.OrderedDict()

    def __len__(self) -> int:
        return sum(len(q) for q in self._by.values())

    def __bool__(self) -> bool:
        return bool(self._by)                 # an owner is listed only while it has a request waiting

    def __iter__(self):
        for q in list(self._by.values()):
            yield from list(q)

    def append(self, r: Request) -> None:
        self._by.setdefault(r.owner, collections.deque()).append(r)

    def popleft(self) -> Request:
        owner, q = next(iter(self._by.items()))
        r = q.popleft()
        if q:
            self._by.move_to_end(owner)
        else:
            del self._by[owner]
        return r

    def appendleft(self, r: Request) -> None:
        """``r`` first again: its owner's next, and that owner's turn next."""
        self._by.setdefault(r.owner, collections.deque()).appendleft(r)
        self._by.move_to_end(r.owner, last=False)

    def extendleft(self, rs) -> None:
        for r in rs:
            self.appendleft(r)

    def remove(self, r: Request) -> None:
        q = self._by[r.owner]
        q.remove(r)
        if not q:
            del self._by[r.owner]

    def clear(self) -> None:
        self._by.clear()


class Scheduler:
    def __init__(self, kv: PagedKVCache, store: AdapterStore, *, max_num_batched_tokens: int,
                 max_num_seqs: int, device: torch.device):
        self.kv, self.store, self.device = kv, store, device
        self.budget, self.max_seqs = max_num_batched_tokens, max_num_seqs
        self.waiting = Waiting()
        self.running: list[Request] = []

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def schedule(self, metrics) -> StepPlan:
        budget = self.budget
        decode, prefill, failed = [], [], []
        for r in self.running:
            if not r.in_prefill and budget > 0:
                decode.append((r, 1))
                budget -= 1
        for r in self.running:
            if r.in_prefill and budget > 0:
                n = min(len(r.prompt_ids) - r.num_computed, budget)
                prefill.append((r, n))
                budget -= n
        skipped: list[Request] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            r = self.waiting.popleft()
            if r.adapter is not None and not r.holds_adapter:
                try:
                    slot = self.store.acquire(r.adapter)
                except AtollError as exc:          # removed, or its files broke since validation
                    failed.append((r, exc))
                    continue
                if not r.lookup_counted:
                    metrics.observe_adapter_lookup(slot is not None)
                    r.lookup_counted = True
                if slot is None:
                    skipped.append(r)           # loading in the background; try again next step
                    continue
                r.slot, r.holds_adapter = slot, True
            blocks = self.kv.allocate(r.reserve_tokens)
            if blocks is None:
                self.waiting.appendleft(r)      # keeps its adapter reference; waits for KV room
                break
            r.blocks = blocks
            r.table = torch.tensor(blocks, dtype=torch.long, device=self.device)
            self.running.append(r)
            n = min(len(r.prompt_ids), budget)
            prefill.append((r, n))
            budget -= n
        self.waiting.extendleft(reversed(skipped))
        decode.sort(key=lambda w: w[0].slot)
        prefill.sort(key=lambda w: w[0].slot)
        return StepPlan(decode + prefill, failed)

    def release(self, r: Request) -> None:
        """Return a finished or cancelled request's blocks and adapter reference."""
        if r.blocks:
            self.kv.free(r.blocks)
            r.blocks, r.table = [], None
        if r.holds_adapter and r.adapter is not None:
            self.store.release(r.adapter)
            r.holds_adapter = False
        if r in self.running:
            self.running.remove(r)

    def build(self, work: list[tuple[Request, int]], *, all_logits: bool = False) -> StepBatch:
        """Tensors for one step. ``all_logits``: logits for every row (prompt scoring)."""
        dev, bs = self.device, self.kv.block_size
        ids, pos, slots, write = [], [], [], []
        logit_rows: list[int] = []
        decodes: list[Request] = []
        prefills: list[PrefillChunk] = []
        row = 0
        for r, n in work:
            p0 = r.num_computed
            toks = (r.prompt_ids + r.output_ids)[p0:p0 + n] if n > 1 or r.in_prefill else [r.output_ids[-1]]
            ids.extend(toks)
            pos.extend(range(p0, p0 + n))
            slots.extend([r.slot] * n)
            if not r.in_prefill and n == 1 and not prefills:
                decodes.append(r)            # plain ints: a decode row costs no tensor op here
                write.append(r.blocks[p0 // bs] * bs + p0 % bs)
            else:
                tbl = r.table
                kpos = torch.arange(p0 + n, device=dev)
                kv_rows_chunk = tbl[kpos // bs] * bs + kpos % bs
                prefills.append(PrefillChunk(row, n, p0, kv_rows_chunk))
                write.extend(kv_rows_chunk[p0:].tolist())
            if all_logits:
                logit_rows.extend(range(row, row + n))
            elif p0 + n >= len(r.prompt_ids):
                logit_rows.append(row + n - 1)
            row += n
        nd = len(decodes)
        kv_rows = lens = None
        if nd:
            lens_l = [r.num_computed + 1 for r in decodes]
            lens = torch.tensor(lens_l, device=dev)
            nbmax = -(-max(lens_l) // bs)
            # each request's blocks, padded with block 0 (the model masks what lies past its length)
            kv_rows = torch.tensor([(r.blocks + [0] * nbmax)[:nbmax] for r in decodes], dtype=torch.long,
                                   device=dev)
        return StepBatch(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            positions=torch.tensor(pos, dtype=torch.long, device=dev),
            write_rows=torch.tensor(write, dtype=torch.long, device=dev),
            lora=LoraMeta.build(torch.tensor(slots, dtype=torch.int32, device=dev)),
            num_decode=nd, decode_kv_rows=kv_rows, decode_lens=lens, prefills=prefills,
            logit_rows=torch.tensor(logit_rows, dtype=torch.long, device=dev), max_position=max(pos))
