"""An agent's OpenAI-compatible door: this host's loaded model and adapters, served directly
by its engine (edge clients calling their own host). See :mod:`atoll.core.openai_http`."""

from __future__ import annotations

from atoll.core.errors import NotFound, Unavailable
from atoll.core.openai_http import BaseDoor


class LocalEngineDoor(BaseDoor):
    """The same door on an agent, for an edge client calling its own host: ``model`` names the
    loaded base model (directory name) or ``base:adapter`` / an adapter name, served by this
    host's engine directly (no coordinator on the path). Keys are not checked here: bind it to
    loopback or a trusted interface."""

    def __init__(self, loop, engine_fn, *, host: str = "127.0.0.1", port: int = 0):
        super().__init__(loop, host=host, port=port)
        self._engine_fn = engine_fn

    def _engine(self):
        eng = self._engine_fn()
        if eng is None:
            raise Unavailable("no model is loaded on this host yet")
        return eng

    async def _models(self, tenant):
        eng = self._engine()
        base = eng.model_dir.name
        out = [{"id": base, "object": "model", "created": 0, "owned_by": "atoll-agent"}]
        out += [{"id": f"{base}:{a.name}", "object": "model", "created": 0, "owned_by": "atoll-agent"}
                for a in eng.list_adapters()]
        return out

    def _adapter_for(self, model: str):
        eng = self._engine()
        base = eng.model_dir.name
        names = {a.name for a in eng.list_adapters()}
        if model == base:
            return None
        name = model.split(":", 1)[1] if model.startswith(base + ":") else model
        if name not in names:
            raise NotFound(f"the model {model!r} does not exist on this host",
                           hint="GET /v1/models lists the base model and its loaded adapters")
        return name

    async def _route(self, model, tenant, max_tokens, temperature):
        self._adapter_for(model)
        return None

    async def invoke(self, model, tenant, prompt, max_tokens, temperature, on_delta=None, timeout=60.0):
        # The runtime (torch, seconds to import) loads with the first model, so an agent joins
        # the fleet without waiting for it; a request here means a model is loaded.
        from atoll.agent.runtime import SamplingParams

        eng = self._engine()
        adapter = self._adapter_for(model)
        handle = eng.submit(prompt, adapter, SamplingParams(max_tokens=max_tokens or 32,
                                                            temperature=temperature or 0.0))
        text = []
        counts = [0, 0]
        async for d in handle:
            counts = [max(counts[0], d.prompt_tokens), max(counts[1], d.completion_tokens)]
            if d.text:
                text.append(d.text)
                if on_delta is not None:
                    await on_delta(d.text)

        class _R:
            output = {"text": "".join(text)}
            usage = {"prompt_tokens": counts[0], "completion_tokens": counts[1], "total_tokens": sum(counts)}
        return _R()


