"""PEFT LoRA adapters: parse, validate against the base model, and lay out for slot tensors.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` whose
tensors are named ``base_model.model.model.layers.{i}.{self_attn|mlp}.{m}.lora_{A|B}.weight``
with A: [r, in_features] and B: [out_features, r]. The runtime applies, per module,

    y += s · (x · Aᵀ) · Bᵀ,   s = alpha / r   (alpha / √r with ``use_rslora``)

Per-module ranks and alphas (``rank_pattern``, ``alpha_pattern``) are honoured by folding the
module's scale relative to the adapter's scale into B, so one scale per slot suffices.

Everything that cannot be served faithfully is refused up front, with every problem collected
into one :class:`SpecError` naming the file: DoRA, ``modules_to_save``, LoRA on biases, target
modules that match no projection of the base, ranks above the configured maximum, tensors whose
shape does not fit the base, missing or unreadable files.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from atoll.core.errors import SpecError

from .config import ModelConfig
from .modules import attention_modules, module_dims, modules

_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\."
                  r"lora_(A|B)(?:\.[\w-]+)?\.weight$")


@dataclass
class AdapterWeights:
    """Host copy of one adapter. ``layers[n][module] = (A [r, in], B·ratio [out, r])``."""

    name: str
    path: str
    rank: int
    alpha: float
    scale: float
    use_rslora: bool
    target_modules: tuple[str, ...]
    layers: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size()
                   for layer in self.layers for a, b in layer.values())


def _pattern_value(patterns: dict, module_path: str, default):
    for key, value in patterns.items():   # PEFT's rule: the key matches a suffix of the module path
        if re.match(rf"(.*\.)?({key})$", module_path):
            return value
    return default


def load_adapter(name: str, path: str | Path, cfg: ModelConfig, *, max_rank: int,
                 dtype: torch.dtype = torch.float32) -> AdapterWeights:
    """Read and validate a PEFT LoRA directory; raise one SpecError listing every problem."""
    root = Path(path)
    acfg, w_path = _read_config(root)
    problems = _config_problems(acfg)
    rank, alpha, rslora = _rank_alpha(acfg, root)
    targets = acfg.get("target_modules")
    problems += _target_problems(targets, cfg)
    tensors = _read_tensors(w_path, problems)
    layers = _group_by_layer(tensors, cfg, problems)
    base_scale = alpha / (math.sqrt(rank) if rslora else rank) if rank > 0 else 0.0
    out_layers, seen = _check_and_scale(layers, cfg, acfg, max_rank, rank, alpha, rslora, base_scale, dtype,
                                        problems)
    if tensors and not seen and not problems:
        problems.append("the file holds no LoRA weights for any projection")
    if isinstance(targets, (list, tuple)):
        for t in targets:
            if t in modules(cfg) and t not in seen:
                problems.append(f"target module {t!r} is listed but has no tensors in adapter_model.safetensors")
    if problems:
        raise SpecError("cannot serve this adapter: " + "; ".join(problems), source=str(root))
    return AdapterWeights(name=name, path=str(root), rank=rank, alpha=alpha, scale=base_scale, use_rslora=rslora,
                          target_modules=tuple(m for m in modules(cfg) if m in seen), layers=out_layers)


def _read_config(root: Path) -> tuple[dict, Path]:
    """adapter_config.json parsed, and the weights file's path; SpecError when either is missing."""
    cfg_path, w_path = root / "adapter_config.json", root / "adapter_model.safetensors"
    if not root.is_dir():
        raise SpecError("adapter directory not found", source=str(root),
                        hint="pass a local directory written by PeftModel.save_pretrained")
    if not cfg_path.is_file():
        raise SpecError("adapter_config.json is missing", source=str(root),
                        hint="a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors")
    if not w_path.is_file():
        hint = ("only adapter_model.bin found: re-save with safe_serialization=True"
                if (root / "adapter_model.bin").is_file() else "save the adapter with PeftModel.save_pretrained")
        raise SpecError("adapter_model.safetensors is missing", source=str(root), hint=hint)
    try:
        return json.loads(cfg_path.read_text()), w_path
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot parse JSON: {exc}", source=str(cfg_path)) from None


