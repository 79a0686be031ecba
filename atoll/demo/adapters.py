"""Tenants' LoRA adapters for the demo: **random** weights at a small scale, not trained.

Each adapter is a real PEFT directory (``adapter_config.json`` + ``adapter_model.safetensors``)
for the served base model, on every attention and MLP projection: ``A`` rows of unit scale,
``B`` drawn so that the update ``(alpha / r) · B · A`` moves a projection's output by about
``relative`` of its size (default 2%). Such an adapter makes a tenant's replica a distinct
model (its logits differ from the base model's) while the answers stay the base model's in
substance; it is not a fine-tune and is never presented as one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# GGUF tensor names of the projections (llama.cpp's), by Hugging Face module name
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def gguf_shape(path: Path) -> tuple[Shape, dict[str, float]]:
    """A Llama-architecture GGUF file's shape, and the standard deviation of each projection's
    weights in its first layer (read with the ``gguf`` package, without loading the model)."""
    r = GGUFReader(str(path))

    def meta(key: str) -> int:
        f = r.fields[key]
        return int(f.parts[f.data[0]][0])

    shape = Shape(meta("llama.embedding_length"), meta("llama.feed_forward_length"), meta("llama.block_count"),
                  meta("llama.attention.head_count"), meta("llama.attention.head_count_kv"))
    tensors = {t.name: t for t in r.tensors}
    std = {m: float(dequantize(tensors[f"blk.0.{g}.weight"].data, tensors[f"blk.0.{g}.weight"].tensor_type).std())
           for m, g in GGUF_NAMES.items()}
    return shape, std


def projection_shapes(cfg) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection of a Llama-family model shape."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def random_adapter(path: Path, cfg, base_std: dict[str, float], *, rank: int = 8, alpha: float = 16.0,
                   relative: float = 0.02, seed: int = 0) -> Path:
    """Write a random PEFT LoRA adapter for a model of shape ``cfg`` (:class:`Shape`) into
    ``path``. ``base_std``: the standard deviation of each projection's base weights."""
    rng = np.random.default_rng(seed)
    scale = alpha / rank
    tensors = {}
    for i in range(cfg.num_layers):
        for m, (fin, fout) in projection_shapes(cfg).items():
            grp = "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            prefix = f"base_model.model.model.layers.{i}.{grp}.{m}."
            # For x of norm |x|: each of A·x's r entries is about |x|/√fin, each output of
            # scale·B·(A·x) about scale·std_B·√r·|x|/√fin, each output of W·x about std_W·|x|;
            # their ratio is ``relative`` for this std_B.
            a = rng.standard_normal((rank, fin)).astype(np.float32) / math.sqrt(fin)
            std_b = relative * base_std[m] * math.sqrt(fin) / (scale * math.sqrt(rank))
            b = (rng.standard_normal((fout, rank)) * std_b).astype(np.float32)
            tensors[prefix + "lora_A.weight"] = a
            tensors[prefix + "lora_B.weight"] = b
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": list(MODULES), "bias": "none", "use_rslora": False, "use_dora": False,
        "fan_in_fan_out": False, "modules_to_save": None, "inference_mode": True}, indent=2))
    return out
