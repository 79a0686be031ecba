"""The Llama decoder over one flattened step: T tokens from many requests, mixed prefill/decode.

Per layer, for the step's rows x [T, hidden]:

    h = RMSNorm(x)·g1;  qkv = h·Wqkvᵀ (+LoRA, 3 slices);  q,k ← RoPE(q,k, position)
    K/V rows written to the paged cache;  a = softmax(q·kᵀ/√d + causal mask)·v  (GQA: kv head j
    serves q heads j·g … j·g+g-1);  x += a·Woᵀ (+LoRA)
    h = RMSNorm(x)·g2;  [gate|up] = h·Wguᵀ (+LoRA, 2 slices);  x += (silu(gate)·up)·Wdᵀ (+LoRA)

RMSNorm runs in fp32 and casts back, as Hugging Face does. Attention for decode rows is one
batched call over each request's cache blocks gathered whole through its block table (padded,
masked);
each prefill chunk attends over its request's rows separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from atoll.kernels.lora import LoraMeta, lora_apply, plan_step

from .config import ModelConfig, rope_inv_freq
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


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class LlamaModel:
    def __init__(self, cfg: ModelConfig, weights: ModelWeights, *, dtype: torch.dtype,
                 device: torch.device, lora_backend: str = "torch"):
        self.cfg, self.w, self.dtype, self.device = cfg, weights, dtype, device
        self.lora_backend = lora_backend
        self.inv_freq = rope_inv_freq(cfg).to(device)
        self._rope_len = 0
        self._cos = self._sin = None
        self.q_slices = (0, cfg.q_size, cfg.q_size + cfg.kv_size, cfg.q_size + 2 * cfg.kv_size)
        i = cfg.intermediate_size
        self.gu_slices = (0, i, 2 * i)
        self.o_slices = (0, cfg.hidden_size)
        self.scale = cfg.head_dim ** -0.5

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

    def _attend(self, qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """qh [nkv, B, M, d] (M = g·Lq query rows per kv head), kh/vh [nkv, B, L, d], additive mask
        broadcastable to [nkv, B, M, L]. Returns [nkv, B, M, d]."""
        scores = torch.matmul(qh, kh.transpose(-1, -2)).float() * self.scale + mask
        probs = torch.softmax(scores, dim=-1).to(vh.dtype)
        return torch.matmul(probs, vh)

    def forward(self, batch: StepBatch, kv: PagedKVCache, slots: list[SlotWeights] | None,
                scales: torch.Tensor | None, *, return_hidden: bool = False):
        """Returns fp32 logits [M, vocab] for ``batch.logit_rows`` (and final hidden [T, H] if asked)."""
        cfg = self.cfg
        nh, nkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        t = batch.input_ids.shape[0]
        meta = batch.lora
        use_lora = slots is not None and meta.any_lora
        be = self.lora_backend
        lplan = plan_step(meta, backend=be) if use_lora else None     # once per step, every layer
        cos_t, sin_t = self._rope_tables(int(batch.positions.max()) + 1)
        cos = cos_t[batch.positions].to(self.dtype).unsqueeze(1)            # [T, 1, d]
        sin = sin_t[batch.positions].to(self.dtype).unsqueeze(1)
        nd = batch.num_decode
        masks = []
        for ch in batch.prefills:
            qpos = torch.arange(ch.pos0, ch.pos0 + ch.length, device=self.device)
            kpos = torch.arange(ch.pos0 + ch.length, device=self.device)
            m = torch.zeros(ch.length, kpos.numel(), device=self.device)
            m.masked_fill_(kpos[None, :] > qpos[:, None], float("-inf"))
            masks.append(m.repeat(nh // nkv, 1))                               # rows ordered (g, Lq)

        x = self.w.embed[batch.input_ids]
        for n, lw in enumerate(self.w.layers):
            sw = slots[n] if use_lora else None
            h = rms_norm(x, lw.ln1, cfg.rms_norm_eps)
            qkv = linear(h, lw.qkv)
            if sw is not None:
                lora_apply(qkv, h, sw.a["qkv"], sw.b["qkv"], scales, meta, self.q_slices, backend=be, plan=lplan)
            q = qkv[:, :cfg.q_size].view(t, nh, d)
            k = qkv[:, cfg.q_size:cfg.q_size + cfg.kv_size].view(t, nkv, d)
            v = qkv[:, cfg.q_size + cfg.kv_size:].view(t, nkv, d)
            q = q * cos + self._rotate_half(q) * sin
            k = k * cos + self._rotate_half(k) * sin
            kc, vc = kv.k[n], kv.v[n]                                          # [nkv, rows, d]
            # index_select / index_copy_ along the row dim: a memcpy per row or block, several
            # times faster on the CPU than advanced indexing of a middle dimension
            kc.index_copy_(1, batch.write_rows, k.transpose(0, 1))
            vc.index_copy_(1, batch.write_rows, v.transpose(0, 1))
            attn = torch.empty(t, nh * d, dtype=self.dtype, device=self.device)
            g = nh // nkv
            if nd:
                blocks = batch.decode_kv_rows.flatten()                            # [B·NB]
                span = batch.decode_kv_rows.shape[1] * kv.block_size
                bsd = kv.block_size * d
                kb = kc.view(nkv, -1, bsd).index_select(1, blocks).view(nkv, nd, span, d)
                vb = vc.view(nkv, -1, bsd).index_select(1, blocks).view(nkv, nd, span, d)
                qh = q[:nd].view(nd, nkv, g, d).transpose(0, 1)                    # [nkv, B, g, d]
                out = self._attend(qh, kb, vb, batch.decode_kv_mask)
                attn[:nd] = out.transpose(0, 1).reshape(nd, nh * d)
            for ch, m in zip(batch.prefills, masks):
                r0, ln = ch.row0, ch.length
                qh = q[r0:r0 + ln].view(ln, nkv, g, d).permute(1, 2, 0, 3).reshape(nkv, 1, g * ln, d)
                out = self._attend(qh, kc.index_select(1, ch.kv_rows).unsqueeze(1),
                                   vc.index_select(1, ch.kv_rows).unsqueeze(1), m)
                attn[r0:r0 + ln] = out.view(nkv, g, ln, d).permute(2, 0, 1, 3).reshape(ln, nh * d)
            o = linear(attn, lw.o)
            if sw is not None:
                lora_apply(o, attn, sw.a["o"], sw.b["o"], scales, meta, self.o_slices, backend=be, plan=lplan)
            x = x + o
            h = rms_norm(x, lw.ln2, cfg.rms_norm_eps)
            gu = linear(h, lw.gate_up)
            if sw is not None:
                lora_apply(gu, h, sw.a["gate_up"], sw.b["gate_up"], scales, meta, self.gu_slices, backend=be, plan=lplan)
            i = cfg.intermediate_size
            act = F.silu(gu[:, :i]) * gu[:, i:]
            dn = linear(act, lw.down)
            if sw is not None:
                lora_apply(dn, act, sw.a["down"], sw.b["down"], scales, meta, self.o_slices, backend=be, plan=lplan)
            x = x + dn
        x = rms_norm(x, self.w.norm, cfg.rms_norm_eps)
        logits = linear(x[batch.logit_rows], self.w.lm_head).float() if batch.logit_rows.numel() else None
        return (logits, x) if return_hidden else logits
