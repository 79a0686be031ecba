"""atoll against transformers + peft (code nobody here wrote): one mixed batch of adapters and
base-only rows; prefill logits within 1e-4 and 16 greedy tokens identical, fp32."""

from __future__ import annotations

import pytest
import torch

from atoll.agent.runtime import Engine, SamplingParams

ROW_ADAPTERS = ["a1", None, "a2", "a3", None, "a4", "a1", "a3"]


def _prompts(n, length, seed=123):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 256, (n, length), generator=g)


def _hf_names(adapters):
    return [a or "__base__" for a in adapters]


def _hf_greedy(pm, ids, adapters, steps):
    with torch.no_grad():
        out = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=_hf_names(adapters),
                          max_new_tokens=steps, min_new_tokens=steps, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def _check(engine, pm, adapters, length, steps):
    ids = _prompts(len(adapters), length)
    with torch.no_grad():
        ref_logits = pm(input_ids=ids, adapter_names=_hf_names(adapters)).logits
    ours = torch.stack(engine.prompt_logits(ids.tolist(), adapters))
    err = (ours - ref_logits).abs().max().item()
    assert err < 1e-4, f"prefill logits differ by {err}"
    ref_tokens = _hf_greedy(pm, ids, adapters, steps)
    outs = engine.generate(ids.tolist(), adapters=adapters,
                           sampling=SamplingParams(max_tokens=steps, temperature=0.0, ignore_eos=True))
    assert [o.token_ids for o in outs] == ref_tokens
    return ref_logits, ref_tokens


def test_mixed_batch_matches_peft_torch_backend(engine, hf_reference):
    ref_logits, tokens = _check(engine, hf_reference, ROW_ADAPTERS, length=12, steps=16)
    # guard: the adapters really change the model (otherwise the test would prove nothing)
    base_only = torch.stack(engine.prompt_logits(_prompts(len(ROW_ADAPTERS), 12).tolist()))
    for i, a in enumerate(ROW_ADAPTERS):
        delta = (ref_logits[i] - base_only[i]).abs().max().item()
        assert (delta > 1e-2) if a else (delta < 1e-4), (a, delta)


@pytest.mark.parametrize("layout", ["plain", "onednn", "without-kernels"])
def test_every_weight_layout_matches_peft(engine, hf_model_dir, peft_adapters, hf_reference, layout):
    from atoll.agent.runtime.weights import layout_of, onednn_available
    from atoll.kernels import cpu_ops

    # the session engine (CPU, fp32, packed_weights unset) takes the panel layout wherever
    # atoll's kernel builds, else oneDNN's (and its lm_head the same as its projections)
    want = "panel" if cpu_ops.available() else "onednn" if onednn_available() else "plain"
    assert layout_of(engine.weights.layers[0].qkv) == layout_of(engine.weights.lm_head) == want
    assert engine.model.cpu_kernels == cpu_ops.available()
    if layout != "plain" and not onednn_available():
        pytest.skip("this torch build has no oneDNN")
    # without-kernels: torch and oneDNN only (oneDNN's layout, torch's attention and norms)
    eng = Engine(hf_model_dir, device="cpu", dtype="float32", lora_backend="torch", max_lora_rank=16,
                 max_adapters_on_device=4, kv_cache_tokens=512,
                 **({"packed_weights": False} if layout == "plain" else {"packed_weights": "onednn"}
                    if layout == "onednn" else {"cpu_kernels": False}))
    try:
        want = "onednn" if layout == "without-kernels" else layout
        assert {layout_of(t) for t in (eng.weights.layers[0].qkv, eng.weights.lm_head)} == {want}
        assert eng.model.cpu_kernels == (layout != "without-kernels" and cpu_ops.available())
        assert eng.weights.nbytes() == engine.weights.nbytes()       # one copy either way
        for name, path in peft_adapters.items():
            eng.add_adapter(name, path)
        _check(eng, hf_reference, ["a1", None, "a3", "a4"], length=6, steps=16)
    finally:
        eng.close()


