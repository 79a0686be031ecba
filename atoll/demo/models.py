"""Tiny random Llama checkpoints and PEFT adapters, for tests and the demo.

Written in the real on-disk formats (Hugging Face ``config.json`` + ``model.safetensors`` with
HF tensor names + a trained byte-level BPE ``tokenizer.json``; PEFT ``adapter_config.json`` +
``adapter_model.safetensors``) without importing transformers or peft, so the product can make
them anywhere. The tests load them with transformers and peft to prove the formats.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_TEXT = """\
The quick brown fox jumps over the lazy dog. A tenant asks for a summary, and the model answers.
Many adapters share one base model in one batch; each request names its adapter, or none.
Hello world! Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2026. Punctuation, quotes "like this", (and) [this].
the cat sat on the mat; the dog ran in the park. Tokens stream back as they are generated.
abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ
"""


def _tokenizer_json(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=[], show_progress=False)
    tok.train_from_iterator(_TEXT.splitlines() * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is too small for the built-in tokenizer "
                         f"({tok.get_vocab_size()} tokens)")
    return tok.to_str()


def build_tiny_llama(path, *, vocab_size: int = 256, hidden_size: int = 64, intermediate_size: int = 128,
                     num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2, seed: int = 0,
                     rope_scaling: dict | None = None, dtype: str = "float32",
                     max_position_embeddings: int = 2048, tie_word_embeddings: bool = False) -> Path:
    """A random-weight LlamaForCausalLM checkpoint in ``path``; returns the path."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    head_dim = hidden_size // num_heads
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if rope_scaling:
        rope.update(rope_scaling)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
        "hidden_size": hidden_size, "intermediate_size": intermediate_size, "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads, "head_dim": head_dim,
        "hidden_act": "silu", "max_position_embeddings": max_position_embeddings, "rms_norm_eps": 1e-6,
        "rope_parameters": rope, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": tie_word_embeddings, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None,
        "dtype": dtype, "initializer_range": 0.02, "use_cache": True,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    g = torch.Generator().manual_seed(seed)
    dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]

    def rnd(*shape, std=0.02):
        return (torch.randn(*shape, generator=g) * std).to(dt)

    def norm(n):
        return (1.0 + 0.1 * torch.randn(n, generator=g)).to(dt)

    q, kv = num_heads * head_dim, num_kv_heads * head_dim
    sd = {"model.embed_tokens.weight": rnd(vocab_size, hidden_size, std=1.0), "model.norm.weight": norm(hidden_size)}
    std_h, std_i = 1 / math.sqrt(hidden_size), 1 / math.sqrt(intermediate_size)
    for i in range(num_layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = rnd(q, hidden_size, std=std_h)
        sd[p + "self_attn.k_proj.weight"] = rnd(kv, hidden_size, std=std_h)
        sd[p + "self_attn.v_proj.weight"] = rnd(kv, hidden_size, std=std_h)
        sd[p + "self_attn.o_proj.weight"] = rnd(hidden_size, q, std=1 / math.sqrt(q))
        sd[p + "mlp.gate_proj.weight"] = rnd(intermediate_size, hidden_size, std=std_h)
        sd[p + "mlp.up_proj.weight"] = rnd(intermediate_size, hidden_size, std=std_h)
        sd[p + "mlp.down_proj.weight"] = rnd(hidden_size, intermediate_size, std=std_i)
        sd[p + "input_layernorm.weight"] = norm(hidden_size)
        sd[p + "post_attention_layernorm.weight"] = norm(hidden_size)
    if not tie_word_embeddings:
        sd["lm_head.weight"] = rnd(vocab_size, hidden_size, std=std_h)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "tokenizer.json").write_text(_tokenizer_json(vocab_size))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": max_position_embeddings, "add_bos_token": True}, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2))
    return out


def build_tiny_adapter(path, base_dir, *, rank: int = 8, alpha: float = 16, target_modules=ALL_MODULES,
                       use_rslora: bool = False, seed: int = 1, std: float = 0.1, layers=None,
                       extra_config: dict | None = None) -> Path:
    """A PEFT LoRA adapter for the checkpoint in ``base_dir``, with non-zero random A and B."""
    base = json.loads((Path(base_dir) / "config.json").read_text())
    h, inter = base["hidden_size"], base["intermediate_size"]
    hd = base.get("head_dim") or h // base["num_attention_heads"]
    q, kv = base["num_attention_heads"] * hd, base.get("num_key_value_heads", base["num_attention_heads"]) * hd
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in (range(base["num_hidden_layers"]) if layers is None else layers):
        for m in target_modules:
            grp = "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            fin, fout = dims[m]
            p = f"base_model.model.model.layers.{i}.{grp}.{m}."
            sd[p + "lora_A.weight"] = torch.randn(rank, fin, generator=g) * std
            sd[p + "lora_B.weight"] = torch.randn(fout, rank, generator=g) * std
    save_file(sd, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base_dir), "r": rank,
        "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": list(target_modules), "bias": "none",
        "use_rslora": use_rslora, "use_dora": False, "fan_in_fan_out": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True, "rank_pattern": {}, "alpha_pattern": {},
        "layers_to_transform": list(layers) if layers is not None else None,
    }
    cfg.update(extra_config or {})
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return out
