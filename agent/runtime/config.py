"""Model configuration: the subset of a Hugging Face Llama ``config.json`` the runtime serves.

Both config styles are read: transformers 5 (``rope_parameters`` holding ``rope_theta`` and the
scaling) and transformers 4 (``rope_theta`` + ``rope_scaling``). RoPE types served: ``default``,
``linear`` and ``llama3``; anything else is refused with a :class:`SpecError` rather than served
with the wrong positions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from atoll.core.errors import SpecError

SUPPORTED_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM")
SUPPORTED_ROPE = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict = field(default_factory=dict)   # {"rope_type": ..., factor, ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str = "float32"

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def num_params(self) -> int:
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        layer = h * (self.q_size + 2 * self.kv_size) + self.q_size * h + 3 * h * i + 2 * h
        return v * h * (1 if self.tie_word_embeddings else 2) + self.num_layers * layer + h

    @staticmethod
    def from_dir(model_dir: str | Path) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise SpecError("config.json not found", source=str(model_dir),
                            hint="pass a local Hugging Face model directory (config.json, *.safetensors, tokenizer.json)")
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot parse JSON: {exc}", source=str(path)) from None
        return ModelConfig.from_dict(raw, source=str(path))

    @staticmethod
    def from_dict(raw: dict, *, source: str = "config.json") -> "ModelConfig":
        def need(key: str, alt: str | None = None):
            if key in raw and raw[key] is not None:
                return raw[key]
            if alt and raw.get(alt) is not None:
                return raw[alt]
            raise SpecError("missing required field", source=source, path=key)

        archs = raw.get("architectures") or ["LlamaForCausalLM"]
        mtype = raw.get("model_type", "llama")
        if archs[0] not in SUPPORTED_ARCHS and mtype not in ("llama", "mistral"):
            raise SpecError(f"architecture {archs[0]!r} (model_type {mtype!r}) is not served",
                            source=source, path="architectures",
                            hint=f"the runtime serves Llama-family decoders: {', '.join(SUPPORTED_ARCHS)}")
        for flag in ("attention_bias", "mlp_bias"):
            if raw.get(flag):
                raise SpecError(f"{flag}=true is not supported", source=source, path=flag,
                                hint="only bias-free Llama projections are served")
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise SpecError(f"hidden_act {act!r} is not supported", source=source, path="hidden_act",
                            hint="Llama's SwiGLU uses 'silu'")
        if raw.get("sliding_window"):
            raise SpecError("sliding-window attention is not supported", source=source, path="sliding_window")
        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        head_dim = int(raw.get("head_dim") or hidden // heads)
        if heads % kv_heads:
            raise SpecError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}",
                            source=source, path="num_key_value_heads")
        theta, scaling = _rope(raw, source)
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        dtype = raw.get("dtype") or raw.get("torch_dtype") or "float32"
        return ModelConfig(
            vocab_size=int(need("vocab_size")), hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")), num_layers=int(need("num_hidden_layers")),
            num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=raw.get("bos_token_id"), eos_token_ids=eos_ids, torch_dtype=str(dtype))


def _rope(raw: dict, source: str) -> tuple[float, dict]:
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:      # transformers 5 style
        theta = float(params["rope_theta"])
        scaling = dict(params)
        field_name = "rope_parameters"
    else:                                                       # transformers 4 style
        theta = float(raw.get("rope_theta", 10000.0))
        scaling = dict(raw.get("rope_scaling") or {})
        field_name = "rope_scaling"
    rtype = scaling.get("rope_type", scaling.get("type", "default"))
    scaling["rope_type"] = rtype
    scaling.pop("type", None)
    scaling.pop("rope_theta", None)
    if rtype not in SUPPORTED_ROPE:
        raise SpecError(f"RoPE type {rtype!r} is not supported", source=source, path=f"{field_name}.rope_type",
                        hint=f"served types: {', '.join(SUPPORTED_ROPE)}")
    if float(scaling.get("partial_rotary_factor", 1.0)) != 1.0:
        raise SpecError("partial rotary embeddings are not supported", source=source,
                        path=f"{field_name}.partial_rotary_factor")
    required = {"linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
    for key in required.get(rtype, ()):
        if key not in scaling:
            raise SpecError(f"RoPE type {rtype!r} needs {key!r}", source=source, path=f"{field_name}.{key}")
    return theta, scaling


def rope_inv_freq(cfg: ModelConfig):
    """Inverse frequencies [head_dim/2] (fp32) with the config's scaling, as Hugging Face computes them.

    default: ``1 / theta^(2i/d)``; linear: divided by ``factor``; llama3: wavelengths longer than
    ``orig/low_freq_factor`` divided by ``factor``, shorter than ``orig/high_freq_factor`` kept,
    and a linear blend between the two.
    """
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    sc = cfg.rope_scaling
    kind = sc.get("rope_type", "default")
    if kind == "linear":
        inv = inv / float(sc["factor"])
    elif kind == "llama3":
        factor = float(sc["factor"])
        lo, hi = float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        old = float(sc["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) * ~(wavelen > old / lo)
        inv = torch.where(medium, blended, scaled)
    return inv
