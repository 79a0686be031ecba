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
masked); each prefill chunk attends over its request's rows separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from atoll.kernels.lora import LoraMeta, lora_apply, plan_step

from .config import ModelConfig, rope_inv_freq
from .modules import module_dims, packed_modules
from .kv_cache import PagedKVCache
from .weights import ModelWeights, linear


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
    decode_kv_mask: torch.Tensor | None   # [B, 1, NB·block_size] additive mask (0 or -inf)
    prefills: list[PrefillChunk]
    logit_rows: torch.Tensor  # [M] long: rows whose next-token logits are wanted


class SlotWeights:
    """Stacked adapter slots of one layer, per packed projection: a [S,N,R,in], b [S,out,R]."""

    def __init__(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]):
        self.a, self.b = a, b


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False) -> torch.Tensor:
    """Llama: ``w · (x / rms(x))`` cast to x's dtype before the product; gemma2: the product in
    fp32 with ``weight`` already ``1 + w``, then cast."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if gemma:
        return (xf * weight).to(x.dtype)
    return weight * xf.to(x.dtype)


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap


class _StepMasks:
    """Additive attention masks of one step, made once per window size and shared by the layers
    with that window: decode [B, 1, span] and one [g·len, pos0+len] per prefill chunk."""

    def __init__(self, batch: StepBatch, group: int, device: torch.device):
        self.batch, self.group, self.device = batch, group, device
        self._made: dict[int | None, tuple] = {}

    def get(self, window: int | None):
        got = self._made.get(window)
        if got is None:
            got = self._made[window] = (self._decode(window), [self._prefill(ch, window) for ch in self.batch.prefills])
        return got

    def _decode(self, window: int | None):
        b = self.batch
        if not b.num_decode or window is None:
            return b.decode_kv_mask
        span = b.decode_kv_mask.shape[-1]
        ar = torch.arange(span, device=self.device)
        old = ar[None, :] <= b.positions[:b.num_decode, None] - window                   # [B, span]
        return b.decode_kv_mask.masked_fill(old.unsqueeze(1), float("-inf"))

    def _prefill(self, ch: PrefillChunk, window: int | None) -> torch.Tensor:
        qpos = torch.arange(ch.pos0, ch.pos0 + ch.length, device=self.device)
        kpos = torch.arange(ch.pos0 + ch.length, device=self.device)
        m = torch.zeros(ch.length, kpos.numel(), device=self.device)
        hidden = kpos[None, :] > qpos[:, None]
        if window is not None:
            hidden |= kpos[None, :] <= qpos[:, None] - window
        m.masked_fill_(hidden, float("-inf"))
        return m.repeat(self.group, 1)                                                      # rows ordered (g, Lq)


class LlamaModel:
    """The decoder of every served family (Llama's, with the features its config switches on)."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, *, dtype: torch.dtype,
                 device: torch.device, lora_backend: str = "torch"):
        self.cfg, self.w, self.dtype, self.device = cfg, weights, dtype, device
        self.lora_backend = lora_backend
        self.inv_freq = rope_inv_freq(cfg).to(device)
        self._rope_len = 0
        self._cos = self._sin = None
        self.q_slices, self.o_slices, self.gu_slices, self.down_slices = slice_offsets(cfg)
        self.scale = cfg.scale
        self.act = F.silu if cfg.activation == "silu" else partial(F.gelu, approximate="tanh")
        self.embed_scale = (torch.tensor(cfg.embed_scale, dtype=dtype) if cfg.embed_scale is not None else None)

    def _rope_tables(self, max_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        if max_pos > self._rope_len:
            n = max(max_pos, 2 * self._rope_len, 256)
            pos = torch.arange(n, device=self.device, dtype=torch.float32)
            freqs = torch.outer(pos, self.inv_freq)
            emb = torch.cat([freqs, freqs], dim=-1)
            self._cos, self._sin, self._rope_len = emb.cos(), emb.sin(), n
        return self._cos, self._sin

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], dim=-1)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rd = cos.shape[-1]
        if rd == x.shape[-1]:
            return x * cos + self._rotate_half(x) * sin
        xr = x[..., :rd]
        return torch.cat([xr * cos + self._rotate_half(xr) * sin, x[..., rd:]], dim=-1)

    def _attend(self, qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """qh [nkv, B, M, d] (M = g·Lq query rows per kv head), kh/vh [nkv, B, L, d], additive mask
        broadcastable to [nkv, B, M, L]. Returns [nkv, B, M, d]."""
        scores = softcap(torch.matmul(qh, kh.transpose(-1, -2)).float() * self.scale, self.cfg.attn_softcap) + mask
        probs = torch.softmax(scores, dim=-1).to(vh.dtype)
        return torch.matmul(probs, vh)

    def forward(self, batch: StepBatch, kv: PagedKVCache, slots: list[SlotWeights] | None,
                scales: torch.Tensor | None, *, return_hidden: bool = False):
        """Returns fp32 logits [M, vocab] for ``batch.logit_rows`` (and final hidden [T, H] if asked)."""
        cfg = self.cfg
        meta = batch.lora
        use_lora = slots is not None and meta.any_lora
        lplan = plan_step(meta, backend=self.lora_backend) if use_lora else None   # once per step
        cos_t, sin_t = self._rope_tables(int(batch.positions.max()) + 1)
        cos = cos_t[batch.positions].to(self.dtype).unsqueeze(1)            # [T, 1, rope_dim]
        sin = sin_t[batch.positions].to(self.dtype).unsqueeze(1)
        masks = _StepMasks(batch, cfg.num_heads // cfg.num_kv_heads, self.device)
        x = self.w.embed[batch.input_ids]
        if self.embed_scale is not None:
            x = x * self.embed_scale
        for n, lw in enumerate(self.w.layers):
            lora = _LayerLora(slots[n], scales, meta, self.lora_backend, lplan) if use_lora else None
            x = self._layer(n, lw, x, batch, kv, cos, sin, masks.get(cfg.layer_window(n)), lora)
        x = rms_norm(x, self.w.norm, cfg.rms_norm_eps, cfg.gemma_norms)
        logits = None
        if batch.logit_rows.numel():
            logits = softcap(linear(x[batch.logit_rows], self.w.lm_head).float(), cfg.final_softcap)
        return (logits, x) if return_hidden else logits

    def _layer(self, n: int, lw, x, batch: StepBatch, kv: PagedKVCache, cos, sin, masks, lora) -> torch.Tensor:
        cfg = self.cfg
        gem = cfg.gemma_norms
        h = rms_norm(x, lw.ln1, cfg.rms_norm_eps, gem)
        qkv = linear(h, lw.qkv, lw.qkv_bias)
        if lora is not None:
            lora.apply("qkv", qkv, h, self.q_slices)
        attn = self._attention(n, lw, qkv, batch, kv, cos, sin, masks)
        o = linear(attn, lw.o, lw.o_bias)
        if lora is not None:
            lora.apply("o", o, attn, self.o_slices)
        if lw.attn_out_norm is not None:
            o = rms_norm(o, lw.attn_out_norm, cfg.rms_norm_eps, gem)
        x = x + o
        h = rms_norm(x, lw.ln2, cfg.rms_norm_eps, gem)
        gu = linear(h, lw.gate_up)
        if lora is not None:
            lora.apply("gate_up", gu, h, self.gu_slices)
        i = cfg.intermediate_size
        act = self.act(gu[:, :i]) * gu[:, i:]
        dn = linear(act, lw.down)
        if lora is not None:
            lora.apply("down", dn, act, self.down_slices)
        if lw.mlp_out_norm is not None:
            dn = rms_norm(dn, lw.mlp_out_norm, cfg.rms_norm_eps, gem)
        return x + dn

    def _attention(self, n: int, lw, qkv, batch: StepBatch, kv: PagedKVCache, cos, sin, masks) -> torch.Tensor:
        cfg = self.cfg
        nh, nkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        t = qkv.shape[0]
        q = qkv[:, :cfg.q_size].view(t, nh, d)
        k = qkv[:, cfg.q_size:cfg.q_size + cfg.kv_size].view(t, nkv, d)
        v = qkv[:, cfg.q_size + cfg.kv_size:].view(t, nkv, d)
        if lw.q_norm is not None:
            q = rms_norm(q, lw.q_norm, cfg.rms_norm_eps)
            k = rms_norm(k, lw.k_norm, cfg.rms_norm_eps)
        q = self._rope(q, cos, sin)
        k = self._rope(k, cos, sin)
        kc, vc = kv.k[n], kv.v[n]                                              # [nkv, rows, d]
        # index_select / index_copy_ along the row dim: a memcpy per row or block, several
        # times faster on the CPU than advanced indexing of a middle dimension
        kc.index_copy_(1, batch.write_rows, k.transpose(0, 1))
        vc.index_copy_(1, batch.write_rows, v.transpose(0, 1))
        attn = torch.empty(t, nh * d, dtype=self.dtype, device=self.device)
        g = nh // nkv
        nd = batch.num_decode
        decode_mask, prefill_masks = masks
        if nd:
            blocks = batch.decode_kv_rows.flatten()                            # [B·NB]
            span = batch.decode_kv_rows.shape[1] * kv.block_size
            bsd = kv.block_size * d
            kb = kc.view(nkv, -1, bsd).index_select(1, blocks).view(nkv, nd, span, d)
            vb = vc.view(nkv, -1, bsd).index_select(1, blocks).view(nkv, nd, span, d)
            qh = q[:nd].view(nd, nkv, g, d).transpose(0, 1)                    # [nkv, B, g, d]
            out = self._attend(qh, kb, vb, decode_mask)
            attn[:nd] = out.transpose(0, 1).reshape(nd, nh * d)
        for ch, m in zip(batch.prefills, prefill_masks):
            r0, ln = ch.row0, ch.length
            qh = q[r0:r0 + ln].view(ln, nkv, g, d).permute(1, 2, 0, 3).reshape(nkv, 1, g * ln, d)
            out = self._attend(qh, kc.index_select(1, ch.kv_rows).unsqueeze(1),
                               vc.index_select(1, ch.kv_rows).unsqueeze(1), m)
            attn[r0:r0 + ln] = out.view(nkv, g, ln, d).permute(2, 0, 1, 3).reshape(ln, nh * d)
        return attn


class _LayerLora:
    """One layer's adapter slots and the step's LoRA metadata and plan."""

    def __init__(self, sw: SlotWeights, scales, meta: LoraMeta, backend: str, plan):
        self.sw, self.scales, self.meta, self.backend, self.plan = sw, scales, meta, backend, plan

    def apply(self, proj: str, y: torch.Tensor, x: torch.Tensor, offsets: tuple[int, ...]) -> None:
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
