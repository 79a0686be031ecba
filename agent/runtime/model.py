"""The decoder over one flattened step: T tokens from many requests, mixed prefill/decode.

Per layer, for the step's rows x [T, hidden] (Llama; the other families' differences after):

    h = RMSNorm(x)·g1;  qkv = h·Wqkvᵀ (+LoRA, 3 slices);  q,k ← RoPE(q,k, position)
    K/V rows written to the paged cache;  a = softmax(q·kᵀ/√d + causal mask)·v  (GQA: kv head j
    serves q heads j·g … j·g+g-1);  x += a·Woᵀ (+LoRA)
    h = RMSNorm(x)·g2;  [gate|up] = h·Wguᵀ (+LoRA, 2 slices);  x += (silu(gate)·up)·Wdᵀ (+LoRA)

Family features (:class:`~.config.ModelConfig`): q/k/v (and o) biases added to the projection;
qwen3's RMSNorm of each q and k head before RoPE; partial rotary (RoPE on the first
``rope_dim`` dims of each head); a sliding window (keys more than ``window - 1`` positions behind
the query are masked) on the layers that have one; gemma2's embeddings times √hidden, (1 + w)
norms in fp32, norms on the attention and MLP outputs before the residual add, tanh-GELU,
``cap · tanh(s / cap)`` on attention scores (before the mask) and on the final logits.

RMSNorm runs in fp32 and casts back, as Hugging Face does. Attention for decode rows is one
batched call over each request's cache blocks gathered whole through its block table (padded,
masked); each prefill chunk attends over its request's rows separately. In fp32 on the CPU
with atoll's kernels (:mod:`atoll.kernels.cpu_ops`) the decode rows instead attend over the
cache in place, one call per layer.

A small model's decode step costs per-op overhead more than GEMM time, so the step is written as
few, large ops: what depends only on the step (RoPE rows, masks, the decode rows' block list) is
made once per step and shared by every layer (:class:`_StepContext`); RoPE rotates q and k
together, in place in the qkv output; a layer's K and V share one cache tensor, written by one
``index_copy_`` and gathered by one ``index_select``; scores are one ``baddbmm`` with the scale
and the mask folded in (fp32, no soft-capping); the o and down projections add the residual
inside the GEMM (:func:`~.weights.linear_add`) and adapters add their delta to that sum in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from atoll.kernels import cpu_ops
from atoll.kernels.lora import LoraMeta, lora_apply, plan_step

from .config import ModelConfig, rope_inv_freq
from .modules import module_dims, packed_modules
from .kv_cache import PagedKVCache
from .weights import ModelWeights, linear, linear_add


@dataclass
class PrefillChunk:
    row0: int                 # first row of the chunk in the step
    length: int               # rows in the chunk
    pos0: int                 # position of the first row in its request
    kv_rows: torch.Tensor     # [pos0 + length] long: cache rows of positions 0 … pos0+length-1


@dataclass
class StepBatch:
    input_ids: torch.Tensor   # [T] long
    positions: torch.Tensor   # [T] long
    write_rows: torch.Tensor  # [T] long: cache row of each token's K/V
    lora: LoraMeta            # slot per row (-1: base model)
    num_decode: int           # rows 0 … num_decode-1 are single-token decodes, one per request
    decode_kv_rows: torch.Tensor | None   # [B, NB] long, cache blocks of each request (padding: 0)
    decode_lens: torch.Tensor | None      # [B] long: tokens in each decode request's cache, its new one included
    prefills: list[PrefillChunk]
    logit_rows: torch.Tensor  # [M] long: rows whose next-token logits are wanted
    max_position: int         # the largest of ``positions``


class SlotWeights:
    """Stacked adapter slots of one layer, per packed projection: a [S,N,R,in], b [S,out,R], and
    optionally bp, a copy of b in panels of 16 output columns, [S,P,R,16] (atoll's CPU LoRA
    kernel reads it: :func:`atoll.kernels.cpu_ops.lora_panels`)."""

    def __init__(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                 bp: dict[str, torch.Tensor] | None = None):
        self.a, self.b, self.bp = a, b, bp


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False) -> torch.Tensor:
    """Llama: ``w · (x / rms(x))`` cast to x's dtype before the product; gemma2: the product in
    fp32 with ``weight`` already ``1 + w``, then cast. fp32 input takes torch's fused kernel
    (the same operations in the same order, so the same bits); :meth:`LlamaModel._norm` takes
    atoll's CPU kernel first where the model uses them."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if gemma:
        return (xf * weight).to(x.dtype)
    return weight * xf.to(x.dtype)


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap


