"""Cold starts on an agent (ReplicaManager with the real Engine): a replica that needs the base
model pays fetch + load + warm-up of the model; an adapter replica added to a host that already
holds the base loads only its adapter (milliseconds), and each phase is recorded."""

from __future__ import annotations

import asyncio
from pathlib import Path

from atoll.agent.replicas import ReplicaManager
from atoll.specs.assignment import ReplicaItem as Item
from atoll.specs.assignment import generation_of as digest


def test_adapter_on_a_warm_host_is_a_small_fraction_of_a_base_cold_start(tmp_path):
    from atoll.agent.runtime import Engine
    from tests.fixtures.tiny_models import build_tiny_adapter, build_tiny_llama

    # big enough (11M parameters) that loading a base model is real work, small enough for CI
    tiny_dir = build_tiny_llama(tmp_path / "base", vocab_size=8192, hidden_size=256, intermediate_size=704,
                                num_layers=4, num_heads=4, num_kv_heads=2)
    adapter_dir = build_tiny_adapter(tmp_path / "tenant", tiny_dir, rank=8, seed=3)
    engines = []

    def factory(path: Path):
        eng = Engine(path, device="cpu", dtype="float32", kv_cache_tokens=512, max_lora_rank=8)
        engines.append(eng)
        return eng

    async def resolve(source: str) -> Path:
        return Path(source)

    base = Item("wf.base", "wf", "chat", "base", str(tiny_dir), "", "", "llm")
    tenant = Item("wf.tenant", "wf", "chat", "tenant", str(tiny_dir), "tenant", str(adapter_dir), "llm")

    async def go():
        rm = ReplicaManager(factory, resolve)
        rm.set_desired([base], digest([base]))
        await rm.converge()
        assert rm.states == {"wf.base": "ready"}
        rm.set_desired([base, tenant], digest([base, tenant]))
        await rm.converge()
        assert rm.states == {"wf.base": "ready", "wf.tenant": "ready"}
        return rm

    try:
        rm = asyncio.run(go())
        assert len(engines) == 1                                # the base was not loaded twice
        ls = rm.load_seconds
        assert all(ls[f"wf.{r}/{p}"] >= 0 for r in ("base", "tenant") for p in ("fetch", "load", "warmup"))
        # loading: the base model's weights and engine (~30 ms here) against one adapter (~3 ms);
        # the warm-up (one token) costs the same for both
        assert 0 < ls["wf.tenant/load"] < 0.3 * ls["wf.base/load"], ls
    finally:
        for e in engines:
            e.close()
