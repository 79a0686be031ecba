"""The offline and streaming engine: one base model, many adapters, continuous batching.

The engine is the public surface: it checks inputs, builds requests and hands them to its parts.
Threading: any thread may ``submit``/``cancel``; they only touch the :class:`~.inbox.Inbox`.
Model steps run on one thread at a time in the :class:`~.stepper.StepRunner`: the background
loop after ``start()``, or the caller of ``generate()`` when no loop runs. Adapter loads run on
the store's own thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import time
from pathlib import Path

import torch

from atoll.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from atoll.kernels import cpu_ops

from .adapters import AdapterInfo, AdapterStore
from .chat import no_template_error
from .inbox import Inbox
from .kv_cache import PagedKVCache
from .metrics import EngineMetrics
from .model import LlamaModel
from .request import GenerationOutput, Request, RequestHandle
from .sampling import SamplingParams, make_generator
from .scheduler import Scheduler
from .source import open_model
from .stepper import StepRunner
from .tokenizer import IncrementalDecoder
from .weights import onednn_available

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    dt = _DTYPES.get(str(name).replace("torch.", ""))
    if dt is None:
        raise InvalidArgument(f"dtype {name!r} is not supported", hint="use float32, float16 or bfloat16")
    if dt is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FailedPrecondition("this GPU does not support bfloat16", hint="use float16")
    return dt


def _resolve_backend(name: str, device: torch.device) -> str:
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if name not in ("torch", "triton", "ref"):
        raise InvalidArgument(f"lora_backend {name!r} is unknown", hint="use auto, torch, triton or ref")
    if name == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise FailedPrecondition("the triton LoRA backend on CPU tensors needs TRITON_INTERPRET=1",
                                 hint="set TRITON_INTERPRET=1 before starting, or use lora_backend='torch'")
    return name


class Engine:
    """One base model and its adapters, with continuous batching.

    ``device``: "cpu", "cuda", "cuda:1"...; ``dtype``: float32 | float16 | bfloat16 | auto (fp32
    on CPU, the checkpoint's dtype on CUDA); ``lora_backend``: auto | torch | triton | ref;
    ``max_lora_rank``: largest adapter rank accepted (slots are padded to it);
    ``max_adapters_on_device``: device slots; ``max_adapters_in_host``: parsed adapters kept in
    host memory; ``kv_cache_tokens``: paged KV capacity (default: 512 MiB worth, at most 16
    contexts); ``max_num_batched_tokens``: token budget per step; ``max_num_seqs``: running
    requests at most; ``max_waiting``: queued requests before submit answers RESOURCE_EXHAUSTED;
    ``packed_weights``: keep the base projections packed for the CPU (None: on the CPU in fp32,
    where it makes decode GEMMs faster), in atoll's panel layout where its kernel builds, else
    oneDNN's; "panel" or "onednn" asks for one (see :mod:`.weights`); ``cpu_kernels``: atoll's
    own CPU kernels (:mod:`atoll.kernels.cpu_ops`: the panel layout, decode attention over the
    cache in place, RoPE with the cache write, silu·up, RMSNorm, the decode LoRA) in fp32 on the
    CPU: None where they build, False never (torch and oneDNN only), True required.
    """

    def __init__(self, model_dir: str | Path, *, device: str = "cpu", dtype: str = "float32",
                 lora_backend: str = "auto", max_lora_rank: int = 64, max_adapters_on_device: int = 8,
                 max_adapters_in_host: int = 64, kv_cache_tokens: int | None = None, block_size: int = 16,
                 max_num_batched_tokens: int = 1024, max_num_seqs: int = 64, max_waiting: int = 4096,
                 packed_weights: bool | str | None = None, cpu_kernels: bool | None = None):
        self.model_dir = Path(model_dir)
        for flag, value in (("max_lora_rank", max_lora_rank), ("max_adapters_on_device", max_adapters_on_device),
                            ("max_adapters_in_host", max_adapters_in_host), ("block_size", block_size),
                            ("max_num_batched_tokens", max_num_batched_tokens), ("max_num_seqs", max_num_seqs),
                            ("max_waiting", max_waiting), ("kv_cache_tokens", kv_cache_tokens or 1)):
            if not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{flag} must be an integer >= 1, got {value!r}")
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise InvalidArgument(f"device {device!r} is not a torch device", hint="e.g. cpu or cuda:0") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise FailedPrecondition(f"device {device!r} asked but CUDA is not available", hint="use device='cpu'")
        self.source = open_model(self.model_dir)
        self.model_dir = self.source.path
        self.cfg = self.source.cfg
        if dtype == "auto":
            dtype = "float32" if self.device.type != "cuda" else self.cfg.torch_dtype
            if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
                dtype = "float16"
        self.dtype = _resolve_dtype(dtype, self.device)
        self.lora_backend = _resolve_backend(lora_backend, self.device)
        fits = self.device.type == "cpu" and self.dtype == torch.float32
        if cpu_kernels and not (fits and cpu_ops.available()):
            raise FailedPrecondition("atoll's CPU kernels serve fp32 on an x86-64 CPU with AVX-512F or AVX2 and a C compiler: "
                                     + (cpu_ops.why_not() if fits else f"not {self.dtype} on {self.device}"),
                                     hint="leave cpu_kernels unset to use them where they build")
        cpu_kernels = fits and cpu_kernels is not False and cpu_ops.available()
        if not cpu_kernels and packed_weights in (None, True) and fits and onednn_available():
            packed_weights = "onednn"
        self.weights = self.source.weights(dtype=self.dtype, device=self.device, packed=packed_weights)
        self.model = LlamaModel(self.cfg, self.weights, dtype=self.dtype, device=self.device,
                                lora_backend=self.lora_backend, cpu_kernels=cpu_kernels)
        self.tokenizer = self.source.tokenizer
        self.chat_template = self.source.chat_template
        self.metrics = EngineMetrics()
        self.max_model_len = self.cfg.max_position_embeddings
        if kv_cache_tokens is None:
            per_tok = 2 * self.cfg.num_layers * self.cfg.kv_size * torch.tensor([], dtype=self.dtype).element_size()
            kv_cache_tokens = max(block_size, min(512 * 2 ** 20 // per_tok, 16 * self.max_model_len))
        self.kv = PagedKVCache(self.cfg, num_blocks=-(-kv_cache_tokens // block_size), block_size=block_size,
                               dtype=self.dtype, device=self.device)
        self.store = AdapterStore(self.cfg, num_slots=max_adapters_on_device, max_rank=max_lora_rank,
                                  dtype=self.dtype, device=self.device, host_capacity=max_adapters_in_host,
                                  metrics=self.metrics, panel_b=cpu_kernels)
        self.scheduler = Scheduler(self.kv, self.store, max_num_batched_tokens=max_num_batched_tokens,
                                   max_num_seqs=max_num_seqs, device=self.device)
        self.max_waiting = max_waiting
        self.inbox = Inbox(max_waiting)
        self.runner = StepRunner(model=self.model, kv=self.kv, store=self.store, scheduler=self.scheduler,
                                 metrics=self.metrics, inbox=self.inbox, cfg=self.cfg,
                                 max_model_len=self.max_model_len)
        self._ids = itertools.count()
        self._thread_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ---- adapters --------------------------------------------------------------------------
    def add_adapter(self, name: str, path: str | Path, pin: bool = False) -> AdapterInfo:
        """Validate and register a PEFT adapter; raises SpecError naming the file and the problem."""
        if not name or not isinstance(name, str):
            raise InvalidArgument("adapter name must be a non-empty string")
        return self.store.add(name, str(path), pin=pin)

    def remove_adapter(self, name: str) -> bool:
        self.store.remove(name)
        return True

    def list_adapters(self) -> list[AdapterInfo]:
        return self.store.list()

    # ---- requests --------------------------------------------------------------------------
    def encode_prompt(self, prompt) -> list[int]:
        """Token ids of a text (tokenizer.json) or id-list prompt, checked against the vocabulary."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise FailedPrecondition("text prompt given but the model has no tokenizer.json",
                                         hint="pass token ids")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise InvalidArgument("prompt is empty")
        bad = [t for t in ids if not 0 <= t < self.cfg.vocab_size]
        if bad:
            raise InvalidArgument(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.cfg.vocab_size})")
        return ids

    def submit(self, prompt, adapter: str | None = None, sampling: SamplingParams | None = None,
               request_id: str | None = None, *, stream_text: bool = True, owner: str = "") -> RequestHandle:
        """Queue one request; thread-safe. ``prompt`` is text or token ids. Raises before queueing on
        bad input (InvalidArgument), unknown adapter (NotFound) or a request that can never fit
        (ResourceExhausted). ``sampling.n`` must be 1 here (see :meth:`submit_choices`).
        ``owner``: who asks (a calling node); waiting requests are admitted taking turns by owner."""
        params = (sampling or SamplingParams()).validate(self.cfg.vocab_size)
        if params.n != 1:
            raise InvalidArgument(f"submit() runs one choice, not n={params.n}", hint="use submit_choices()")
        ids = self.encode_prompt(prompt)
        return self._submit_ids(ids, adapter, params, request_id or f"req-{next(self._ids)}", stream_text, owner)

    def submit_choices(self, prompt, adapter: str | None = None, sampling: SamplingParams | None = None,
                       request_id: str | None = None, *, stream_text: bool = True,
                       owner: str = "") -> list[RequestHandle]:
        """Queue ``sampling.n`` independent choices for one prompt (OpenAI's ``n``); thread-safe.
        Choice i has request id ``{request_id}.{i}`` and, when ``seed`` is set, seed ``seed + i``
        (choice 0 draws exactly what one request with that seed draws). All are queued or none."""
        params = (sampling or SamplingParams()).validate(self.cfg.vocab_size)
        ids = self.encode_prompt(prompt)
        rid = request_id or f"req-{next(self._ids)}"
        handles: list[RequestHandle] = []
        try:
            for i in range(params.n):
                seed = None if params.seed is None else (int(params.seed) + i) % (2 ** 64)
                one = dataclasses.replace(params, n=1, seed=seed)
                handles.append(self._submit_ids(ids, adapter, one, f"{rid}.{i}", stream_text, owner))
        except Exception:
            for h in handles:
                self.cancel(h.request_id)
            raise
        return handles

    def _submit_ids(self, ids: list[int], adapter: str | None, params: SamplingParams, rid: str,
                    stream_text: bool, owner: str = "") -> RequestHandle:
        adapter = adapter or None
        if adapter is not None and not self.store.has(adapter):
            raise NotFound(f"adapter {adapter!r} is not loaded", hint="load it first (add_adapter / LoadAdapter)")
        if params.max_tokens is None:          # up to the context, or what the KV cache can ever hold
            room = min(self.max_model_len, self.kv.capacity_tokens) - len(ids)
            params = dataclasses.replace(params, max_tokens=max(1, room))
        total = len(ids) + params.max_tokens
        if total > self.max_model_len:
            raise InvalidArgument(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                                  f"model's context of {self.max_model_len} tokens")
        self.kv.check_fits_ever(total)
        handle = RequestHandle(rid, len(ids), adapter, self.cancel)
        dec = IncrementalDecoder(self.tokenizer if (stream_text or params.stop) else None, params.stop)
        req = Request(rid, ids, adapter, params, handle, dec, make_generator(params.seed, self.device), owner=owner)
        self.inbox.put(req, len(self.scheduler.waiting), self._count_rejected)
        return handle

    # ---- chat --------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True,
                            tokenize: bool = False, **kwargs):
        """The model's own chat template applied to ``messages`` (see :mod:`.chat`): the prompt
        text, or its token ids with ``tokenize`` (special tokens as the template wrote them,
        none added). Replies end at the template's end-of-turn token, which is among the engine's
        stop tokens. FailedPrecondition when the model has no template."""
        if self.chat_template is None:
            raise no_template_error(self.source.name)
        text = self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        if not tokenize:
            return text
        if self.tokenizer is None:
            raise FailedPrecondition("the model has no tokenizer to encode the chat prompt", hint="pass token ids")
        return self.tokenizer.encode(text, add_special_tokens=False)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Tokens that end every request (unless ``ignore_eos``): EOS ids of the model's config and
        generation config, and the chat template's end-of-turn tokens."""
        return self.cfg.eos_token_ids

    def token_text(self, token_id: int) -> str:
        """One token decoded on its own (special tokens included), e.g. for logprob reports."""
        if self.tokenizer is None:
            raise FailedPrecondition("the model has no tokenizer", hint="report token ids")
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _count_rejected(self) -> None:
        self.metrics.requests_rejected += 1

    def cancel(self, request_id: str) -> bool:
        return self.inbox.cancel(request_id)

    def generate(self, prompts, adapters=None, sampling=None) -> list[GenerationOutput]:
        """Blocking batch generation. ``sampling``: one SamplingParams for all, or one per prompt."""
        prompts = list(prompts)
        adapters = list(adapters) if adapters is not None else [None] * len(prompts)
        if len(adapters) != len(prompts):
            raise InvalidArgument(f"{len(prompts)} prompts but {len(adapters)} adapters")
        params = sampling if isinstance(sampling, (list, tuple)) else [sampling] * len(prompts)
        if len(params) != len(prompts):
            raise InvalidArgument(f"{len(prompts)} prompts but {len(params)} sampling params")
        handles = []
        try:
            for p, a, s in zip(prompts, adapters, params):
                handles.append(self.submit(p, a, s, stream_text=False))
        except Exception:
            for h in handles:
                self.cancel(h.request_id)
            raise
        if self._thread is None:
            while not all(h.finished for h in handles):
                if not self.step():
                    self.store.wait_change(0.005)
        outs = [h.result() for h in handles]
        if self.tokenizer is not None:
            for o, s in zip(outs, params):
                if not (s and s.stop):       # with stop strings the text was cut while running
                    o.text = self.tokenizer.decode(o.token_ids)
        return outs

    # ---- the loop --------------------------------------------------------------------------
    def start(self) -> "Engine":
        with self._thread_lock:
            if self._thread is None:
                self.inbox.set_stopping(False)
                self.inbox.set_refusing(False)
                self._thread = threading.Thread(target=self._loop, name="atoll-engine", daemon=True)
                self._thread.start()
        return self

    def stop(self) -> int:
        """Stop the background step loop. Requests it leaves queued or running would never be
        stepped again, so they finish at once with UNAVAILABLE (a stream ends with that error
        and a router retries elsewhere); nothing is left waiting forever. Without a loop (offline
        use: ``generate()`` steps itself) queued work is left alone. Returns how many requests
        were failed."""
        with self._thread_lock:
            t = self._thread
            self.inbox.set_stopping(True)
        failed = 0
        if t is not None:
            t.join()
            failed = self.runner.fail_outstanding(Unavailable("the engine stopped before this request finished",
                                                              hint="retry on another replica"))
        with self._thread_lock:
            self._thread = None
        return failed

    def shutdown(self, drain_timeout: float = 10.0) -> int:
        """Stop serving: refuse new requests (UNAVAILABLE), let queued and running ones finish
        for up to ``drain_timeout`` seconds, then :meth:`stop` (which fails whatever is left).
        Returns how many requests were failed. ``start()`` serves again."""
        self.inbox.set_refusing(True)
        deadline = time.monotonic() + max(0.0, drain_timeout)
        while self._thread is not None and self.runner.has_work() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.stop()

    def close(self) -> None:
        self.stop()
        self.store.close()

    def _loop(self) -> None:
        while self.inbox.wait_for_work(self.runner.has_work):
            try:
                if not self.runner.step():
                    self.store.wait_change(0.005)
            except Exception as exc:   # never kill the loop; fail the running requests instead
                self.metrics.log(f"engine step failed: {exc!r}")
                self.runner.fail_scheduled(exc)

    def step(self) -> int:
        """One scheduling + model step. Returns the number of tokens computed (0: nothing ran)."""
        return self.runner.step()

    # ---- prompt scoring --------------------------------------------------------------------
    def _score(self, prompts, adapters):
        ids = [self.encode_prompt(p) for p in prompts]
        adapters = list(adapters) if adapters is not None else [None] * len(ids)
        if len(adapters) != len(ids):
            raise InvalidArgument(f"{len(ids)} prompts but {len(adapters)} adapters")
        if not ids:
            return ids, None, None
        logits, hidden = self.runner.score(ids, adapters)
        return ids, logits, hidden

    def prompt_logits(self, prompts, adapters=None) -> list[torch.Tensor]:
        """Next-token logits at every prompt position: one fp32 [len, vocab] tensor per prompt."""
        ids, logits, _ = self._score(prompts, adapters)
        return list(torch.split(logits, [len(p) for p in ids])) if ids else []

    def embed(self, token_id_lists, adapter: str | None = None) -> torch.Tensor:
        """Mean-pooled final hidden states (after the last RMSNorm): fp32 [B, hidden]."""
        lists = list(token_id_lists)
        ids, _, hidden = self._score(lists, [adapter] * len(lists))
        if not ids:
            return torch.zeros(0, self.cfg.hidden_size)
        return torch.stack([h.float().mean(0) for h in torch.split(hidden, [len(p) for p in ids])])

    def stats(self) -> dict:
        m = self.metrics
        return {"tokens_per_s": m.tokens_per_second(), "generated_tokens": m.generated_tokens,
                "running": len(self.scheduler.running),
                "waiting": len(self.scheduler.waiting) + self.inbox.queued(),
                "kv_cache_usage": self.kv.usage(), "kv_cache_blocks": self.kv.num_blocks,
                "kv_cache_free_blocks": self.kv.num_free, "kv_block_size": self.kv.block_size,
                "adapter_hits": m.adapter_hits, "adapter_misses": m.adapter_misses,
                "adapter_loads": m.adapter_loads, "adapter_load_seconds": m.adapter_load_seconds,
                "adapter_evictions": m.adapter_evictions, "adapters_loaded": len(self.store.list()),
                "requests_finished": m.requests_finished, "steps": m.steps,
                "ttft_mean_s": m.ttft_seconds()}

