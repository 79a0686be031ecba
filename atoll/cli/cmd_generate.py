"""``atoll generate``: run the batched-LoRA runtime locally on one prompt.

    atoll generate --model DIR|FILE.gguf [--adapter NAME=DIR]... --prompt TEXT [--chat] [--use-adapter NAME]
                   [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
                   [--stop STR]... [--device cpu] [--dtype float32] [--lora-backend auto]

Tokens are printed as they are generated; a summary line goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time

from atoll.core.errors import SpecError


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text locally with a base model and LoRA adapters",
                              description="Run the batched-LoRA runtime on one prompt, streaming tokens.")
    p.add_argument("--model", required=True,
                   help="local Hugging Face model directory, or a .gguf file (or a directory holding one)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="load a PEFT adapter under NAME (repeatable)")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message through the model's chat template")
    p.add_argument("--use-adapter", default=None, metavar="NAME", help="adapter to generate with (default: none)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past the EOS token")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--lora-backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--max-lora-rank", type=int, default=64)
    p.set_defaults(func=run)


def _parse_adapters(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SpecError(f"expected NAME=DIR, got {item!r}", source="flag --adapter")
        if name in out:
            raise SpecError(f"adapter name {name!r} given twice", source="flag --adapter")
        out[name] = path
    return out


def run(ns: argparse.Namespace) -> int:
    adapters = _parse_adapters(ns.adapter)
    if ns.use_adapter and ns.use_adapter not in adapters:
        raise SpecError(f"adapter {ns.use_adapter!r} is not among --adapter names {sorted(adapters) or '(none)'}",
                        source="flag --use-adapter", hint="add --adapter NAME=DIR")
    if ns.max_tokens < 1:
        raise SpecError("must be >= 1", source="flag --max-tokens")

    # imported here so that `atoll --help` does not load torch (atoll.cli.main's rule)
    from atoll.agent.runtime import Engine, SamplingParams

    engine = Engine(ns.model, device=ns.device, dtype=ns.dtype, lora_backend=ns.lora_backend,
                    max_lora_rank=ns.max_lora_rank, max_adapters_on_device=max(2, len(adapters) + 1))
    try:
        for name, path in adapters.items():
            engine.add_adapter(name, path)
        params = SamplingParams(max_tokens=ns.max_tokens, temperature=ns.temperature, top_k=ns.top_k,
                                top_p=ns.top_p, seed=ns.seed, stop=list(ns.stop), ignore_eos=ns.ignore_eos)
        engine.start()
        t0 = time.perf_counter()
        prompt = (engine.apply_chat_template([{"role": "user", "content": ns.prompt}], tokenize=True)
                  if ns.chat else ns.prompt)
        handle = engine.submit(prompt, ns.use_adapter, params)
        for d in handle:
            if d.text:
                sys.stdout.write(d.text)
                sys.stdout.flush()
        sys.stdout.write("\n")
        dt = time.perf_counter() - t0
        n = len(handle.token_ids)
        print(f"[{n} tokens in {dt:.2f} s, {n / dt:.1f} tok/s, finish: {handle.finish_reason}, "
              f"adapter: {ns.use_adapter or 'none'}]", file=sys.stderr)
    finally:
        engine.close()
    return 0
