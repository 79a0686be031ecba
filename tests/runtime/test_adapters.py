"""Adapter refusals (typed, naming the file and the fix) and the slot store (LRU, pinning,
refcounts, host tier)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from atoll.agent.runtime import Engine, SamplingParams
from atoll.core.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted, SpecError
from tests.fixtures.tiny_models import build_tiny_adapter, build_tiny_llama


@pytest.fixture(scope="module")
def small_engine(tiny_dir):
    eng = Engine(tiny_dir, lora_backend="torch", max_lora_rank=8, max_adapters_on_device=3,
                 max_adapters_in_host=2, kv_cache_tokens=1024)
    yield eng
    eng.close()


def _edit_config(d, **changes):
    p = d / "adapter_config.json"
    cfg = json.loads(p.read_text())
    cfg.update(changes)
    p.write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("change, words", [
    (dict(use_dora=True), ["DoRA"]),
    (dict(modules_to_save=["lm_head"]), ["modules_to_save"]),
    (dict(target_modules=["q_proj", "qkv_proj"]), ["qkv_proj", "matches no"]),
    (dict(target_modules="model.*\\.nothing_here"), ["matches no projection"]),
    (dict(bias="all"), ["bias"]),
    (dict(lora_bias=True), ["lora_bias"]),
    (dict(peft_type="IA3"), ["not LoRA"]),
])
def test_config_refusals(small_engine, tiny_dir, tmp_path, change, words):
    d = _edit_config(build_tiny_adapter(tmp_path / "ad", tiny_dir, rank=4), **change)
    with pytest.raises(SpecError) as ei:
        small_engine.add_adapter("bad", d)
    msg = str(ei.value)
    assert str(d) in msg
    for w in words:
        assert w in msg, msg
    assert not small_engine.store.has("bad")


def test_rank_above_maximum_refused(small_engine, tiny_dir, tmp_path):
    d = build_tiny_adapter(tmp_path / "big", tiny_dir, rank=16)
    with pytest.raises(SpecError, match="exceeds the configured maximum 8"):
        small_engine.add_adapter("big", d)


def test_shape_mismatch_refused(small_engine, tmp_path):
    other = build_tiny_llama(tmp_path / "other", hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)
    d = build_tiny_adapter(tmp_path / "ad", other, rank=4)
    with pytest.raises(SpecError, match="do not fit the base"):
        small_engine.add_adapter("wrong-base", d)


def test_target_listed_without_tensors_refused(small_engine, tiny_dir, tmp_path):
    d = build_tiny_adapter(tmp_path / "ad", tiny_dir, rank=4, target_modules=("q_proj",))
    _edit_config(d, target_modules=["q_proj", "v_proj"])
    with pytest.raises(SpecError, match="'v_proj' is listed but has no tensors"):
        small_engine.add_adapter("partial", d)


def test_missing_files_refused(small_engine, tiny_dir, tmp_path):
    with pytest.raises(SpecError, match="adapter directory not found"):
        small_engine.add_adapter("x", tmp_path / "nope")
    d = build_tiny_adapter(tmp_path / "ad", tiny_dir, rank=4)
    (d / "adapter_model.safetensors").unlink()
    with pytest.raises(SpecError, match="adapter_model.safetensors is missing"):
        small_engine.add_adapter("x", d)
    (d / "adapter_config.json").unlink()
    with pytest.raises(SpecError, match="adapter_config.json is missing"):
        small_engine.add_adapter("x", d)


def test_unknown_tensor_refused(small_engine, tiny_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    d = build_tiny_adapter(tmp_path / "ad", tiny_dir, rank=4)
    sd = load_file(str(d / "adapter_model.safetensors"))
    sd["base_model.model.lm_head.lora_A.weight"] = torch.zeros(4, 64)
    save_file(sd, str(d / "adapter_model.safetensors"))
    with pytest.raises(SpecError, match="lm_head"):
        small_engine.add_adapter("x", d)


def test_duplicate_and_unknown_names(small_engine, tiny_dir, tmp_path):
    d = build_tiny_adapter(tmp_path / "ad", tiny_dir, rank=4)
    small_engine.add_adapter("dup", d)
    try:
        with pytest.raises(AlreadyExists):
            small_engine.add_adapter("dup", d)
    finally:
        small_engine.remove_adapter("dup")
    with pytest.raises(NotFound):
        small_engine.remove_adapter("dup")
    with pytest.raises(NotFound):
        small_engine.submit([1, 2, 3], adapter="never-loaded")


def _wait(pred, timeout=10.0):
    t = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < t, "timed out"
        time.sleep(0.005)


def test_lru_eviction_pinning_and_refcounts(tiny_dir, tmp_path):
    eng = Engine(tiny_dir, lora_backend="torch", max_lora_rank=8, max_adapters_on_device=2,
                 max_adapters_in_host=1, kv_cache_tokens=1024)
    try:
        for i in range(4):
            eng.add_adapter(f"a{i}", build_tiny_adapter(tmp_path / f"a{i}", tiny_dir, rank=4, seed=i))
        sp = SamplingParams(max_tokens=2, ignore_eos=True)
        res = lambda: {i.name: i.residency for i in eng.list_adapters()}  # noqa: E731
        eng.generate([[1, 5, 6]], adapters=["a0"], sampling=sp)
        eng.generate([[1, 5, 6]], adapters=["a1"], sampling=sp)
        assert res()["a0"] == res()["a1"] == "device"
        eng.generate([[1, 5, 6]], adapters=["a0"], sampling=sp)        # a0 most recent: a1 is evicted next
        eng.generate([[1, 5, 6]], adapters=["a2"], sampling=sp)
        r = res()
        assert r["a0"] == "device" and r["a2"] == "device" and r["a1"] != "device"
        # host tier holds 1 adapter: the others were dropped to disk and reload on demand
        assert sum(v == "disk" for v in res().values()) >= 2
        s = eng.stats()
        assert s["adapter_hits"] == 1 and s["adapter_misses"] == 3 and s["adapter_evictions"] == 1

        # a running request's adapter is never evicted: a3 waits until a2's request is done
        eng.start()
        # (long enough to outlast the checks below on a fast CPU: 400 tokens each)
        long = eng.submit([1, 5, 6], "a2", SamplingParams(max_tokens=400, ignore_eos=True))
        other = eng.submit([1, 5, 6], "a0", SamplingParams(max_tokens=400, ignore_eos=True))
        _wait(lambda: len(long.token_ids) > 0 and len(other.token_ids) > 0)
        late = eng.submit([1, 7], "a3", SamplingParams(max_tokens=1, ignore_eos=True))
        checks, until = 0, time.monotonic() + 0.05
        while time.monotonic() < until and not (long.finished or other.finished):
            assert not late.finished and res()["a3"] != "device"     # both slots held by running requests
            checks += 1
            time.sleep(0.002)
        assert checks > 0 and not (long.finished or other.finished), "the long requests ended before the check"
        with pytest.raises(FailedPrecondition, match="running request"):
            eng.remove_adapter("a2")
        long.result(30)
        assert late.result(30).completion_tokens == 1
        other.result(30)
        assert res()["a3"] == "device"

        # pinned adapters are loaded at once and never evicted; pinning every slot is refused
        eng.store.pin("a1")
        _wait(lambda: res()["a1"] == "device")
        with pytest.raises(ResourceExhausted, match="no free device slot"):
            eng.store.pin("a0")
        for name in ("a0", "a2", "a3", "a0"):
            eng.generate([[1, 2]], adapters=[name], sampling=sp)
            assert res()["a1"] == "device"
    finally:
        eng.close()


def test_adapter_removed_from_disk_after_validation_fails_request(tiny_dir, tmp_path):
    import shutil

    eng = Engine(tiny_dir, lora_backend="torch", max_lora_rank=8, max_adapters_on_device=2,
                 max_adapters_in_host=1, kv_cache_tokens=512)
    try:
        d0 = build_tiny_adapter(tmp_path / "x0", tiny_dir, rank=4)
        d1 = build_tiny_adapter(tmp_path / "x1", tiny_dir, rank=4, seed=3)
        eng.add_adapter("x0", d0)
        eng.add_adapter("x1", d1)                    # pushes x0 out of the host tier
        shutil.rmtree(d0)
        eng.start()
        h = eng.submit([1, 2, 3], "x0", SamplingParams(max_tokens=2))
        with pytest.raises(FailedPrecondition, match="can no longer be loaded"):
            h.result(10)
        assert h.finish_reason == "error"
        assert eng.generate([[1, 2, 3]], adapters=["x1"], sampling=SamplingParams(max_tokens=2))[0].token_ids
    finally:
        eng.close()


def test_loading_adapters_does_not_stall_running_requests(tiny_dir, tmp_path):
    """While new adapters are validated and loaded, a running request keeps getting tokens."""
    eng = Engine(tiny_dir, lora_backend="torch", max_lora_rank=8, max_adapters_on_device=3,
                 max_adapters_in_host=1, kv_cache_tokens=2048).start()
    try:
        dirs = [build_tiny_adapter(tmp_path / f"l{i}", tiny_dir, rank=8, seed=i) for i in range(6)]
        long = eng.submit([1, 2, 3], None, SamplingParams(max_tokens=1900, ignore_eos=True))
        _wait(lambda: len(long.token_ids) > 0)
        progress = []
        for i, d in enumerate(dirs):
            before = len(long.token_ids)
            eng.add_adapter(f"l{i}", d)
            eng.submit([1, 4], f"l{i}", SamplingParams(max_tokens=1)).result(30)   # load into a slot, evicting
            progress.append(len(long.token_ids) - before)
        assert all(p > 0 for p in progress), progress
        assert not long.finished
        assert eng.stats()["adapter_evictions"] >= 3
    finally:
        eng.close()


def test_more_adapters_than_slots_all_finish_without_thrashing(tiny_dir, tmp_path):
    eng = Engine(tiny_dir, lora_backend="torch", max_lora_rank=8, max_adapters_on_device=2,
                 max_adapters_in_host=8, kv_cache_tokens=4096)
    try:
        names = []
        for i in range(6):
            eng.add_adapter(f"o{i}", build_tiny_adapter(tmp_path / f"o{i}", tiny_dir, rank=4, seed=i))
            names.append(f"o{i}")
        adapters = [names[i % 6] for i in range(18)]
        prompts = [[1, 10 + i, 20] for i in range(18)]
        sp = SamplingParams(max_tokens=4, ignore_eos=True)
        outs = eng.generate(prompts, adapters=adapters, sampling=sp)
        assert all(len(o.token_ids) == 4 for o in outs)
        alone = [eng.generate([p], adapters=[a], sampling=sp)[0].token_ids for p, a in zip(prompts, adapters)]
        assert [o.token_ids for o in outs] == alone
        assert eng.stats()["adapter_loads"] <= 6 + 18 + 6
    finally:
        eng.close()


_LOADER_CHILD = """
import os, sys, time, torch
from pathlib import Path
from atoll.agent.runtime import Engine, SamplingParams
from atoll.kernels import cpu_ops
from tests.fixtures.tiny_models import build_tiny_adapter, build_tiny_llama
if sys.argv[2] == "control":
    cpu_ops.serial_torch_thread = lambda: False
