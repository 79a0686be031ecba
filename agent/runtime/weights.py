"""Base-model weights (Hugging Face tensor names, from safetensors shards or a GGUF file), packed
for the runtime.

Layout per layer (weights stored ``[out, in]`` as in ``nn.Linear``):

- ``qkv``: [q_size + 2·kv_size, hidden]  (q, k, v rows, in that order; phi3 stores it fused)
- ``o``: [hidden, q_size]
- ``gate_up``: [2·intermediate, hidden]  (gate rows, then up rows; phi3 stores it fused)
- ``down``: [hidden, intermediate]
- ``ln1``: [hidden] the norm before attention (input_layernorm); ``ln2``: the norm before the MLP
  (post_attention_layernorm, or gemma2's pre_feedforward_layernorm)
- optional: ``qkv_bias`` [q_size + 2·kv_size] and ``o_bias`` [hidden]; ``q_norm`` / ``k_norm``
  [head_dim] (qwen3); ``attn_out_norm`` / ``mlp_out_norm`` [hidden] (gemma2's
  post_attention_layernorm and post_feedforward_layernorm). gemma2 norms are stored as the fp32
  factor ``1 + w`` they multiply by.

On the CPU in fp32 the projections (and the lm_head) are stored **packed**: in panels of 32
output features for atoll's own linear kernel (:mod:`atoll.kernels.cpu_ops`) where
it builds, else in oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, the
layout PyTorch's own compiler uses for frozen CPU weights). Either is applied with
:func:`linear`. Measured on this 2-core CPU against plain ``F.linear`` (``bench/runtime_bench.py
--plain-gemm`` runs the other way): oneDNN's packing takes the GEMMs of a 32-row decode step of
the runtime bench's model from 28 ms to 20 (8 rows: 17 to 8); the panel kernel reads the weights
of a one-row step 1.2-1.5x as fast as oneDNN (30-44 GB/s against 20-37) and keeps up with it at
4-32 rows; at 128-512 rows (prefill) it is within 3% on SmolLM2's shapes, and on a 1B model's
shapes with AVX2 10-17% behind (``bench/cpu_ops_bench.py``, docs/runtime.md). Only one copy of each projection is
kept; a tied lm_head is the one exception (below).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from atoll.core.errors import InvalidArgument, SpecError
from atoll.kernels import cpu_ops
from atoll.kernels.cpu_ops import PanelWeight

from .config import ModelConfig
from .memory import check_fits

_REORDER = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
_LINEAR_PACKED = getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def onednn_available() -> bool:
    return (_REORDER is not None and _LINEAR_PACKED is not None and torch.backends.mkldnn.is_available())


def packing_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Packed weights serve fp32 on the CPU (atoll's panel kernel, else oneDNN's layout)."""
    return (torch.device(device).type == "cpu" and dtype == torch.float32
            and (cpu_ops.available() or onednn_available()))


def pack(w: torch.Tensor, batch_hint: int = 32, *, layout: str | None = None) -> torch.Tensor | PanelWeight:
    """A [out, in] fp32 CPU weight packed for :func:`linear`: ``layout`` "panel" (atoll's
    kernel) or "onednn" (an opaque ``torch._mkldnn`` tensor: shape and values kept, no storage to
    index); None takes the panel layout wherever its kernel builds."""
    if layout is None:
        layout = "panel" if cpu_ops.available() else "onednn"
    if layout == "panel":
        return cpu_ops.pack(w)
    return _REORDER(w.contiguous(), batch_hint)


def is_packed(w) -> bool:
    return isinstance(w, PanelWeight) or w.is_mkldnn


def layout_of(w) -> str:
    """"panel", "onednn" or "plain"."""
    return "panel" if isinstance(w, PanelWeight) else "onednn" if w.is_mkldnn else "plain"


def linear(x: torch.Tensor, w, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w.T (+ bias) for a plain [out, in] weight or one packed by :func:`pack`."""
    if isinstance(w, PanelWeight):
        return cpu_ops.linear(x, w, bias)
    if w.is_mkldnn:
        return _LINEAR_PACKED(x, w, bias, "none", [], "")
    return F.linear(x, w, bias)


def linear_add(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + (x @ w.T + bias)`` as a new tensor (the same bits as :func:`linear` then an
    add). A packed weight adds the residual inside the GEMM (oneDNN's binary post-op, or the
    panel kernel's store): one pass over the output instead of two."""
    if isinstance(w, PanelWeight):
        return cpu_ops.linear(x, w, bias, residual)
    if w.is_mkldnn:
        return _LINEAR_PACKED.binary(x, residual, w, bias, "add")
    return F.linear(x, w, bias).add_(residual)


@dataclass
class LayerWeights:
    qkv: torch.Tensor
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    attn_out_norm: torch.Tensor | None = None
    mlp_out_norm: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.qkv, self.o, self.gate_up, self.down, self.ln1, self.ln2, self.qkv_bias,
                            self.o_bias, self.q_norm, self.k_norm, self.attn_out_norm, self.mlp_out_norm)
                if t is not None]