class _StepMasks:
    """Additive attention masks of one step, made once per window size and shared by the layers
    with that window: decode [nkv·B, 1, span] (kv-head-major, as the decode scores) and one
    [g·len, pos0+len] per prefill chunk."""

    def __init__(self, batch: StepBatch, group: int, kv_heads: int, device: torch.device, block_size: int, *,
                 decode: bool = True):
        self.batch, self.group, self.kv_heads, self.device = batch, group, kv_heads, device
        self.block_size = block_size
        self.decode = decode             # False: the decode rows need no mask (they attend in place)
        self._made: dict[int | None, tuple] = {}

    def get(self, window: int | None):
        got = self._made.get(window)
        if got is None:
            got = self._made[window] = (self._decode(window), [self._prefill(ch, window) for ch in self.batch.prefills])
        return got

    def _decode(self, window: int | None):
        b = self.batch
        if not b.num_decode or not self.decode:
            return None
        # whole blocks are gathered: positions past a request's length (and padding blocks) are
        # masked, and with a window the keys it no longer sees
        span = b.decode_kv_rows.shape[1] * self.block_size
        ar = torch.arange(span, device=self.device)
        hidden = ar[None, :] >= b.decode_lens[:, None]                                      # [B, span]
        if window is not None:
            hidden |= ar[None, :] <= b.positions[:b.num_decode, None] - window
        m = torch.zeros(b.num_decode, 1, span, device=self.device)
        return m.masked_fill_(hidden.unsqueeze(1), float("-inf")).repeat(self.kv_heads, 1, 1)

    def _prefill(self, ch: PrefillChunk, window: int | None) -> torch.Tensor:
        qpos = torch.arange(ch.pos0, ch.pos0 + ch.length, device=self.device)
        kpos = torch.arange(ch.pos0 + ch.length, device=self.device)
        m = torch.zeros(ch.length, kpos.numel(), device=self.device)
        hidden = kpos[None, :] > qpos[:, None]
        if window is not None:
            hidden |= kpos[None, :] <= qpos[:, None] - window
        m.masked_fill_(hidden, float("-inf"))
        return m.repeat(self.group, 1)                                                      # rows ordered (g, Lq)


class _StepContext:
    """What every layer of one step shares, made once per step: the RoPE rows of the step's
    positions (``cos``, and ``sin`` signed for the rotation by swapped halves), the decode rows'
    cache blocks as one flat index, and the attention masks of each window size."""

    def __init__(self, model: "LlamaModel", batch: StepBatch, kv: PagedKVCache):
        cfg = model.cfg
        cos_t, sin_t = model.rope_tables(batch.max_position + 1)
        self.cos = cos_t.index_select(0, batch.positions).unsqueeze(1)                 # [T, 1, rope_dim]
        self.sin = sin_t.index_select(0, batch.positions).unsqueeze(1)
        self.decode_blocks = batch.decode_kv_rows.flatten() if batch.num_decode else None   # [B·NB]
        # fp32 on the CPU with atoll's kernels: decode rows attend over the cache in place
        self.cpu_attention = None
        if batch.num_decode and model.cpu_kernels:
            self.cpu_attention = cpu_ops.DecodeAttention(
                batch.decode_kv_rows, batch.decode_lens, num_blocks=kv.num_blocks, block_size=kv.block_size,
                num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)
        self._masks = _StepMasks(batch, cfg.num_heads // cfg.num_kv_heads, cfg.num_kv_heads, model.device,
                                 kv.block_size, decode=self.cpu_attention is None)
        if model.cpu_kernels and batch.write_rows.numel():
            lo, hi = int(batch.write_rows.min()), int(batch.write_rows.max())
            if lo < 0 or hi >= kv.capacity_tokens:
                raise ValueError(f"cache write rows {lo}..{hi} outside 0..{kv.capacity_tokens - 1}")

    def masks(self, window: int | None):
        return self._masks.get(window)

    def rope_(self, x: torch.Tensor) -> None:
        """In place on ``x`` [T, heads, head_dim] (a view): the first ``rope_dim`` dims of each
        head become ``x·cos + rotate_half(x)·sin``, computed as ``x·cos + swap_halves(x)·sin±``
        (sin± = [-sin, sin] per half: the same products, so the same bits)."""
        rd = self.cos.shape[-1]
        xr = x if rd == x.shape[-1] else x[..., :rd]
        h = rd // 2
        swapped = torch.cat((xr[..., h:], xr[..., :h]), dim=-1)
        xr.mul_(self.cos).addcmul_(swapped, self.sin)