torch.set_num_threads(2)
tmp = Path(sys.argv[1])
base = build_tiny_llama(tmp / "base", hidden_size=512, intermediate_size=1024, num_layers=1, num_heads=8, num_kv_heads=4)
ad = build_tiny_adapter(tmp / "ad", base, rank=64, alpha=64)
eng = Engine(base, lora_backend="torch", max_lora_rank=64, max_adapters_on_device=2, kv_cache_tokens=512)
sp = SamplingParams(max_tokens=2)
torch.zeros(4_000_000).add_(1)             # the serving (main) thread's pool
eng.generate([[1, 2, 3]], sampling=sp)
before = set(os.listdir("/proc/self/task"))       # thread ids: one that ends must not cancel one that starts
eng.add_adapter("a", str(ad))
eng.generate([[1, 2, 3]], adapters=["a"], sampling=sp)
time.sleep(0.2)
print(len(set(os.listdir("/proc/self/task")) - before))
eng.close()
"""


@pytest.mark.parametrize("mode", ["fixed", "control"])
def test_the_adapter_loader_starts_no_second_openmp_pool(tmp_path, mode):
    """The loader thread's tensor work runs serially (cpu_ops.serial_torch_thread): a second
    OpenMP pool would make libgomp stop letting the serving thread's idle workers spin, and every
    decode step after the first adapter load would wait on sleeping workers (about a third slower on
    2 cores). The control, without the call, shows the loader does start one."""
    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread here: no pool to start")
    out = subprocess.run([sys.executable, "-c", _LOADER_CHILD, str(tmp_path), mode], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    extra = int(out.stdout.strip().splitlines()[-1])
    assert (extra == 0) if mode == "fixed" else (extra >= 1), (mode, extra)
