"""Session fixtures: a tiny Llama saved by transformers, PEFT adapters made by peft, and the
same model served by transformers + peft as the independent reference."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

# (name, LoraConfig kwargs): different ranks, alphas, target sets, rsLoRA
ADAPTERS = [
    ("a1", dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                    "gate_proj", "up_proj", "down_proj"])),
    ("a2", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    ("a3", dict(r=16, lora_alpha=8, use_rslora=True, target_modules=["o_proj", "gate_proj", "down_proj"])),
    ("a4", dict(r=2, lora_alpha=4, target_modules=["k_proj", "up_proj"])),
]


def make_hf_llama(path, *, seed=0, rope_scaling=None, init_range=0.1):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.fixtures.tiny_models import _tokenizer_json

    kw = {}
    if rope_scaling:
        kw["rope_scaling"] = rope_scaling
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=init_range, **kw)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():   # non-trivial norms, so RMSNorm weights are exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    (path / "tokenizer.json").write_text(_tokenizer_json(256))
    return path


def make_peft_adapter(base_dir, out_dir, seed, **lora_kwargs):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    pm = get_peft_model(base, LoraConfig(init_lora_weights=False, lora_dropout=0.0, **lora_kwargs))
    pm.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def hf_llama_factory():
    return make_hf_llama


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory):
    return make_hf_llama(tmp_path_factory.mktemp("hf_llama"))


@pytest.fixture(scope="session")
def peft_adapters(hf_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    return {name: make_peft_adapter(hf_model_dir, root / name, seed=10 + i, **kw)
            for i, (name, kw) in enumerate(ADAPTERS)}


@pytest.fixture(scope="session")
def hf_reference(hf_model_dir, peft_adapters):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(hf_model_dir, dtype=torch.float32)
    names = list(peft_adapters)
    pm = PeftModel.from_pretrained(base, peft_adapters[names[0]], adapter_name=names[0])
    for n in names[1:]:
        pm.load_adapter(peft_adapters[n], adapter_name=n)
    pm.eval()
    return pm


@pytest.fixture(scope="session")
def engine(hf_model_dir, peft_adapters):
    from atoll.agent.runtime import Engine

    eng = Engine(hf_model_dir, device="cpu", dtype="float32", lora_backend="torch", max_lora_rank=16,
                 max_adapters_on_device=4, kv_cache_tokens=2048)
    for name, path in peft_adapters.items():
        eng.add_adapter(name, path)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))
