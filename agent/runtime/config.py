"""Model configuration: what the runtime serves of a Hugging Face ``config.json``.

Families (``model_type``) and the features each brings:

| family | features |
|---|---|
| ``llama`` | SwiGLU, RMSNorm, RoPE (default / linear / llama3), optional ``attention_bias`` |
| ``mistral`` | Llama + sliding-window attention on every layer (``sliding_window``) |
| ``qwen2`` | Llama + q/k/v bias (o without); sliding window on layers ``layer_types`` names |
| ``qwen3`` | Llama + per-head RMSNorm of q and k before RoPE (``q_norm``, ``k_norm``) |
| ``gemma2`` | GeGLU (tanh GELU), RMSNorm scaled by (1 + w) in fp32, norms before and after attention and MLP, embeddings scaled by √hidden, attention scale from ``query_pre_attn_scalar``, tanh soft-capping of attention scores and final logits, sliding and global layers alternating (``layer_types``) |
| ``phi3`` | fused ``qkv_proj`` and ``gate_up_proj`` weights (adapters target the fused modules), optional sliding window, partial rotary embeddings |

Both config styles are read: transformers 5 (``rope_parameters`` holding ``rope_theta`` and the
scaling) and transformers 4 (``rope_theta`` + ``rope_scaling``). RoPE types served: ``default``,
``linear`` and ``llama3``. Anything else is refused with a :class:`SpecError` that names the
model type and the missing feature, rather than served wrongly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from atoll.core.errors import SpecError

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3")
ARCH_FAMILY = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
               "Qwen3ForCausalLM": "qwen3", "Gemma2ForCausalLM": "gemma2", "Phi3ForCausalLM": "phi3"}
SUPPORTED_ARCHS = tuple(ARCH_FAMILY)
SUPPORTED_ROPE = ("default", "linear", "llama3")
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


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
    model_type: str = "llama"
    qkv_bias: bool = False                 # q, k and v projections carry a bias
    o_bias: bool = False                   # the output projection carries a bias
    qk_norm: bool = False                  # qwen3: RMSNorm over each head of q and k before RoPE
    activation: str = "silu"               # silu (SwiGLU) | gelu_tanh (GeGLU)
    gemma_norms: bool = False              # gemma2: (1 + w) norms in fp32, sandwich norms
    embed_scale: float | None = None       # gemma2: embeddings times √hidden
    attn_scale: float | None = None        # None: head_dim ** -0.5
    attn_softcap: float | None = None      # gemma2: cap · tanh(scores / cap)
    final_softcap: float | None = None     # gemma2: the same on the logits
    sliding_window: int | None = None      # keys older than this many positions are not attended
    layer_types: tuple[str, ...] = ()      # per layer: "full_attention" | "sliding_attention"
    fused_projections: bool = False        # phi3: qkv_proj and gate_up_proj in the checkpoint
    rotary_dim: int | None = None          # None: head_dim (partial rotary: fewer)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def rope_dim(self) -> int:
        return self.rotary_dim or self.head_dim

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else self.head_dim ** -0.5

    def layer_window(self, n: int) -> int | None:
        """The sliding window of layer ``n`` (None: full causal attention)."""
        if self.sliding_window is None:
            return None
        if self.layer_types and self.layer_types[n] != "sliding_attention":
            return None
        return self.sliding_window

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
                            hint="pass a local Hugging Face model directory (config.json, *.safetensors, "
                                 "tokenizer.json) or a .gguf file")
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot parse JSON: {exc}", source=str(path)) from None
        return ModelConfig.from_dict(raw, source=str(path))

    @staticmethod
    def from_dict(raw: dict, *, source: str = "config.json") -> "ModelConfig":
        def need(key: str):
            if key in raw and raw[key] is not None:
                return raw[key]
            raise SpecError("missing required field", source=source, path=key)

        family = _family(raw, source)
        _refuse_unserved(raw, family, source)
        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        head_dim = int(raw.get("head_dim") or hidden // heads)
        if heads % kv_heads:
            raise SpecError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}",
                            source=source, path="num_key_value_heads")
        layers = int(need("num_hidden_layers"))
        theta, scaling, rotary = _rope(raw, source, head_dim, family)
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        dtype = raw.get("dtype") or raw.get("torch_dtype") or "float32"
        window, layer_types = _windows(raw, family, layers, source)
        gemma = family == "gemma2"
        act = raw.get("hidden_activation") if gemma else raw.get("hidden_act", "silu")
        return ModelConfig(
            vocab_size=int(need("vocab_size")), hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")), num_layers=layers,
            num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", gemma)),
            bos_token_id=raw.get("bos_token_id"), eos_token_ids=eos_ids, torch_dtype=str(dtype),
            model_type=family,
            qkv_bias=family == "qwen2" or (family in ("llama", "qwen3") and bool(raw.get("attention_bias"))),
            o_bias=family in ("llama", "qwen3") and bool(raw.get("attention_bias")),
            qk_norm=family == "qwen3", activation=ACTIVATIONS[act or "silu"], gemma_norms=gemma,
            embed_scale=hidden ** 0.5 if gemma else None,
            attn_scale=float(raw.get("query_pre_attn_scalar", head_dim)) ** -0.5 if gemma else None,
            attn_softcap=_opt_float(raw.get("attn_logit_softcapping")) if gemma else None,
            final_softcap=_opt_float(raw.get("final_logit_softcapping")) if gemma else None,
            sliding_window=window, layer_types=layer_types, fused_projections=family == "phi3",
            rotary_dim=rotary)


def _opt_float(v) -> float | None:
    return None if v is None else float(v)


def _family(raw: dict, source: str) -> str:
    archs = raw.get("architectures") or []
    mtype = raw.get("model_type")
    family = mtype if mtype in FAMILIES else ARCH_FAMILY.get(archs[0]) if archs else None
    if family is None and mtype is None and not archs:
        family = "llama"
    if family is None:
        raise SpecError(f"model type {mtype!r} (architecture {archs[0] if archs else '?'!r}) is not served",
                        source=source, path="model_type",
                        hint=f"served families: {', '.join(FAMILIES)}")
    return family


def _refuse_unserved(raw: dict, family: str, source: str) -> None:
    """Features of a served family that the runtime does not implement: refused by name."""
    def refuse(feature: str, path: str, hint: str = "") -> None:
        raise SpecError(f"model type {family!r}: {feature} is not supported", source=source, path=path,
                        hint=hint or None)

    if raw.get("mlp_bias"):
        refuse("mlp_bias=true (biases on the MLP projections)", "mlp_bias")
    if family in ("mistral", "gemma2", "phi3", "qwen2") and raw.get("attention_bias"):
        refuse("attention_bias=true", "attention_bias")
    act_key = "hidden_activation" if family == "gemma2" else "hidden_act"
    act = raw.get(act_key, "gelu_pytorch_tanh" if family == "gemma2" else "silu")
    if act not in ACTIVATIONS:
        refuse(f"{act_key} {act!r}", act_key, f"served activations: {', '.join(ACTIVATIONS)}")
    for key in ("use_mrope", "moe_intermediate_size", "num_experts"):
        if raw.get(key):
            refuse(f"{key} (a mixture-of-experts or multimodal feature)", key)


def _windows(raw: dict, family: str, layers: int, source: str) -> tuple[int | None, tuple[str, ...]]:
    """The sliding window and which layers use it, as transformers decides per family."""
    window = raw.get("sliding_window")
    if family in ("qwen2", "qwen3") and not raw.get("use_sliding_window", False):
        window = None
    if window is None:
        return None, ()
    window = int(window)
    if window < 1:
        raise SpecError("sliding_window must be >= 1", source=source, path="sliding_window")
    types = raw.get("layer_types")
    if types is None:
        if family == "gemma2":
            types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
        elif family in ("qwen2", "qwen3"):
            first = int(raw.get("max_window_layers", layers))
            types = ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
        else:                                   # mistral, phi3: every layer
            types = ["sliding_attention"] * layers
    if family in ("mistral", "phi3"):           # their attention ignores layer_types
        types = ["sliding_attention"] * layers
    types = tuple(str(t) for t in types)
    bad = sorted(set(types) - {"sliding_attention", "full_attention"})
    if len(types) != layers or bad:
        raise SpecError(f"layer_types must name {layers} layers as full_attention or sliding_attention"
                        + (f", got {bad}" if bad else ""), source=source, path="layer_types")
    return window, types


def _rope(raw: dict, source: str, head_dim: int, family: str) -> tuple[float, dict, int | None]:
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
        raise SpecError(f"model type {family!r}: RoPE type {rtype!r} is not supported", source=source,
                        path=f"{field_name}.rope_type", hint=f"served types: {', '.join(SUPPORTED_ROPE)}")
    factor = float(scaling.pop("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) or 1.0)
    rotary = None
    if factor != 1.0:
        rotary = int(head_dim * factor)
        if rotary < 2 or rotary % 2:
            raise SpecError(f"partial_rotary_factor {factor} gives an odd or empty rotary dimension {rotary}",
                            source=source, path=f"{field_name}.partial_rotary_factor")
    required = {"linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
    for key in required.get(rtype, ()):
        if key not in scaling:
            raise SpecError(f"RoPE type {rtype!r} needs {key!r}", source=source, path=f"{field_name}.{key}")
    return theta, scaling, rotary


def rope_inv_freq(cfg: ModelConfig):
    """Inverse frequencies [rope_dim/2] (fp32) with the config's scaling, as Hugging Face computes them.

    default: ``1 / theta^(2i/d)``; linear: divided by ``factor``; llama3: wavelengths longer than
    ``orig/low_freq_factor`` divided by ``factor``, shorter than ``orig/high_freq_factor`` kept,
    and a linear blend between the two.
    """
    d = cfg.rope_dim
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
