"""Every served family against transformers + peft (code nobody here wrote), on tiny random
configs saved by transformers itself: one mixed batch of adapters and base-only rows, prompts
longer than the sliding window where the family has one; prefill logits within 1e-4 and 12
greedy tokens identical, fp32. Then the refusals: what is not served names the model type and
the missing feature."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from atoll.agent.runtime import Engine, SamplingParams
from atoll.core.errors import SpecError

SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1)
SPLIT = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FUSED = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
WINDOW = 8


def _config(family: str):
    import transformers as tf

    if family == "qwen2":     # q/k/v bias; layer 1 slides, layer 0 is global
        return tf.Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
    if family == "qwen3":     # q/k RMSNorm; layer 1 slides
        return tf.Qwen3Config(**SMALL, head_dim=16, use_sliding_window=True, sliding_window=WINDOW,
                              max_window_layers=1)
    if family == "mistral":   # every layer slides
        return tf.MistralConfig(**SMALL, sliding_window=WINDOW)
    if family == "gemma2":    # GeGLU, sandwich norms, soft-capping, scaled embeddings, alternating windows
        return tf.Gemma2Config(**SMALL, head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=24,
                               attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
    if family == "phi3":      # fused qkv / gate_up, partial rotary, sliding window
        return tf.Phi3Config(**SMALL, sliding_window=WINDOW, partial_rotary_factor=0.5, pad_token_id=0)
    raise ValueError(family)


def build_family(family: str, path, seed: int = 0):
    from transformers import AutoModelForCausalLM

    cfg = _config(family)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():      # non-trivial norm weights (and biases), so they are exercised
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


def make_adapter(base_dir, out_dir, seed, **lora_kwargs):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager")
    torch.manual_seed(seed)
    pm = get_peft_model(base, LoraConfig(init_lora_weights=False, lora_dropout=0.0, **lora_kwargs))
    pm.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "mistral", "gemma2", "phi3"])
def family_case(request, tmp_path_factory):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    family = request.param
    root = tmp_path_factory.mktemp(family)
    base = build_family(family, root / "base")
    targets = FUSED if family == "phi3" else SPLIT
    adapters = {"x1": make_adapter(base, root / "x1", 21, r=8, lora_alpha=16, target_modules=targets),
                "x2": make_adapter(base, root / "x2", 22, r=4, lora_alpha=8, use_rslora=True,
                                   target_modules=targets[:2] + targets[-1:])}
    ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    pm = PeftModel.from_pretrained(ref, adapters["x1"], adapter_name="x1")
    pm.load_adapter(adapters["x2"], adapter_name="x2")
    pm.eval()
    eng = Engine(base, lora_backend="torch", max_lora_rank=8, max_adapters_on_device=3, kv_cache_tokens=1024)
    for name, path in adapters.items():
        eng.add_adapter(name, path)
    yield family, eng, pm
    eng.close()


ROWS = ["x1", None, "x2", "x1"]


def test_family_matches_transformers_and_peft(family_case):
    family, eng, pm = family_case
    assert eng.cfg.model_type == family
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 256, (len(ROWS), 3 * WINDOW), generator=g)      # longer than the window
    names = [a or "__base__" for a in ROWS]
    with torch.no_grad():
        want = pm(input_ids=ids, adapter_names=names).logits
    got = torch.stack(eng.prompt_logits(ids.tolist(), ROWS))
    err = (got - want).abs().max().item()
    assert err < 1e-4, f"{family}: prefill logits differ by {err}"
    with torch.no_grad():
        base_only = pm(input_ids=ids, adapter_names=["__base__"] * len(ROWS)).logits
    assert (base_only[0] - want[0]).abs().max().item() > 1e-2      # the adapters matter
    steps = 12
    with torch.no_grad():
        ref = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=names,
                          max_new_tokens=steps, min_new_tokens=steps, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    outs = eng.generate(ids.tolist(), adapters=ROWS,
                        sampling=SamplingParams(max_tokens=steps, temperature=0.0, ignore_eos=True))
    assert [o.token_ids for o in outs] == ref[:, ids.shape[1]:].tolist(), family


def test_sliding_window_matters(family_case, tmp_path):
    """The window changes the logits of a prompt longer than it (so the comparison above checks
    the windowed attention, not a full one that happens to agree)."""
    family, eng, _ = family_case
    assert eng.cfg.sliding_window == WINDOW
    d = shutil.copytree(eng.model_dir, tmp_path / "nowindow")
    raw = json.loads((d / "config.json").read_text())
    raw["sliding_window"] = None
    (d / "config.json").write_text(json.dumps(raw))
    full = Engine(d, lora_backend="torch", kv_cache_tokens=512)
    try:
        ids = torch.randint(3, 256, (1, 3 * WINDOW), generator=torch.Generator().manual_seed(1)).tolist()
        a, b = eng.prompt_logits(ids)[0], full.prompt_logits(ids)[0]
        assert (a[:WINDOW] - b[:WINDOW]).abs().max().item() < 1e-5      # within the window: the same
        assert (a[WINDOW:] - b[WINDOW:]).abs().max().item() > 1e-3
    finally:
        full.close()


def _with_config(tmp_path, base, **changes):
    d = shutil.copytree(base, tmp_path / "m", dirs_exist_ok=True)
    raw = json.loads((d / "config.json").read_text())
    raw.update(changes)
    (d / "config.json").write_text(json.dumps(raw))
    return d


@pytest.mark.parametrize("changes, words", [
    (dict(model_type="mixtral", architectures=["MixtralForCausalLM"]), ["'mixtral'", "not served", "qwen2"]),
    (dict(rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0],
                           "long_factor": [1.0]}), ["'phi3'", "RoPE type 'longrope'"]),
    (dict(hidden_act="gelu_new"), ["'phi3'", "hidden_act 'gelu_new'"]),
    (dict(mlp_bias=True), ["'phi3'", "mlp_bias"]),
])
def test_refusals_name_the_model_type_and_feature(tmp_path, changes, words):
    base = build_family("phi3", tmp_path / "phi3")
    d = _with_config(tmp_path, base, **changes)
    with pytest.raises(SpecError) as e:
        Engine(d)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_adapter_for_split_modules_refused_on_fused_family(tmp_path, hf_model_dir):
    """A Llama-style adapter (q_proj ...) on phi3 (qkv_proj ...) is refused with the modules it has."""
    from tests.fixtures.tiny_models import build_tiny_adapter

    base = build_family("phi3", tmp_path / "phi3")
    ad = build_tiny_adapter(tmp_path / "ad", hf_model_dir, rank=4, target_modules=("q_proj",))
    eng = Engine(base, lora_backend="torch", kv_cache_tokens=256)
    try:
        with pytest.raises(SpecError, match="model type 'phi3': qkv_proj, o_proj, gate_up_proj, down_proj"):
            eng.add_adapter("bad", ad)
    finally:
        eng.close()
