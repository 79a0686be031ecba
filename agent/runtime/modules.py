"""The LoRA-able projections of a family and how they pack into the runtime's four projections.

Most families name seven modules (``q_proj`` … ``down_proj``); the runtime packs q, k, v into
one ``qkv`` projection and gate, up into ``gate_up``, so an adapter's q/k/v become three slices
of one LoRA call. phi3 stores ``qkv_proj`` and ``gate_up_proj`` fused, and its adapters target
those fused modules: each is then one slice spanning the whole packed output.
"""

from __future__ import annotations

from .config import ModelConfig

SPLIT_PACKING = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
                 "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}
FUSED_PACKING = {"qkv": ("qkv_proj",), "o": ("o_proj",), "gate_up": ("gate_up_proj",), "down": ("down_proj",)}
ATTN_PROJECTIONS = ("qkv", "o")


def packed_modules(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Packed projection -> its adapter modules, in row order of the packed base weight."""
    return FUSED_PACKING if cfg.fused_projections else SPLIT_PACKING


def modules(cfg: ModelConfig) -> tuple[str, ...]:
    """The LoRA-able module names of this family, attention first."""
    return tuple(m for mods in packed_modules(cfg).values() for m in mods)


def attention_modules(cfg: ModelConfig) -> tuple[str, ...]:
    """The modules that live under ``self_attn`` (the rest under ``mlp``)."""
    packing = packed_modules(cfg)
    return tuple(m for p in ATTN_PROJECTIONS for m in packing[p])


def module_dims(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA-able module."""
    h, q, kv, i = cfg.hidden_size, cfg.q_size, cfg.kv_size, cfg.intermediate_size
    if cfg.fused_projections:
        return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
