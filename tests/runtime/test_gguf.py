"""GGUF models against transformers' own GGUF loader (code nobody here wrote): the dequantizers
bit for bit against the gguf package's; a tiny Llama written with the gguf writer in every served
tensor type (with a LoRA adapter on top); and the real SmolLM2-135M-Instruct file: same token ids,
same chat prompt ids as ``apply_chat_template``, prefill logits within 1e-4 (fp32), identical
greedy tokens, and the answer to a real question."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize

from atoll.agent.runtime import Engine, SamplingParams
from atoll.agent.runtime.gguf import dequantize, find_gguf
from atoll.core.errors import FailedPrecondition, SpecError
from .smollm2 import smollm2_gguf

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K])
def test_dequantize_matches_the_gguf_package(qtype):
    rng = np.random.default_rng(int(qtype))
    x = rng.standard_normal((4, 256)).astype(np.float32) * 3
    if qtype == Q.Q4_K:      # the gguf package cannot quantize K-quants: random blocks, sane scales
        blocks = rng.integers(0, 256, (4, 144), dtype=np.uint8)
        blocks[:, 0:4] = np.array([0.01, 0.02], dtype=np.float16).view(np.uint8)
        data = blocks
    else:
        data = quantize(x, qtype)
    want = np.asarray(gguf_dequantize(data, qtype), dtype=np.float32).reshape(4, 256)
    got = dequantize(data, qtype, (4, 256))
    assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(want))
    if qtype not in (Q.F32,):
        assert not np.array_equal(want, x)          # the type is lossy: the comparison is not trivial


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter's q/k row order (the inverse of what atoll undoes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# which GGUF type each tiny-model tensor is written in: every served type is used
TYPES = {"token_embd": Q.Q8_0, "attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.F16, "attn_output": Q.BF16,
         "ffn_gate": Q.Q8_0, "ffn_up": Q.Q4_1, "ffn_down": Q.Q4_0}


def write_tiny_gguf(hf_dir, out, *, chat_template: str | None = CHATML):
    """The Hugging Face checkpoint in ``hf_dir`` (Llama) as a GGUF file, quantized per TYPES."""
    from safetensors.torch import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    tj = json.loads((hf_dir / "tokenizer.json").read_text())
    sd = load_file(str(hf_dir / "model.safetensors"))
    w = GGUFWriter(str(out), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    w.add_vocab_size(cfg["vocab_size"])
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["content"] for t in tj["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in special else 1 for t, _ in vocab])
    w.add_token_merges([" ".join(m) for m in tj["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in sd.items():
        a = t.float().numpy()
        if name.startswith("model.layers."):
            _, _, n, *rest = name.split(".")
            part = parts[".".join(rest[:-1])]
            gname = f"blk.{n}.{part}.weight"
            if part == "attn_q":
                a = _permute(a, cfg["num_attention_heads"])
            elif part == "attn_k":
                a = _permute(a, cfg["num_key_value_heads"])
        else:
            gname = names[name]
        qt = TYPES.get(gname.split(".")[-2] if gname.startswith("blk.") else gname.split(".")[0], Q.F32)
        if a.ndim == 1:
            qt = Q.F32
        w.add_tensor(gname, quantize(a, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(hf_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    return write_tiny_gguf(hf_model_dir, d / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_gguf_reference(tiny_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    model = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32)
    return tok, model.eval()


def test_tiny_gguf_matches_transformers_gguf_loader(tiny_gguf, tiny_gguf_reference):
    tok, ref = tiny_gguf_reference
    eng = Engine(tiny_gguf, kv_cache_tokens=1024)
    try:
        assert eng.source.format == "gguf" and eng.cfg.num_layers == 2
        text = "The quick brown fox jumps over the lazy dog. Hello world! 42"
        assert eng.tokenizer.encode(text) == tok(text).input_ids
        ids = torch.randint(3, 256, (3, 20), generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            want = ref(input_ids=ids).logits
        got = torch.stack(eng.prompt_logits(ids.tolist()))
        assert (got - want).abs().max().item() < 1e-4
        with torch.no_grad():
            ref_toks = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                    min_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        outs = eng.generate(ids.tolist(), sampling=SamplingParams(max_tokens=12, ignore_eos=True))
        assert [o.token_ids for o in outs] == ref_toks[:, 20:].tolist()
        msgs = [{"role": "user", "content": "the cat sat"}]
        want_ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        want_ids = want_ids["input_ids"] if hasattr(want_ids, "keys") else want_ids
        assert eng.apply_chat_template(msgs, tokenize=True) == list(want_ids)
    finally:
        eng.close()


def test_tiny_gguf_serves_peft_adapters(tiny_gguf, tiny_gguf_reference, tmp_path):
    """A LoRA adapter trained (here: made by peft) on the GGUF model serves on atoll's GGUF engine
    as peft serves it on transformers' GGUF model."""
    from peft import LoraConfig, PeftModel, get_peft_model

    _, ref = tiny_gguf_reference
    torch.manual_seed(3)
    pm = get_peft_model(ref, LoraConfig(init_lora_weights=False, r=4, lora_alpha=8, lora_dropout=0.0,
                                        target_modules=["q_proj", "k_proj", "v_proj", "down_proj"]))
    pm.save_pretrained(tmp_path / "ad")
    ref_base = pm.unload()
    pm = PeftModel.from_pretrained(ref_base, tmp_path / "ad", adapter_name="g").eval()
    eng = Engine(tiny_gguf, kv_cache_tokens=1024)
    try:
        eng.add_adapter("g", tmp_path / "ad")
        ids = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            want = pm(input_ids=ids, adapter_names=["g", "__base__"]).logits
        got = torch.stack(eng.prompt_logits(ids.tolist(), ["g", None]))
        assert (got - want).abs().max().item() < 1e-4
        assert (want[0] - want[1]).abs().max().item() > 1e-2
    finally:
        eng.close()