def test_packed_weights_refused_where_they_cannot_serve(hf_model_dir):
    from atoll.core.errors import AtollError

    with pytest.raises(AtollError, match="packed weights need fp32"):
        Engine(hf_model_dir, device="cpu", dtype="float16", packed_weights=True)
    with pytest.raises(AtollError, match="must be true, false, 'panel' or 'onednn'"):
        Engine(hf_model_dir, device="cpu", dtype="float32", packed_weights="blocked")
    with pytest.raises(AtollError, match="CPU kernels serve fp32"):
        Engine(hf_model_dir, device="cpu", dtype="float16", cpu_kernels=True)


def test_mixed_batch_matches_peft_triton_backend(hf_model_dir, peft_adapters, hf_reference):
    pytest.importorskip("triton")
    eng = Engine(hf_model_dir, device="cpu", dtype="float32", lora_backend="triton", max_lora_rank=16,
                 max_adapters_on_device=4, kv_cache_tokens=512)
    try:
        for name, path in peft_adapters.items():
            eng.add_adapter(name, path)
        _check(eng, hf_reference, ["a1", None, "a3", "a4"], length=6, steps=16)
    finally:
        eng.close()


def test_rope_llama3_scaling_matches_transformers(tmp_path, hf_llama_factory):
    from transformers import LlamaForCausalLM

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}
    d = hf_llama_factory(tmp_path / "m", seed=3, rope_scaling=rope)
    ref = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    eng = Engine(d, lora_backend="torch", kv_cache_tokens=512)
    try:
        ids = _prompts(2, 40, seed=5)
        with torch.no_grad():
            want = ref(input_ids=ids).logits
        got = torch.stack(eng.prompt_logits(ids.tolist()))
        assert (got - want).abs().max().item() < 1e-4
        # the scaling matters at these positions: the same weights with plain RoPE give other logits
        import json
        import shutil

        plain = shutil.copytree(d, tmp_path / "plain")
        cfg = json.loads((plain / "config.json").read_text())
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_parameters"]["rope_theta"]}
        (plain / "config.json").write_text(json.dumps(cfg))
        unscaled = torch.stack(Engine(plain, lora_backend="torch", kv_cache_tokens=512).prompt_logits(ids.tolist()))
        assert (unscaled - want).abs().max().item() > 1e-3
        with torch.no_grad():
            ref_tokens = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                      min_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
        outs = eng.generate(ids.tolist(), sampling=SamplingParams(max_tokens=16, ignore_eos=True))
        assert [o.token_ids for o in outs] == ref_tokens[:, 40:].tolist()
    finally:
        eng.close()


def test_tiny_builders_load_in_transformers_and_peft(tiny_dir, tmp_path):
    """build_tiny_llama / build_tiny_adapter write real formats: transformers, peft and the HF
    tokenizer load them, and atoll's logits match theirs."""
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tests.fixtures.tiny_models import build_tiny_adapter

    ad = build_tiny_adapter(tmp_path / "ad", tiny_dir, rank=4, alpha=8, target_modules=("q_proj", "down_proj"),
                            use_rslora=True)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    eng = Engine(tiny_dir, lora_backend="torch", kv_cache_tokens=256)
    try:
        text = "the cat sat on the mat"
        assert tok(text).input_ids == eng.tokenizer.encode(text)
        assert eng.tokenizer.decode(eng.tokenizer.encode(text)) == text
        base = LlamaForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
        pm = PeftModel.from_pretrained(base, ad, adapter_name="t").eval()
        eng.add_adapter("t", ad)
        ids = torch.tensor([eng.tokenizer.encode(text)] * 2)
        with torch.no_grad():
            want = pm(input_ids=ids, adapter_names=["t", "__base__"]).logits
        got = torch.stack(eng.prompt_logits(ids.tolist(), ["t", None]))
        assert (got - want).abs().max().item() < 1e-4
    finally:
        eng.close()