def _config_problems(acfg: dict) -> list[str]:
    """PEFT features the runtime cannot serve faithfully."""
    problems: list[str] = []
    peft_type = str(acfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        problems.append(f"peft_type {peft_type!r} is not LoRA")
    if acfg.get("use_dora"):
        problems.append("use_dora=true: DoRA adapters are not served (merge it or retrain as plain LoRA)")
    if acfg.get("modules_to_save"):
        problems.append(f"modules_to_save={acfg['modules_to_save']}: fully trained modules are not served "
                        "(retrain without modules_to_save)")
    if acfg.get("bias", "none") not in ("none", None):
        problems.append(f"bias={acfg['bias']!r}: LoRA bias terms are not served (use bias='none')")
    if acfg.get("lora_bias"):
        problems.append("lora_bias=true: LoRA bias terms are not served (retrain with lora_bias=False)")
    if acfg.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out=true is not served (the base's projections are nn.Linear)")
    if acfg.get("layer_replication"):
        problems.append("layer_replication is not served")
    if acfg.get("target_parameters"):
        problems.append("target_parameters (LoRA on raw parameters) is not served")
    return problems


def _rank_alpha(acfg: dict, root: Path) -> tuple[int, float, bool]:
    try:
        rank = int(acfg["r"])
        alpha = float(acfg.get("lora_alpha", rank))
    except (KeyError, TypeError, ValueError):
        raise SpecError("field 'r' (LoRA rank) is missing or not an integer",
                        source=str(root / "adapter_config.json")) from None
    return rank, alpha, bool(acfg.get("use_rslora", False))


def _target_problems(targets, cfg: ModelConfig) -> list[str]:
    """target_modules (a list of names or a regex) must name projections the base has."""
    mods = modules(cfg)
    if isinstance(targets, str):
        matched = [m for m in mods if any(re.fullmatch(targets, f"model.layers.{n}.{grp}.{m}")
                                          for n in range(cfg.num_layers) for grp in ("self_attn", "mlp"))]
        if not matched:
            return [f"target_modules regex {targets!r} matches no projection of the base model "
                    f"(LoRA-able modules of model type {cfg.model_type!r}: {', '.join(mods)})"]
        return []
    if isinstance(targets, (list, tuple)) and targets:
        return [f"target module {t!r} matches no served projection of the base model "
                f"(LoRA-able modules of model type {cfg.model_type!r}: {', '.join(mods)})"
                for t in targets if t not in mods]
    return ["target_modules is missing or empty"]


def _read_tensors(w_path: Path, problems: list[str]) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(w_path))
    except Exception as exc:     # safetensors raises its own error types
        problems.append(f"cannot read adapter_model.safetensors: {exc}")
        return {}


def _group_by_layer(tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                    problems: list[str]) -> list[dict[str, dict[str, torch.Tensor]]]:
    """``layers[n][module]["A" | "B"]`` from the file's tensor names."""
    layers: list[dict[str, dict[str, torch.Tensor]]] = [dict() for _ in range(cfg.num_layers)]
    mods, attn = modules(cfg), attention_modules(cfg)
    for key, t in tensors.items():
        m = _KEY.match(key)
        if not m:
            problems.append(f"tensor {key!r} is not a LoRA A/B weight of a decoder projection")
            continue
        n, grp, mod, ab = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if mod not in mods or (grp == "self_attn") != (mod in attn):
            problems.append(f"tensor {key!r}: module {grp}.{mod} does not exist in a {cfg.model_type} layer")
            continue
        if n >= cfg.num_layers:
            problems.append(f"tensor {key!r}: layer {n} does not exist (the base has {cfg.num_layers} layers)")
            continue
        layers[n].setdefault(mod, {})[ab] = t
    return layers


def _check_and_scale(layers, cfg: ModelConfig, acfg: dict, max_rank: int, rank: int, alpha: float,
                     rslora: bool, base_scale: float, dtype: torch.dtype, problems: list[str]):
    """Each module's A and B checked against the base's shapes and the ranks in the config; B
    multiplied by the module's scale over the adapter's (rank_pattern / alpha_pattern), so one
    scale per slot serves every module. Returns (layers of (A, B), modules seen)."""
    dims = module_dims(cfg)
    attn = attention_modules(cfg)
    rank_pat, alpha_pat = acfg.get("rank_pattern") or {}, acfg.get("alpha_pattern") or {}
    out_layers: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
    seen: set[str] = set()
    for n, mods in enumerate(layers):
        packed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for mod, ab in sorted(mods.items()):
            where = f"layer {n} {mod}"
            if set(ab) != {"A", "B"}:
                problems.append(f"{where}: lora_{'B' if 'A' in ab else 'A'} is missing")
                continue
            a, b = ab["A"], ab["B"]
            fin, fout = dims[mod]
            r = a.shape[0] if a.dim() == 2 else -1
            if a.dim() != 2 or b.dim() != 2 or a.shape[1] != fin or b.shape[0] != fout or b.shape[1] != r:
                problems.append(f"{where}: A {tuple(a.shape)} / B {tuple(b.shape)} do not fit the base "
                                f"(expected A [r, {fin}] and B [{fout}, r]); was it trained on another model?")
                continue
            if r > max_rank:
                problems.append(f"{where}: rank {r} exceeds the configured maximum {max_rank} "
                                "(raise max_lora_rank or retrain with a smaller r)")
                continue
            grp = "self_attn" if mod in attn else "mlp"
            mpath = f"model.layers.{n}.{grp}.{mod}"
            want_r = int(_pattern_value(rank_pat, mpath, rank))
            if r != want_r:
                problems.append(f"{where}: tensors have rank {r}, adapter_config.json says {want_r}")
                continue
            m_alpha = float(_pattern_value(alpha_pat, mpath, alpha))
            m_scale = m_alpha / (math.sqrt(r) if rslora else r)
            ratio = m_scale / base_scale if base_scale else 0.0
            b = b.float() * ratio if ratio != 1.0 else b
            packed[mod] = (a.to(dtype).contiguous(), b.to(dtype).contiguous())
            seen.add(mod)
        out_layers.append(packed)
    return out_layers, seen