@dataclass
class ModelWeights:
    embed: torch.Tensor          # [vocab, hidden]
    layers: list[LayerWeights]
    norm: torch.Tensor           # [hidden]
    lm_head: torch.Tensor        # [vocab, hidden] (the embedding itself when tied)

    def nbytes(self) -> int:
        seen, total = set(), 0
        tensors = [self.embed, self.norm, self.lm_head]
        for lw in self.layers:
            tensors += lw.tensors()
        for t in tensors:
            key = id(t) if is_packed(t) else t.data_ptr()    # packed weights have no storage of their own
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
        return total


def _shard_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise SpecError(f"bad shard index: {exc}", source=str(index)) from None
        files = [model_dir / n for n in names]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    missing = [str(f) for f in files if not f.is_file()]
    if not files or missing:
        raise SpecError("no safetensors weights found" if not files else f"missing shards {missing}",
                        source=str(model_dir), hint="save the model with save_pretrained(safe_serialization=True)")
    return files


def read_safetensors(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face checkpoint directory, by name."""
    model_dir = Path(model_dir)
    raw: dict[str, torch.Tensor] = {}
    for f in _shard_files(model_dir):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    raw[k] = fh.get_tensor(k)
        except Exception as exc:  # safetensors raises its own error types
            raise SpecError(f"cannot read safetensors file: {exc}", source=str(f)) from None
    return raw


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _load_bytes(model_dir: Path, dtype: torch.dtype, device: torch.device) -> int:
    """Host memory a load holds at its peak, from the shards' headers: every tensor as stored,
    plus its cast to ``dtype`` when that is kept in host memory too."""
    total = 0
    for f in _shard_files(model_dir):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    sl = fh.get_slice(k)
                    n = 1
                    for d in sl.get_shape():
                        n *= int(d)
                    stored = _DTYPE_BYTES.get(sl.get_dtype(), 4)
                    cast = dtype.itemsize if device.type == "cpu" and dtype.itemsize != stored else 0
                    total += n * (stored + cast)
        except Exception as exc:  # safetensors raises its own error types
            raise SpecError(f"cannot read safetensors file: {exc}", source=str(f)) from None
    return total


def load_weights(model_dir: str | Path, cfg: ModelConfig, *, dtype: torch.dtype,
                 device: torch.device, packed: bool | str | None = None) -> ModelWeights:
    """Read every shard of a checkpoint directory, then :func:`build_weights` (refused before a
    byte is read when the host's memory cannot hold the tensors and their cast to ``dtype``)."""
    check_fits(_load_bytes(Path(model_dir), dtype, torch.device(device)), "this checkpoint", str(model_dir))
    return build_weights(read_safetensors(model_dir), cfg, dtype=dtype, device=device, packed=packed,
                         source=str(model_dir))


def build_weights(raw: dict[str, torch.Tensor], cfg: ModelConfig, *, dtype: torch.dtype,
                  device: torch.device, packed: bool | str | None = None, source: str = "checkpoint") -> ModelWeights:
    """Check each tensor (Hugging Face names) against ``cfg``, pack and move to ``device``.

    ``packed``: store the projections packed for the CPU: True or None packs wherever
    :func:`packing_available` (None decides; True raises where it cannot), in the panel layout
    where atoll's kernel builds, else oneDNN's; "panel" or "onednn" asks for that layout."""
    layout = _layout(packed, device, dtype)
    packed = layout is not None
    h, i = cfg.hidden_size, cfg.intermediate_size
    take = _Taker(raw, dtype, source)

    def dev(t: torch.Tensor) -> torch.Tensor:
        return t.to(device).contiguous()

    def norm(name: str, size: int) -> torch.Tensor:
        w = take(name, (size,))
        return dev((1.0 + w.float()) if cfg.gemma_norms else w)

    def proj(t: torch.Tensor, wide: bool = False) -> torch.Tensor:
        """A projection [out, in]: packed for oneDNN when ``packed``. Otherwise, on the CPU, a
        wide one (qkv, gate_up, an untied lm_head) has its memory laid out as [in, out] (the
        tensor is the transposed view of that buffer, same shape and values): MKL's GEMM of
        x @ W.T then reads W without a transpose, measured 6-18% faster at decode and prefill
        sizes on this 2-core CPU (narrow o / down were not faster)."""
        if packed:
            return pack(t, layout=layout)
        if wide and torch.device(device).type == "cpu":
            return t.t().contiguous().t()
        return dev(t)

    layers = []
    for n in range(cfg.num_layers):
        p = f"model.layers.{n}."
        qkv, gate_up = _qkv(take, p, cfg), _gate_up(take, p, cfg)
        lw = LayerWeights(
            qkv=proj(qkv, wide=True), o=proj(take(p + "self_attn.o_proj.weight", (h, cfg.q_size))),
            gate_up=proj(gate_up, wide=True), down=proj(take(p + "mlp.down_proj.weight", (h, i))),
            ln1=norm(p + "input_layernorm.weight", h),
            ln2=norm(p + ("pre_feedforward_layernorm" if cfg.gemma_norms else "post_attention_layernorm")
                     + ".weight", h))
        if cfg.qkv_bias:
            lw.qkv_bias = dev(torch.cat([take(p + f"self_attn.{m}_proj.bias", (size,)) for m, size in
                                         (("q", cfg.q_size), ("k", cfg.kv_size), ("v", cfg.kv_size))]))
        if cfg.o_bias:
            lw.o_bias = dev(take(p + "self_attn.o_proj.bias", (h,)))
        if cfg.qk_norm:
            lw.q_norm = norm(p + "self_attn.q_norm.weight", cfg.head_dim)
            lw.k_norm = norm(p + "self_attn.k_norm.weight", cfg.head_dim)
        if cfg.gemma_norms:
            lw.attn_out_norm = norm(p + "post_attention_layernorm.weight", h)
            lw.mlp_out_norm = norm(p + "post_feedforward_layernorm.weight", h)
        layers.append(lw)
    embed = dev(take("model.embed_tokens.weight", (cfg.vocab_size, h)))
    if cfg.tie_word_embeddings or "lm_head.weight" not in raw:
        # tied: packed, the lm_head is a second copy of the table (the lookup needs the plain
        # one), worth its memory: the largest GEMM of a decode step, 1.9x faster packed at 32
        # rows and 1.3x at one row (SmolLM2-135M's 49,152 x 576 on this CPU)
        lm_head = pack(embed, layout=layout) if packed else embed
    else:
        lm_head = proj(take("lm_head.weight", (cfg.vocab_size, h)), wide=True)
    return ModelWeights(embed=embed, layers=layers, norm=norm("model.norm.weight", h), lm_head=lm_head)


def _layout(packed: bool | str | None, device, dtype: torch.dtype) -> str | None:
    """The packed layout ``packed`` asks for ("panel", "onednn"), or None for plain weights."""
    if packed is False:
        return None
    if packed not in (None, True, "panel", "onednn"):
        raise InvalidArgument(f"packed_weights must be true, false, 'panel' or 'onednn', not {packed!r}")
    if not packing_available(device, dtype):
        if packed is None:
            return None
        raise InvalidArgument(f"packed weights need fp32 on a CPU with oneDNN or atoll's CPU kernels, not {dtype} on {device}",
                              hint="leave packed unset to choose automatically")
    if packed == "panel" and not cpu_ops.available():
        raise InvalidArgument(f"the panel layout needs atoll's CPU kernel: {cpu_ops.why_not()}",
                              hint="leave packed unset to choose automatically")
    if packed == "onednn" and not onednn_available():
        raise InvalidArgument("this torch build has no oneDNN", hint="leave packed unset to choose automatically")
    if packed in ("panel", "onednn"):
        return packed
    return "panel" if cpu_ops.available() else "onednn"


class _Taker:
    """Named tensors checked for presence and shape, cast to the serving dtype."""

    def __init__(self, raw: dict[str, torch.Tensor], dtype: torch.dtype, source: str):
        self.raw, self.dtype, self.source = raw, dtype, source

    def __call__(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        t = self.raw.get(name)
        if t is None:
            raise SpecError(f"tensor {name!r} is missing", source=self.source,
                            hint="the checkpoint does not match config.json")
        if tuple(t.shape) != shape:
            raise SpecError(f"tensor {name!r} has shape {tuple(t.shape)}, config.json implies {shape}",
                            source=self.source)
        return t.to(dtype=self.dtype)


def _qkv(take: _Taker, p: str, cfg: ModelConfig) -> torch.Tensor:
    h, q, kv = cfg.hidden_size, cfg.q_size, cfg.kv_size
    if cfg.fused_projections:
        return take(p + "self_attn.qkv_proj.weight", (q + 2 * kv, h))
    return torch.cat([take(p + "self_attn.q_proj.weight", (q, h)), take(p + "self_attn.k_proj.weight", (kv, h)),
                      take(p + "self_attn.v_proj.weight", (kv, h))])


def _gate_up(take: _Taker, p: str, cfg: ModelConfig) -> torch.Tensor:
    h, i = cfg.hidden_size, cfg.intermediate_size
    if cfg.fused_projections:
        return take(p + "mlp.gate_up_proj.weight", (2 * i, h))
    return torch.cat([take(p + "mlp.gate_proj.weight", (i, h)), take(p + "mlp.up_proj.weight", (i, h))])
