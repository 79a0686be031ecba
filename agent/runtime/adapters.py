"""Adapter store: device slots (LRU, pinning, refcounts), a host-memory tier, loads from disk.

Three tiers: **registered** (name → path, validated when added), **host** (parsed tensors in
host memory, at most ``host_capacity`` adapters, LRU), **device** (``num_slots`` slots of the
stacked tensors the LoRA ops read). ``acquire(name)`` returns the slot when the adapter is on
the device, else queues a load and returns None; the engine admits the request later. Loads run
on a background thread (on CUDA on a side stream, finished through an event), so model steps
never wait for them. A slot is evicted only when its adapter is unpinned and no running request
holds it (refcount 0), least recently used first.

Slot tensors per layer (R = ``max_rank``, zero-padded; slot rows unused by an adapter are 0):
``qkv`` a [S,3,R,h] b [S,q+2kv,R]; ``o`` a [S,1,R,q] b [S,h,R]; ``gate_up`` a [S,2,R,h]
b [S,2i,R]; ``down`` a [S,1,R,i] b [S,h,R]; ``scales`` [S] fp32. With ``panel_b`` (atoll's
CPU LoRA kernel) each b also has a copy in panels of 16 output columns, [S,P,R,16] (``bp``,
:func:`atoll.kernels.cpu_ops.lora_panels`), so the kernel's expand multiplies whole vectors of
output columns, each panel one contiguous read, instead of reducing an R-long dot per column.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass

import torch

from atoll.core.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from atoll.kernels import cpu_ops

from .config import ModelConfig
from .lora import AdapterWeights, load_adapter
from .modules import module_dims, packed_modules
from .metrics import EngineMetrics
from .model import SlotWeights, slice_offsets


@dataclass
class AdapterInfo:
    name: str
    path: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    residency: str        # "device" | "host" | "disk"
    pinned: bool
    size_bytes: int
    slot: int = -1
    refcount: int = 0


class _Entry:
    def __init__(self, name: str, path: str, w: AdapterWeights):
        self.name, self.path = name, path
        self.rank, self.alpha, self.targets, self.size = w.rank, w.alpha, w.target_modules, w.nbytes
        self.host: AdapterWeights | None = w
        self.slot = -1            # device slot once resident
        self.loading = False
        self.pinned = False
        self.refcount = 0
        self.removed = False
        self.error: str | None = None   # set when a reload from disk failed
        self.fresh_until = 0.0          # just loaded: not evicted before its requests can start


class AdapterStore:
    FRESH_GRACE_S = 1.0
    def __init__(self, cfg: ModelConfig, *, num_slots: int, max_rank: int, dtype: torch.dtype,
                 device: torch.device, host_capacity: int = 64, metrics: EngineMetrics | None = None,
                 panel_b: bool = False):
        if num_slots < 1 or max_rank < 1:
            raise ValueError("num_slots and max_rank must be >= 1")
        self.cfg, self.num_slots, self.max_rank = cfg, num_slots, max_rank
        self.dtype, self.device, self.host_capacity = dtype, device, host_capacity
        self.metrics = metrics or EngineMetrics()
        dims = module_dims(cfg)
        self._slices = dict(zip(packed_modules(cfg), slice_offsets(cfg)))   # output-column bounds
        self.layers: list[SlotWeights] = []
        for _ in range(cfg.num_layers):
            a, b, bp = {}, {}, {}
            for proj, mods in packed_modules(cfg).items():
                fin = dims[mods[0]][0]
                fout = sum(dims[m][1] for m in mods)
                a[proj] = torch.zeros(num_slots, len(mods), max_rank, fin, dtype=dtype, device=device)
                b[proj] = torch.zeros(num_slots, fout, max_rank, dtype=dtype, device=device)
                if panel_b:
                    panels = cpu_ops.lora_panel_count(self._slices[proj])
                    bp[proj] = torch.zeros(num_slots, panels, max_rank, 16, dtype=dtype, device=device)
            self.layers.append(SlotWeights(a, b, bp if panel_b else None))
        self.scales = torch.zeros(num_slots, dtype=torch.float32, device=device)
        self._entries: dict[str, _Entry] = {}
        self._slot_owner: list[str | None] = [None] * num_slots
        self._lru: collections.OrderedDict[str, None] = collections.OrderedDict()      # device LRU
        self._host_lru: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Condition()
        self._queue: queue.Queue = queue.Queue()
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._pending_events: list[tuple[_Entry, object, int, float]] = []
        self._thread = threading.Thread(target=self._loader, name="atoll-adapter-loader", daemon=True)
        self._thread.start()

    # ---- registry ---------------------------------------------------------------------------
    def add(self, name: str, path: str, *, pin: bool = False) -> AdapterInfo:
        if not name:
            raise ValueError("adapter name must be non-empty")
        with self._lock:
            if name in self._entries:
                raise AlreadyExists(f"adapter {name!r} is already loaded",
                                    hint="unload it first, or pick another name")
        w = load_adapter(name, path, self.cfg, max_rank=self.max_rank, dtype=self.dtype)   # validates eagerly
        with self._lock:
            if name in self._entries:
                raise AlreadyExists(f"adapter {name!r} is already loaded")
            e = _Entry(name, str(path), w)
            self._entries[name] = e
            self._touch_host(e)
            if pin:
                self._pin(e)
            return self._info(e)

    def remove(self, name: str) -> None:
        with self._lock:
            e = self._get(name)
            if e.refcount:
                raise FailedPrecondition(f"adapter {name!r} is used by {e.refcount} running request(s)",
                                         hint="retry after they finish, or cancel them")
            e.removed = True
            del self._entries[name]
            self._host_lru.pop(name, None)
            self._lru.pop(name, None)
            if e.slot >= 0 and not e.loading:
                self._slot_owner[e.slot] = None
                e.slot = -1

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._entries

    def list(self) -> list[AdapterInfo]:
        with self._lock:
            return [self._info(e) for e in self._entries.values()]

    def pin(self, name: str, pinned: bool = True) -> None:
        with self._lock:
            e = self._get(name)
            if pinned:
                self._pin(e)
            else:
                e.pinned = False

    def _pin(self, e: _Entry) -> None:
        if not e.pinned and sum(x.pinned for x in self._entries.values()) >= self.num_slots - 1:
            raise ResourceExhausted(f"cannot pin {e.name!r}: pinning would leave no free device slot "
                                    f"({self.num_slots} slots)", hint="unpin another adapter or add slots")
        e.pinned = True
        if e.slot < 0 and not e.loading:
            self._request_load(e)

    def _get(self, name: str) -> _Entry:
        e = self._entries.get(name)
        if e is None:
            raise NotFound(f"adapter {name!r} is not loaded", hint="load it first (add_adapter / LoadAdapter)")
        return e

    def _info(self, e: _Entry) -> AdapterInfo:
        res = "device" if e.slot >= 0 and not e.loading else ("host" if e.host is not None else "disk")
        return AdapterInfo(e.name, e.path, e.rank, e.alpha, e.targets, res, e.pinned, e.size, e.slot, e.refcount)

    # ---- use by requests ----------------------------------------------------------------------
    def acquire(self, name: str) -> int | None:
        """Slot of ``name`` with its refcount raised, or None (a load is queued). Raises NotFound."""
        with self._lock:
            self._finish_events()
            e = self._get(name)
            if e.error is not None:
                raise FailedPrecondition(f"adapter {name!r} can no longer be loaded: {e.error}",
                                         hint="fix the files, then unload and load the adapter again")
            if e.slot >= 0 and not e.loading:
                e.refcount += 1
                e.fresh_until = 0.0
                self._lru.move_to_end(name)
                return e.slot
            if not e.loading:
                self._request_load(e)
            return None

    def release(self, name: str) -> None:
        with self._lock:
            e = self._entries.get(name)
            if e is not None and e.refcount > 0:
                e.refcount -= 1
                self._lock.notify_all()
                if e.refcount == 0:
                    self._queue.put(None)        # wake the loader: a slot may have become evictable

    def wait_change(self, timeout: float) -> None:
        with self._lock:
            self._finish_events()
            self._lock.wait(timeout)

    def close(self) -> None:
        """Stop the loader thread and wait for it: a daemon thread still inside torch while the
        interpreter shuts down can abort the process ("terminate called without an active
        exception")."""
        self._queue.put(StopIteration)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    # ---- loading ------------------------------------------------------------------------------
    def _request_load(self, e: _Entry) -> None:
        e.loading = True
        self._queue.put(e)

    def _pick_slot(self) -> int | None:
        for s, owner in enumerate(self._slot_owner):
            if owner is None:
                return s
        now = time.monotonic()
        for name in self._lru:                       # least recently used first
            v = self._entries[name]
            # a fresh load is kept until its waiting request took it (or a grace period passed),
            # so many adapters competing for few slots do not evict each other before any runs
            if not v.pinned and v.refcount == 0 and not v.loading and v.fresh_until <= now:
                return v.slot
        return None

    def _loader(self) -> None:
        if self.device.type == "cpu":
            cpu_ops.serial_torch_thread()      # no second OpenMP pool beside the serving thread's
        waiting: list[_Entry] = []
        while True:
            try:
                item = self._queue.get(timeout=0.02 if waiting else None)
            except queue.Empty:
                item = None
            if item is StopIteration:
                return
            if item is not None:
                waiting.append(item)
            still: list[_Entry] = []
            for e in waiting:
                if e.removed:
                    continue
                if not self._load_one(e):
                    still.append(e)
            waiting = still

    def _load_one(self, e: _Entry) -> bool:
        t0 = time.perf_counter()
        with self._lock:
            slot = self._pick_slot()
            if slot is None:
                return False                         # every slot busy: retry when one is released
            old = self._slot_owner[slot]
            if old is not None:
                victim = self._entries[old]
                victim.slot = -1
                self._lru.pop(old, None)
                self.metrics.adapter_evictions += 1
            self._slot_owner[slot] = e.name
            e.slot = slot
            host = e.host
        if host is None:
            try:
                host = load_adapter(e.name, e.path, self.cfg, max_rank=self.max_rank, dtype=self.dtype)
            except Exception as exc:  # the file changed on disk since it was validated
                with self._lock:
                    self._slot_owner[slot] = None
                    e.slot, e.loading, e.error = -1, False, str(exc)
                    self.metrics.adapter_load_failures += 1
                    self.metrics.log(f"adapter {e.name!r} reload failed: {exc}")
                    self._lock.notify_all()
                return True
        if self._stream is not None:
            with torch.cuda.stream(self._stream):
                self._copy(slot, host)
                ev = torch.cuda.Event()
                ev.record(self._stream)
            with self._lock:
                e.host = host
                self._touch_host(e)
                self._pending_events.append((e, ev, slot, t0))
                self._lock.notify_all()
            return True
        self._copy(slot, host)
        with self._lock:
            e.host = host
            self._touch_host(e)
            self._mark_ready(e, t0)
        return True

    def _finish_events(self) -> None:
        done = [p for p in self._pending_events if p[1].query()]
        for p in done:
            self._pending_events.remove(p)
            self._mark_ready(p[0], p[3])

    def _mark_ready(self, e: _Entry, t0: float) -> None:
        e.loading = False
        if e.removed:
            self._slot_owner[e.slot] = None
            e.slot = -1
        else:
            self._lru[e.name] = None
            self._lru.move_to_end(e.name)
            e.fresh_until = time.monotonic() + self.FRESH_GRACE_S
            self.metrics.observe_adapter_load(time.perf_counter() - t0)
        self._lock.notify_all()

    def _copy(self, slot: int, w: AdapterWeights) -> None:
        nb = self._stream is not None
        dims = module_dims(self.cfg)
        for n, layer in enumerate(self.layers):
            mods = w.layers[n]
            for proj, names in packed_modules(self.cfg).items():
                a, b = layer.a[proj][slot], layer.b[proj][slot]
                a.zero_()
                b.zero_()
                off = 0
                for j, m in enumerate(names):
                    fout = dims[m][1]
                    if m in mods:
                        wa, wb = mods[m]
                        r = wa.shape[0]
                        a[j, :r].copy_(wa, non_blocking=nb)
                        b[off:off + fout, :r].copy_(wb, non_blocking=nb)
                    off += fout
                if layer.bp is not None:
                    layer.bp[proj][slot].copy_(cpu_ops.lora_panels(b, self._slices[proj]))
        self.scales[slot] = w.scale

    def _touch_host(self, e: _Entry) -> None:
        self._host_lru[e.name] = None
        self._host_lru.move_to_end(e.name)
        while len(self._host_lru) > self.host_capacity:
            old, _ = self._host_lru.popitem(last=False)
            v = self._entries.get(old)
            if v is not None and not v.loading:
                v.host = None        # dropped from host memory; reloaded from disk when needed
