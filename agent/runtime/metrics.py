"""Engine metrics: plain counters and observers, no Prometheus here.

The engine records events (time to first token, time per output token, adapter loads) and keeps
counters; observers registered with :meth:`EngineMetrics.subscribe` receive each observation
``(name, value)`` on the engine's thread, which is how the Worker service feeds Prometheus.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("atoll.runtime")

Observer = Callable[[str, float], None]


class EngineMetrics:
    def __init__(self, window_s: float = 10.0):
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.requests_finished = 0
        self.requests_rejected = 0
        self.adapter_hits = 0
        self.adapter_misses = 0
        self.adapter_loads = 0
        self.adapter_load_seconds = 0.0
        self.adapter_evictions = 0
        self.adapter_load_failures = 0
        self.steps = 0
        self._window_s = window_s
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._ttfts: collections.deque[tuple[float, float]] = collections.deque()
        self._observers: list[Observer] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Observer) -> None:
        with self._lock:
            self._observers.append(fn)

    def _emit(self, name: str, value: float) -> None:
        for fn in list(self._observers):
            try:
                fn(name, value)
            except Exception:  # an observer must never break the engine
                log.exception("metrics observer failed")

    def log(self, msg: str) -> None:
        log.warning(msg)

    def observe_adapter_load(self, seconds: float) -> None:
        self.adapter_loads += 1
        self.adapter_load_seconds += seconds
        self._emit("adapter_load_seconds", seconds)

    def observe_adapter_lookup(self, hit: bool) -> None:
        if hit:
            self.adapter_hits += 1
        else:
            self.adapter_misses += 1
        self._emit("adapter_hit" if hit else "adapter_miss", 1.0)

    def observe_tokens(self, n: int) -> None:
        self.generated_tokens += n
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, n))
            self._trim(self._recent, now)
        self._emit("generated_tokens", float(n))

    def observe_ttft(self, seconds: float) -> None:
        with self._lock:
            self._ttfts.append((time.monotonic(), seconds))
        self._emit("time_to_first_token_seconds", seconds)

    def _trim(self, q: collections.deque, now: float) -> None:
        while q and q[0][0] < now - self._window_s:
            q.popleft()

    def ttft_seconds(self) -> float:
        """Mean time to first token over the recent window (0 when no request started in it)."""
        with self._lock:
            self._trim(self._ttfts, time.monotonic())
            return sum(s for _, s in self._ttfts) / len(self._ttfts) if self._ttfts else 0.0

    def observe_tpot(self, seconds: float) -> None:
        self._emit("time_per_output_token_seconds", seconds)

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(self._recent, now)
            if not self._recent:
                return 0.0
            span = max(now - self._recent[0][0], 1e-3)
            return sum(n for _, n in self._recent) / span