def test_gguf_refusals(tiny_gguf, hf_model_dir, tmp_path):
    no_chat = write_tiny_gguf(hf_model_dir, tmp_path / "nochat.gguf", chat_template=None)
    eng = Engine(no_chat, kv_cache_tokens=256)
    try:
        with pytest.raises(FailedPrecondition, match="has no chat template"):
            eng.apply_chat_template([{"role": "user", "content": "hi"}])
    finally:
        eng.close()
    (tmp_path / "two").mkdir()
    for n in ("a.gguf", "b.gguf"):
        (tmp_path / "two" / n).write_bytes(tiny_gguf.read_bytes())
    with pytest.raises(SpecError, match="2 .gguf files"):
        find_gguf(tmp_path / "two")
    assert find_gguf(tiny_gguf.parent) == tiny_gguf        # a directory with one file serves it
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(SpecError, match="cannot read GGUF file"):
        Engine(bad)


# ---- the real model ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf()
    eng = Engine(path, kv_cache_tokens=2048)
    yield path, eng
    eng.close()


@pytest.fixture(scope="module")
def smollm2_reference(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = smollm2
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return tok, model.eval()


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_smollm2_tokenizer_and_chat_template_match_transformers(smollm2, smollm2_reference):
    _, eng = smollm2
    tok, _ = smollm2_reference
    assert eng.cfg.num_layers == 30 and eng.cfg.hidden_size == 576 and eng.cfg.vocab_size == 49152
    text = "The quick brown fox — naïve café, 42 apples!\n\tTabs  and  spaces <|im_start|>user\nHi<|im_end|>"
    assert eng.tokenizer.encode(text) == tok(text).input_ids
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a colour."}]
    for msgs in (QUESTION, convo):
        want = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        want = want["input_ids"] if hasattr(want, "keys") else want
        assert eng.apply_chat_template(msgs, tokenize=True) == list(want)
    assert tok.convert_tokens_to_ids("<|im_end|>") in eng.stop_token_ids


@pytest.mark.parametrize("mode", ["plain", "default", "without-kernels"])
def test_smollm2_logits_and_greedy_tokens_match_transformers(smollm2, smollm2_reference, mode):
    """Plain weights: within 1e-4 absolute. Packed weights (the CPU default: atoll's panel kernel
    where it builds; oneDNN's layout without atoll's CPU kernels) accumulate in another order:
    within 1e-4 of the largest logit. Greedy tokens identical every way."""
    path, default_eng = smollm2
    tok, ref = smollm2_reference
    packed = mode != "plain"
    eng = (default_eng if mode == "default" else Engine(path, kv_cache_tokens=2048, packed_weights=False)
           if mode == "plain" else Engine(path, kv_cache_tokens=2048, cpu_kernels=False))
    try:
        ids = eng.apply_chat_template(QUESTION, tokenize=True)
        with torch.no_grad():
            want = ref(input_ids=torch.tensor([ids])).logits[0]
        got = eng.prompt_logits([ids])[0]
        tol = 1e-4 * (max(1.0, want.abs().max().item()) if packed else 1.0)
        assert (got - want).abs().max().item() < tol
        with torch.no_grad():
            ref_toks = ref.generate(input_ids=torch.tensor([ids]), max_new_tokens=16, min_new_tokens=16,
                                    do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        out = eng.generate([ids], sampling=SamplingParams(max_tokens=16, ignore_eos=True))[0]
        assert out.token_ids == ref_toks
    finally:
        if eng is not default_eng:
            eng.close()


def test_smollm2_answers_a_real_question(smollm2):
    _, eng = smollm2
    out = eng.generate([eng.apply_chat_template(QUESTION, tokenize=True)],
                       sampling=SamplingParams(max_tokens=32))[0]
    assert out.finish_reason == "stop"                     # ended at <|im_end|>, not at the length
    assert "Paris" in out.text and "<|im_end|>" not in out.text


def test_a_header_whose_counts_exceed_the_file_is_refused_before_the_gguf_reader_runs(tmp_path):
    """The gguf package trusts a header's counts: a 68-byte file declaring an array of 2^62 items
    sent it into an endless loop, growing memory. Every count is checked against the bytes left."""
    import struct

    from atoll.agent.runtime.gguf import read_gguf

    key = b"general.architecture"
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    cases = {
        "array of 2^62 bytes": head + struct.pack("<IIQ", 9, 0, 1 << 62),
        "array of 2^40 strings": head + struct.pack("<IIQ", 9, 8, 1 << 40),
        "a string longer than the file": head + struct.pack("<IQ", 8, 1 << 50),
        "2^60 metadata entries": b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 60),
    }
    for what, blob in cases.items():
        p = tmp_path / "bomb.gguf"
        p.write_bytes(blob)
        t0 = time.monotonic()
        with pytest.raises(SpecError, match="GGUF header"):
            read_gguf(p)
        assert time.monotonic() - t0 < 1.0, what


def test_a_model_larger_than_the_hosts_memory_is_refused_before_it_is_read(tiny_gguf, hf_model_dir, monkeypatch):
    """A GGUF file is dequantized to fp32 and a checkpoint cast to the serving dtype: a load that
    needs more than 90% of the host's available memory is FAILED_PRECONDITION naming both sizes,
    decided from the headers before a tensor is read (the agent would otherwise be OOM-killed)."""
    from gguf import GGUFReader
    from safetensors import safe_open

    from atoll.agent.runtime import memory

    gguf_need = sum(int(np.prod(t.shape.tolist())) for t in GGUFReader(str(tiny_gguf)).tensors) * 4
    hf_need = 0
    for f in hf_model_dir.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as fh:
            hf_need += sum(fh.get_tensor(k).numel() * fh.get_tensor(k).element_size() for k in fh.keys())
    for path, need in ((tiny_gguf, gguf_need), (hf_model_dir, hf_need)):
        monkeypatch.setattr(memory, "available_bytes", lambda need=need: int(need / memory.HEADROOM) - 1)
        with pytest.raises(FailedPrecondition, match=r"needs \d+\.\d MiB of memory to load and this host has \d+\.\d MiB available"):
            Engine(path, dtype="float32", kv_cache_tokens=256)
        monkeypatch.setattr(memory, "available_bytes", lambda need=need: int(need / memory.HEADROOM) + 1)
        Engine(path, dtype="float32", kv_cache_tokens=256).close()
