"""An agent's OpenAI-compatible door: this host's loaded model and adapters, served by its engine
directly (an edge client calling its own host, no coordinator on the path). The HTTP protocol is
:mod:`atoll.core.openai_http`; this module is its backend, :class:`EngineBackend`.

``model`` names the loaded base model (its directory or file name), ``base:adapter``, or an
adapter's name. Chat requests are rendered with the model's own chat template; prompts may be
text or token ids; defaults are OpenAI's (temperature 1; ``max_tokens`` 16 for completions, up to
the end of the answer for chat). Token counts are the engine's. Keys are not checked here:
bind the door to loopback or a trusted interface.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from atoll.agent.generate import stream_choices
from atoll.core.errors import NotFound, Unavailable
from atoll.core.http_server import HttpLimits
from atoll.core.openai_api import Collector, Completion, EmbedRequest, GenRequest
from atoll.core.openai_http import OpenAIDoor

COMPLETION_MAX_TOKENS = 16      # OpenAI's default for /v1/completions
TEMPERATURE = 1.0               # OpenAI's default


class EngineBackend:
    """The door's backend on an agent: ``engine_fn()`` is the engine loaded now (None: 503)."""

    def __init__(self, engine_fn):
        self._engine_fn = engine_fn

    def _engine(self):
        eng = self._engine_fn()
        if eng is None:
            raise Unavailable("no model is loaded on this host yet")
        return eng

    @staticmethod
    def _base(eng) -> str:
        return eng.model_dir.name

    async def models(self, caller) -> list[dict]:
        eng = self._engine()
        base = self._base(eng)
        return ([{"id": base, "created": 0, "owned_by": "atoll-agent"}]
                + [{"id": f"{base}:{a.name}", "created": 0, "owned_by": "atoll-agent"} for a in eng.list_adapters()])

    def _adapter(self, eng, model: str) -> str | None:
        base = self._base(eng)
        if model == base:
            return None
        name = model.split(":", 1)[1] if model.startswith(base + ":") else model
        if name not in {a.name for a in eng.list_adapters()}:
            raise NotFound(f"the model {model[:200]!r} does not exist on this host",
                           hint="GET /v1/models lists the base model and its loaded adapters")
        return name

    def _params(self, req: GenRequest):
        # The runtime (torch, seconds to import) loads with the first model, so an agent joins
        # the fleet without waiting for it; a request here means a model is loaded.
        from atoll.agent.runtime import SamplingParams

        max_tokens = req.max_tokens if req.max_tokens is not None else (None if req.chat else COMPLETION_MAX_TOKENS)
        return SamplingParams(max_tokens=max_tokens,
                              temperature=TEMPERATURE if req.temperature is None else req.temperature,
                              top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed, stop=list(req.stop),
                              n=req.n, logprobs=req.logprobs or req.top_logprobs > 0, top_logprobs=req.top_logprobs)

    def stream(self, req: GenRequest, caller) -> AsyncIterator:
        eng = self._engine()
        return stream_choices(eng, prompt=req.prompt, messages=req.messages, adapter=self._adapter(eng, req.model),
                              params=self._params(req))

    async def complete(self, req: GenRequest, caller) -> Completion:
        out = Collector(req.n)
        async for ev in self.stream(req, caller):
            out.add(ev)
        return out.result()

    async def embed(self, req: EmbedRequest, caller) -> tuple[list[list[float]], int]:
        eng = self._engine()
        adapter = self._adapter(eng, req.model)
        ids = [eng.encode_prompt(x if isinstance(x, str) else list(x)) for x in req.inputs]
        vectors = await asyncio.get_running_loop().run_in_executor(None, lambda: eng.embed(ids, adapter=adapter))
        return [v.tolist() for v in vectors], sum(len(x) for x in ids)


def make_local_door(engine_fn, *, host: str, port: int, limits: HttpLimits = HttpLimits()) -> OpenAIDoor:
    """The agent's door on ``host:port`` (not started); no key check (see the module's docstring)."""
    return OpenAIDoor(EngineBackend(engine_fn), lambda authorization: None, host=host, port=port, limits=limits)
