"""Sampling parameters and the batched sampler.

Per row: ``temperature == 0`` is greedy (argmax). Otherwise logits/temperature, then top-k (keep
the k largest), then top-p (keep the smallest prefix of the sorted distribution whose mass
reaches p), then one draw. A row with ``seed`` draws from its own generator, so its tokens do not
depend on its batch-mates.

Log-probabilities (``logprobs`` / ``top_logprobs``) are those of the model's own next-token
distribution, ``log_softmax(logits)``, before temperature, top-k and top-p: what the model thought
of the token it produced, and of the ``top_logprobs`` likeliest alternatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from atoll.core.errors import InvalidArgument
from atoll.core.openai_api import MAX_STOP_CHARS


MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 128
MAX_STOPS = 20          # a stage's 16 and a request's 4
# MAX_STOP_CHARS (256, each): the decoder holds back that much text and searches every stop per token


@dataclass
class TokenLogprob:
    """One generated token's log-probability, and the likeliest alternatives (id, logprob),
    most likely first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class SamplingParams:
    max_tokens: int | None = 16    # None: up to the model's context length
    temperature: float = 0.0
    top_k: int = 0                 # 0: off
    top_p: float = 1.0             # 1 (or 0): off
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False       # True: keep going past the model's EOS token(s)
    n: int = 1                     # independent choices per prompt (Engine.submit_choices)
    logprobs: bool = False         # report each generated token's log-probability
    top_logprobs: int = 0          # ... and this many likeliest alternatives (0-20; implies logprobs)

    def validate(self, vocab_size: int | None = None) -> "SamplingParams":
        def bad(what: str) -> InvalidArgument:
            return InvalidArgument(f"sampling: {what}")

        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise bad(f"max_tokens must be an integer >= 1 (or None: up to the context), got {self.max_tokens!r}")
        if not isinstance(self.n, int) or not 1 <= self.n <= MAX_CHOICES:
            raise bad(f"n must be an integer in [1, {MAX_CHOICES}], got {self.n!r}")
        if not isinstance(self.top_logprobs, int) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise bad(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}")
        if not (self.temperature >= 0.0) or self.temperature > 100:
            raise bad(f"temperature must be in [0, 100], got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad(f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}")
        if not (0.0 <= self.top_p <= 1.0):
            raise bad(f"top_p must be in [0, 1] (0 or 1: off), got {self.top_p!r}")
        if self.seed is not None and not (0 <= int(self.seed) < 2 ** 64):
            raise bad(f"seed must be in [0, 2^64), got {self.seed!r}")
        for t in self.stop_token_ids:
            if not isinstance(t, int) or t < 0 or (vocab_size is not None and t >= vocab_size):
                raise bad(f"stop token id {t!r} is outside the vocabulary [0, {vocab_size})")
        if len(self.stop) > MAX_STOPS:
            raise bad(f"at most {MAX_STOPS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS:
                raise bad(f"stop strings must be strings of 1 to {MAX_STOP_CHARS} characters")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs or self.top_logprobs > 0


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) % (2 ** 63))
    return g


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> list[int]:
    """One token per row of ``logits`` [M, V] (fp32)."""
    out = logits.argmax(dim=-1).tolist()
    for i, p in enumerate(params):
        if p.greedy:
            continue
        row = logits[i] / p.temperature
        if p.top_k and p.top_k < row.numel():
            kth = torch.topk(row, p.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        if 0.0 < p.top_p < 1.0:
            sorted_l, idx = torch.sort(row, descending=True)
            probs = torch.softmax(sorted_l, dim=-1)
            before = torch.cumsum(probs, dim=-1) - probs          # mass strictly before each token
            sorted_l = sorted_l.masked_fill(before >= p.top_p, float("-inf"))
            row = torch.full_like(row, float("-inf")).scatter(0, idx, sorted_l)
        probs = torch.softmax(row, dim=-1)
        out[i] = int(torch.multinomial(probs, 1, generator=generators[i]).item())
    return out


def token_logprobs(logits: torch.Tensor, tokens: list[int], tops: list[int]) -> list[TokenLogprob]:
    """Each row's chosen token's log-probability under ``log_softmax(logits)`` [M, V] (fp32), and
    its ``tops[i]`` likeliest tokens."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(1, torch.tensor(tokens, device=lp.device).view(-1, 1)).view(-1).tolist()
    k = max(tops, default=0)
    if k:
        vals, idx = torch.topk(lp, k, dim=-1)
        vals, idx = vals.tolist(), idx.tolist()
    out = []
    for i, (tok, v) in enumerate(zip(tokens, chosen)):
        top = list(zip(idx[i][:tops[i]], vals[i][:tops[i]])) if k and tops[i] else []
        out.append(TokenLogprob(tok, v, top))
    return out