class LlamaModel:
    """The decoder of every served family (Llama's, with the features its config switches on)."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, *, dtype: torch.dtype,
                 device: torch.device, lora_backend: str = "torch", cpu_kernels: bool = False):
        self.cfg, self.w, self.dtype, self.device = cfg, weights, dtype, device
        # atoll's CPU kernels (fp32 on the CPU; the caller checked they built): decode attention
        # over the cache in place; RMSNorm, RoPE with the cache write, and silu(gate)·up each in
        # one call (:mod:`atoll.kernels.cpu_ops`)
        self.cpu_kernels = cpu_kernels
        self.lora_backend = lora_backend
        self.inv_freq = rope_inv_freq(cfg).to(device)
        self._rope_len = 0
        self._cos = self._sin = None
        self.q_slices, self.o_slices, self.gu_slices, self.down_slices = slice_offsets(cfg)
        self.scale = cfg.scale
        self.act = F.silu if cfg.activation == "silu" else partial(F.gelu, approximate="tanh")
        self.embed_scale = (torch.tensor(cfg.embed_scale, dtype=dtype) if cfg.embed_scale is not None else None)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor, gemma: bool = False) -> torch.Tensor:
        """:func:`rms_norm` with the config's eps; fp32 rows through atoll's kernel where the model
        uses them (one call instead of eight operators; within a few ulps of torch's)."""
        if self.cpu_kernels and cpu_ops.rms_norm_applies(x, weight):
            return cpu_ops.rms_norm(x, weight, self.cfg.rms_norm_eps)
        return rms_norm(x, weight, self.cfg.rms_norm_eps, gemma)

    def rope_tables(self, max_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin±) [n >= max_pos, rope_dim] in the serving dtype, grown on demand: cos and sin of
        position · inverse frequency (both halves), sin± with its first half negated."""
        if max_pos > self._rope_len:
            n = max(max_pos, 2 * self._rope_len, 256)
            pos = torch.arange(n, device=self.device, dtype=torch.float32)
            freqs = torch.outer(pos, self.inv_freq)
            self._cos = torch.cat([freqs, freqs], dim=-1).cos().to(self.dtype)
            sin = freqs.sin()
            self._sin = torch.cat([-sin, sin], dim=-1).to(self.dtype)
            self._rope_len = n
        return self._cos, self._sin

    def _scores(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """fp32 ``softcap(q·kᵀ · scale) + mask``: q [N, M, d], k [N, L, d], mask broadcastable to
        [N, M, L]. fp32 without soft-capping: one ``baddbmm``."""
        kt = k.transpose(1, 2)
        if q.dtype == torch.float32 and self.cfg.attn_softcap is None:
            return torch.baddbmm(mask, q, kt, alpha=self.scale)
        return softcap(torch.bmm(q, kt).float() * self.scale, self.cfg.attn_softcap) + mask

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q [N, M, d] (M = g·Lq query rows per kv head and request), k/v [N, L, d], additive mask
        broadcastable to [N, M, L]. Returns [N, M, d]."""
        probs = torch.softmax(self._scores(q, k, mask), dim=-1)
        return torch.bmm(probs.to(v.dtype), v)

    def forward(self, batch: StepBatch, kv: PagedKVCache, slots: list[SlotWeights] | None,
                scales: torch.Tensor | None, *, return_hidden: bool = False):
        """Returns fp32 logits [M, vocab] for ``batch.logit_rows`` (and final hidden [T, H] if asked)."""
        cfg = self.cfg
        meta = batch.lora
        use_lora = slots is not None and meta.any_lora
        lplan = plan_step(meta, backend=self.lora_backend) if use_lora else None   # once per step
        cpu_lora = None
        if use_lora and self.cpu_kernels and slots[0].bp is not None:
            a = slots[0].a["qkv"]
            if cpu_ops.LoraStep.serves(meta.num_tokens, a.dtype, a.device, a.shape[2]):
                cpu_lora = cpu_ops.LoraStep(meta.token_slots, a.shape[0])
        ctx = _StepContext(self, batch, kv)
        x = self.w.embed.index_select(0, batch.input_ids)
        if self.embed_scale is not None:
            x = x * self.embed_scale
        for n, lw in enumerate(self.w.layers):
            lora = _LayerLora(slots[n], scales, meta, self.lora_backend, lplan, cpu_lora) if use_lora else None
            x = self._layer(n, lw, x, batch, kv, ctx, lora)
        rows = batch.logit_rows
        if return_hidden:
            x = self._norm(x, self.w.norm, cfg.gemma_norms)
            h = x.index_select(0, rows)
        else:                           # only the rows whose logits are wanted
            h = self._norm(x.index_select(0, rows), self.w.norm, cfg.gemma_norms)
        logits = None
        if rows.numel():
            logits = softcap(linear(h, self.w.lm_head).float(), cfg.final_softcap)
        return (logits, x) if return_hidden else logits

    def _layer(self, n: int, lw, x, batch: StepBatch, kv: PagedKVCache, ctx: _StepContext, lora) -> torch.Tensor:
        cfg = self.cfg
        h = self._norm(x, lw.ln1, cfg.gemma_norms)
        qkv = linear(h, lw.qkv, lw.qkv_bias)
        if lora is not None:
            lora.apply("qkv", qkv, h, self.q_slices)
        attn = self._attention(n, lw, qkv, batch, kv, ctx)
        x = self._residual(x, attn, lw.o, lw.o_bias, lw.attn_out_norm, lora, "o", self.o_slices)
        h = self._norm(x, lw.ln2, cfg.gemma_norms)
        gu = linear(h, lw.gate_up)
        if lora is not None:
            lora.apply("gate_up", gu, h, self.gu_slices)
        i = cfg.intermediate_size
        if self.cpu_kernels and cfg.activation == "silu":
            act = cpu_ops.silu_mul(gu)
        else:
            act = self.act(gu[:, :i]).mul_(gu[:, i:])
        return self._residual(x, act, lw.down, None, lw.mlp_out_norm, lora, "down", self.down_slices)

    def _residual(self, x, inp, w, bias, out_norm, lora, proj: str, slices) -> torch.Tensor:
        """``x + (inp·wᵀ + bias + LoRA)``; with gemma2's norm after the projection,
        ``x + norm(inp·wᵀ + bias + LoRA)``."""
        if out_norm is None:
            y = linear_add(inp, w, x, bias)              # the residual added inside the GEMM
            if lora is not None:
                lora.apply(proj, y, inp, slices)         # the adapter's delta added to that sum
            return y
        y = linear(inp, w, bias)
        if lora is not None:
            lora.apply(proj, y, inp, slices)
        return x + self._norm(y, out_norm, self.cfg.gemma_norms)

    def _attention(self, n: int, lw, qkv, batch: StepBatch, kv: PagedKVCache, ctx: _StepContext) -> torch.Tensor:
        cfg = self.cfg
        nh, nkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        t = qkv.shape[0]
        qk = qkv[:, :cfg.q_size + cfg.kv_size].view(t, nh + nkv, d)          # q heads, then k heads
        if lw.q_norm is not None:
            qk[:, :nh] = rms_norm(qk[:, :nh], lw.q_norm, cfg.rms_norm_eps)
            qk[:, nh:] = rms_norm(qk[:, nh:], lw.k_norm, cfg.rms_norm_eps)
        cache = kv.layers[n]                                                    # [2, nkv, rows, d]
        if self.cpu_kernels:                                                    # RoPE and the write, one call
            cpu_ops.rope_write(qkv, ctx.cos.squeeze(1), ctx.sin.squeeze(1), cache, batch.write_rows,
                               num_heads=nh, num_kv_heads=nkv, head_dim=d)
        else:
            ctx.rope_(qk)
            # index_select / index_copy_ along the row dim: a memcpy per row or block, several
            # times faster on the CPU than advanced indexing of a middle dimension
            cache.index_copy_(2, batch.write_rows, qkv[:, cfg.q_size:].view(t, 2, nkv, d).permute(1, 2, 0, 3))
        q = qk[:, :nh]
        g = nh // nkv
        nd = batch.num_decode
        window = cfg.layer_window(n)
        decode_mask, prefill_masks = ctx.masks(window)
        if nd:
            if ctx.cpu_attention is not None:                                   # in place, one call
                dec = ctx.cpu_attention(qkv[:nd], cache, scale=self.scale, softcap=cfg.attn_softcap, window=window)
            else:
                span = batch.decode_kv_rows.shape[1] * kv.block_size
                kvb = (cache.view(2 * nkv, -1, kv.block_size * d).index_select(1, ctx.decode_blocks)
                       .view(2, nkv * nd, span, d))                            # K and V, [nkv·B, span, d] each
                qh = q[:nd].reshape(nd, nkv, g, d).transpose(0, 1).reshape(nkv * nd, g, d)
                out = self._attend(qh, kvb[0], kvb[1], decode_mask)             # [nkv·B, g, d]
                dec = out.view(nkv, nd, g, d).transpose(0, 1).reshape(nd, nh * d)
            if nd == t:
                return dec
        attn = torch.empty(t, nh * d, dtype=self.dtype, device=self.device)
        if nd:
            attn[:nd] = dec
        for ch, m in zip(batch.prefills, prefill_masks):
            r0, ln = ch.row0, ch.length
            qh = q[r0:r0 + ln].reshape(ln, nkv, g, d).permute(1, 2, 0, 3).reshape(nkv, g * ln, d)
            kvc = cache.index_select(2, ch.kv_rows)                             # [2, nkv, pos0+len, d]
            out = self._attend(qh, kvc[0], kvc[1], m)
            attn[r0:r0 + ln] = out.view(nkv, g, ln, d).permute(2, 0, 1, 3).reshape(ln, nh * d)
        return attn


class _LayerLora:
    """One layer's adapter slots and the step's LoRA metadata and plan. With atoll's CPU kernels,
    a decode-sized step (at most ``cpu_ops.LORA_MAX_ROWS`` rows) runs each projection's LoRA as
    one call over the rows' own slots (:class:`~atoll.kernels.cpu_ops.LoraStep`); longer steps
    take ``backend`` (their adapters' rows are long runs: GEMMs)."""

    def __init__(self, sw: SlotWeights, scales, meta: LoraMeta, backend: str, plan, cpu_lora=None):
        self.sw, self.scales, self.meta, self.backend, self.plan = sw, scales, meta, backend, plan
        self.cpu_lora = cpu_lora                # the step's cpu_ops.LoraStep, where it serves

    def apply(self, proj: str, y: torch.Tensor, x: torch.Tensor, offsets: tuple[int, ...]) -> None:
        if self.cpu_lora is not None:
            self.cpu_lora(y, x, self.sw.a[proj], self.sw.bp[proj], self.scales, offsets)
            return
        lora_apply(y, x, self.sw.a[proj], self.sw.b[proj], self.scales, self.meta, offsets,
                   backend=self.backend, plan=self.plan)


def slice_offsets(cfg: ModelConfig) -> tuple[tuple[int, ...], ...]:
    """Column offsets of the LoRA slices of each packed projection (qkv, o, gate_up, down): one
    slice per adapter module (phi3's fused modules are one slice each)."""
    from_dims = module_dims(cfg)
    out = []
    for mods in packed_modules(cfg).values():
        offs = [0]
        for m in mods:
            offs.append(offs[-1] + from_dims[m][1])
        out.append(tuple(offs))
    return tuple(out)
