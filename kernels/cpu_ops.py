"""atoll's own fp32 CPU kernels for x86-64 with AVX-512F or AVX2 + FMA (``cpu_ops.c``), called
through ctypes: the decode path of the runtime's model step.

A small model's decode step on a CPU is short (tens of milliseconds for 30 layers), so it is
bound by how fast the weights stream from memory and by how many operator calls each layer
makes. The kernels (each written once in C against a 16-lane vector layer: one zmm register with
AVX-512F, two ymm registers with AVX2, the register tiles sized to each):

- :func:`linear` on a :class:`PanelWeight`: weights in panels of 32 output features
  (``[ceil(n/32), k, 32]``), so a one-row step reads each thread's share of a weight as one
  sequential stream (30-44 GB/s of weights on the 2-core VMs measured, where oneDNN's packed
  linear reads 20-37), and a many-row step keeps one panel in L2 while 8 rows at a time (AVX2:
  6 rows against each 16-column half) are multiplied against it; the passes over a panel that
  run from cache prefetch the next panel, so only a thread's first panel waits on memory. Bias and residual are added in
  the store.
- :class:`DecodeAttention`: each decode row attends over its own cache blocks in place, through
  its block table, where the torch path copies every request's blocks into one padded tensor per
  layer and then reads the copy (5-16x faster at 32 requests).
- :func:`rope_write` (RoPE on q and k, then the new K/V rows into the cache), :func:`silu_mul`
  (the gated activation) and :func:`rms_norm`: one call each where torch takes 2-8 operators.
- :class:`LoraStep`: the LoRA of a decode step's rows, each with its own adapter, one call per
  projection; rows sharing an adapter (up to 4) share each read of its weights.

``bench/cpu_ops_bench.py`` times each against the path it replaces.

The C source is compiled on first use with the system C compiler (``cc -O3 -march=native
-fopenmp``, about 0.3 s) into a per-user cache directory (``$ATOLL_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/atoll/kernels``, else ``~/.cache/atoll/kernels``), named by a hash of the
source, the flags, the compiler's version and this CPU's model and flags, so a cache shared by
different CPUs never loads a build made for another. The directory must belong to the user and
be writable by no one else; otherwise, or without a compiler or one of AVX-512F and AVX2 + FMA, or with
``ATOLL_CPU_OPS=0``, :func:`available` is False and the runtime keeps oneDNN's packed
weights and torch's operators. The library links the OpenMP runtime torch has already loaded (the same soname), so
the two share one thread pool setting: each call uses ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger("atoll.runtime")

SOURCE = Path(__file__).with_name("cpu_ops.c")
PANEL = 32
ABI = 1
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11")
ISAS = ("native", "avx2")


def requested_isa() -> str:
    """``ATOLL_CPU_OPS_ISA``: "native" (the default: AVX-512F where the CPU has it, else AVX2) or
    "avx2" (the AVX2 build even on an AVX-512 CPU, so that both can be tested on one machine)."""
    isa = os.environ.get("ATOLL_CPU_OPS_ISA", "native").strip().lower() or "native"
    if isa not in ISAS:
        raise RuntimeError(f"ATOLL_CPU_OPS_ISA={isa!r}: expected one of {', '.join(ISAS)}")
    return isa


def build_flags() -> tuple[str, ...]:
    return FLAGS + (("-mno-avx512f",) if requested_isa() == "avx2" else ())

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_why_not = ""


def cache_dir() -> Path:
    root = os.environ.get("ATOLL_KERNEL_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "atoll" / "kernels"


def _cpu_identity() -> str:
    """The CPU's model name and feature flags (Linux), so a build is never loaded on another CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(keep))           # the same lines repeat per core


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC ..."), for benchmark records; the machine type elsewhere."""
    for ln in _cpu_identity().splitlines():
        if ln.startswith("model name") and ":" in ln:
            return ln.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _private_dir(d: Path) -> str | None:
    """Create ``d`` (0700) if needed; the reason it cannot hold code we load, or None."""
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = d.stat()
    except OSError as exc:
        return f"cannot create {d}: {exc}"
    if st.st_uid != os.getuid():
        return f"{d} belongs to another user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{d} is writable by others"
    return None


def library_name(compiler_version: str) -> str:
    """The cached library's file name: a hash of the source, the flags, the compiler and this CPU."""
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(build_flags()).encode(), compiler_version.encode(),
                                     _cpu_identity().encode()])).hexdigest()[:24]
    return f"cpu_ops-{key}.so"


def _build() -> ctypes.CDLL:
    if platform.machine() not in ("x86_64", "AMD64"):
        raise RuntimeError(f"not an x86-64 CPU ({platform.machine()})")
    flags = set(_cpu_identity().split())
    avx512 = "avx512f" in flags and requested_isa() == "native"
    if not avx512 and not {"avx2", "fma"} <= flags:
        raise RuntimeError("this CPU has no AVX2 with FMA" + ("" if "avx512f" in flags else ", nor AVX-512F"))
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    d = cache_dir()
    problem = _private_dir(d)
    if problem:
        raise RuntimeError(problem)
    target = d / library_name(version)
    if not target.is_file():
        t0 = time.monotonic()
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=d)
        os.close(fd)
        try:
            r = subprocess.run([cc, *build_flags(), str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"{Path(cc).name} failed: {(r.stderr or r.stdout).strip()[-400:]}")
            os.replace(tmp, target)                 # atomic: a concurrent build loads either copy
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        log.info("built the CPU linear kernel in %.2f s: %s", time.monotonic() - t0, target)
    st = target.stat()
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RuntimeError(f"{target} belongs to another user or is writable by others")
    lib = ctypes.CDLL(str(target))
    if lib.atoll_linear_abi() != ABI:
        raise RuntimeError(f"{target} has ABI {lib.atoll_linear_abi()}, expected {ABI}")
    lib.atoll_isa.restype = ctypes.c_int
    lib.atoll_decode_attention.restype = None
    lib.atoll_decode_attention.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_float, ctypes.c_float, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    lib.atoll_rope_write.restype = None
    lib.atoll_rope_write.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_int]
    lib.atoll_silu_mul.restype = None
    lib.atoll_silu_mul.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                   ctypes.c_void_p, ctypes.c_int]
    lib.atoll_lora.restype = None
    lib.atoll_lora.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,  # y, x
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,  # a bt sc slots
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,                    # order, groups
                               ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,      # N, R, hin, hout
                               ctypes.c_void_p, ctypes.c_int]
    lib.atoll_rms_norm.restype = None
    lib.atoll_rms_norm.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    lib.atoll_linear.restype = None
    lib.atoll_linear.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    return lib


def library() -> ctypes.CDLL | None:
    """The built kernel, or None where it cannot serve (:func:`why_not` says why)."""
    global _lib, _tried, _why_not
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            if os.environ.get("ATOLL_CPU_OPS", "1").strip().lower() in ("0", "off", "false", "no"):
                _why_not = "turned off by ATOLL_CPU_OPS"
            else:
                try:
                    _lib = _build()
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    _why_not = str(exc)
                    log.warning("CPU linear kernel unavailable (%s); oneDNN's packed weights serve instead", exc)
            _tried = True
    return _lib


def available() -> bool:
    return library() is not None


def isa() -> str | None:
    """The vector instructions the loaded build uses ("avx512f" or "avx2"), or None."""
    lib = library()
    return None if lib is None else {2: "avx512f", 1: "avx2"}.get(lib.atoll_isa())


def why_not() -> str:
    library()
    return _why_not


def _openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime torch has loaded (GNU's libgomp in the PyPI wheels; LLVM's libomp or
    Intel's libiomp5 elsewhere), found among this process's mapped files."""
    names = ("libgomp", "libiomp5", "libomp.so", "libomp-")
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if "/" in ln and any(n in ln.rsplit("/", 1)[-1] for n in names)}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def serial_torch_thread() -> bool:
    """Make torch's CPU operators called from this thread run on it alone (OpenMP's thread count
    is a per-thread setting). For background threads that do tensor work beside the serving
    thread, such as the adapter loader: a parallel operator there starts a second OpenMP pool,
    libgomp then manages more threads than there are CPUs and stops letting idle workers spin,
    so every parallel region of the serving thread waits for a sleeping worker to wake (on a
    2-core host that made SmolLM2's batch-32 decode about a third slower after the first
    adapter loaded).
    False where no OpenMP runtime is loaded (nothing to do)."""
    torch.get_num_threads()         # torch's per-thread set-up first, or its first operator resets the count
    lib = _openmp_runtime()
    if lib is None:
        return False
    lib.omp_set_num_threads(1)
    return True


class PanelWeight:
    """A ``[out, in]`` fp32 CPU weight in panels of 32 output features (see the module
    docstring); :func:`linear` applies it. ``shape`` is the logical ``(out, in)``."""

    def __init__(self, w: torch.Tensor):
        if w.dim() != 2 or w.dtype != torch.float32 or w.device.type != "cpu":
            raise ValueError(f"a panel weight is a 2-D fp32 CPU tensor, not {tuple(w.shape)} {w.dtype} on {w.device}")
        n, k = w.shape
        np_ = -(-n // PANEL)
        padded = torch.zeros(np_ * PANEL, k, dtype=torch.float32)
        padded[:n] = w
        self.data = padded.view(np_, PANEL, k).transpose(1, 2).contiguous()    # [np, k, 32]
        self.shape = torch.Size((n, k))

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def element_size(self) -> int:
        return 4

    def unpack(self) -> torch.Tensor:
        """The plain ``[out, in]`` weight again."""
        return self.data.transpose(1, 2).reshape(-1, self.shape[1])[:self.shape[0]].clone()


def pack(w: torch.Tensor) -> PanelWeight:
    return PanelWeight(w.contiguous())


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a 2-D fp32 tensor whose rows are contiguous (a row stride is allowed)."""
    if t.device.type != "cpu":
        raise ValueError(f"linear: a panel weight takes CPU inputs, not {t.device}")
    if t.dim() != 2 or t.stride(1) != 1 or t.dtype != torch.float32:
        t = t.reshape(-1, t.shape[-1]).float().contiguous()
    return t


def linear(x: torch.Tensor, w: PanelWeight, bias: torch.Tensor | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T (+ bias) (+ residual)`` as a new ``[rows, out]`` fp32 tensor."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the CPU linear kernel is unavailable: {_why_not}")
    n, k = w.shape
    if x.shape[-1] != k:
        raise ValueError(f"linear: input has {x.shape[-1]} features, the weight takes {k}")
    x2 = _rows(x)
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=torch.float32)
    if m == 0:
        return y
    if bias is not None:
        bias = bias.float().contiguous()
        if bias.shape != (n,):
            raise ValueError(f"linear: bias of shape {tuple(bias.shape)}, expected ({n},)")
    if residual is not None:
        residual = _rows(residual)
        if residual.shape != (m, n):
            raise ValueError(f"linear: residual of shape {tuple(residual.shape)}, expected ({m}, {n})")
    lib.atoll_linear(x2.data_ptr(), x2.stride(0), w.data.data_ptr(),
                     bias.data_ptr() if bias is not None else None,
                     residual.data_ptr() if residual is not None else None,
                     residual.stride(0) if residual is not None else 0,
                     y.data_ptr(), n, m, n, k, torch.get_num_threads())
    return y


def rms_norm_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`rms_norm` takes these: fp32 CPU rows (2-D, last dim contiguous) and an fp32
    weight, with the kernel built."""
    return (x.dim() == 2 and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.device.type == "cpu" and x.stride(1) == 1 and weight.is_contiguous()
            and weight.shape == (x.shape[1],) and available())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight · (x / sqrt(mean(x²) + eps))`` per row, as a new tensor (see
    :func:`rms_norm_applies`). Within a few ulps of torch's (the mean is summed in another order)."""
    if not rms_norm_applies(x, weight):
        raise ValueError("rms_norm: needs 2-D fp32 CPU rows with a contiguous last dim, an fp32 weight "
                         "of that width, and the built kernel")
    m, n = x.shape
    y = torch.empty(m, n, dtype=torch.float32)
    if m:
        _lib.atoll_rms_norm(x.data_ptr(), x.stride(0), weight.data_ptr(), y.data_ptr(), n, m, n, float(eps),
                            torch.get_num_threads())
    return y


class DecodeAttention:
    """Attention of a step's decode rows (one new token per request) over the paged KV cache,
    read in place: prepared once per step from the requests' block tables and lengths (checked
    against the cache here, once, since the kernel indexes memory by them), then run per layer.

    ``table`` [B, NB] block ids, ``lens`` [B] tokens in each request's cache (the new one
    included), ``num_blocks`` / ``block_size`` of the cache."""

    def __init__(self, table: torch.Tensor, lens: torch.Tensor, *, num_blocks: int, block_size: int,
                 num_heads: int, num_kv_heads: int, head_dim: int):
        if not available():
            raise RuntimeError(f"the CPU kernels are unavailable: {_why_not}")
        self.table = table.to(torch.int64).contiguous()
        self.lens = lens.to(torch.int64).contiguous()
        b, nb = self.table.shape
        if self.lens.shape != (b,) or num_heads % num_kv_heads:
            raise ValueError(f"decode attention: table {tuple(self.table.shape)}, lens {tuple(self.lens.shape)}, "
                             f"{num_heads} heads over {num_kv_heads} kv heads")
        if b:
            lo, hi = int(self.lens.min()), int(self.lens.max())
            if lo < 1 or hi > nb * block_size:
                raise ValueError(f"decode attention: lengths {lo}..{hi} outside 1..{nb * block_size}")
            if int(self.table.min()) < 0 or int(self.table.max()) >= num_blocks:
                raise ValueError(f"decode attention: block ids outside 0..{num_blocks - 1}")
        self.max_len = int(self.lens.max()) if b else 0
        self.block_size, self.num_blocks = block_size, num_blocks
        self.nh, self.nkv, self.d = num_heads, num_kv_heads, head_dim
        self.threads = torch.get_num_threads()
        self.per_thread = (num_heads // num_kv_heads) * max(1, self.max_len)
        self.scratch = torch.empty(self.threads * self.per_thread, dtype=torch.float32)

    def __call__(self, q: torch.Tensor, cache: torch.Tensor, *, scale: float, softcap: float | None = None,
                 window: int | None = None) -> torch.Tensor:
        """``q``: [B, >= nh*d] fp32 rows (query heads first, last dim contiguous); ``cache``: one
        layer's [2, nkv, num_blocks*block_size, d] fp32. Returns [B, nh*d]."""
        b = self.table.shape[0]
        nh, nkv, d = self.nh, self.nkv, self.d
        rows = self.num_blocks * self.block_size
        if (q.dtype != torch.float32 or q.dim() != 2 or q.shape[0] != b or q.shape[1] < nh * d or q.stride(1) != 1
                or q.device.type != "cpu"):
            raise ValueError(f"decode attention: q must be [{b}, >= {nh * d}] fp32 CPU rows, not {tuple(q.shape)}")
        if cache.dtype != torch.float32 or tuple(cache.shape) != (2, nkv, rows, d) or not cache.is_contiguous():
            raise ValueError(f"decode attention: cache must be a contiguous fp32 [2, {nkv}, {rows}, {d}]")
        out = torch.empty(b, nh * d, dtype=torch.float32)
        if b:
            _lib.atoll_decode_attention(
                q.data_ptr(), q.stride(0), cache.data_ptr(), rows, self.table.data_ptr(), self.table.shape[1],
                self.lens.data_ptr(), self.block_size, b, nh, nkv, d, float(scale), float(softcap or 0.0),
                int(window or 0), out.data_ptr(), self.scratch.data_ptr(), self.per_thread, self.threads)
        return out


def rope_write(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: torch.Tensor,
               write_rows: torch.Tensor, *, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    """In place: RoPE on the q and k heads of ``qkv`` [T, >= (nh + 2·nkv)·d] (fp32 rows: q heads,
    k heads, v heads), rotating the first ``cos.shape[-1]`` dims of each head with the rows' tables
    ``cos`` / ``sin`` [T, rope_dim] (sin with its first half negated), then each row's k and v heads
    stored at cache row ``write_rows[t]`` of ``cache`` [2, nkv, rows, d]. ``write_rows`` (int64,
    contiguous) must lie in 0 … rows-1: the caller checks that once per step."""
    t = qkv.shape[0]
    nh, nkv, d = num_heads, num_kv_heads, head_dim
    rd = cos.shape[-1]
    if (qkv.dtype != torch.float32 or qkv.dim() != 2 or qkv.stride(1) != 1 or qkv.shape[1] < (nh + 2 * nkv) * d
            or rd % 2 or rd > d or tuple(cos.shape) != (t, rd) or cos.stride(1) != 1 or sin.stride() != cos.stride()
            or sin.shape != cos.shape or cos.dtype != torch.float32 or sin.dtype != torch.float32
            or cache.dtype != torch.float32 or not cache.is_contiguous() or cache.dim() != 4
            or tuple(cache.shape[:2]) != (2, nkv) or cache.shape[3] != d or write_rows.dtype != torch.int64
            or tuple(write_rows.shape) != (t,) or not write_rows.is_contiguous()):
        raise ValueError("rope_write: qkv [T, (nh+2nkv)*d] fp32 rows, cos/sin [T, rope_dim], a contiguous "
                         "fp32 cache [2, nkv, rows, d] and int64 write rows [T]")
    if t:
        _lib.atoll_rope_write(qkv.data_ptr(), qkv.stride(0), t, nh, nkv, d, rd, cos.data_ptr(), sin.data_ptr(),
                              cos.stride(0), cache.data_ptr(), cache.shape[2], write_rows.data_ptr(),
                              torch.get_num_threads())


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) · up`` for fp32 rows ``[gate | up]`` [T, 2n], as a new [T, n] tensor."""
    if gate_up.dtype != torch.float32 or gate_up.dim() != 2 or gate_up.stride(1) != 1 or gate_up.shape[1] % 2:
        raise ValueError("silu_mul: needs fp32 rows [T, 2n] with a contiguous last dim")
    m, n = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(m, n, dtype=torch.float32)
    if m:
        _lib.atoll_silu_mul(gate_up.data_ptr(), gate_up.stride(0), m, n, out.data_ptr(), torch.get_num_threads())
    return out


LORA_MAX_RANK = 512
LORA_MAX_ROWS = 128


def lora_panel_count(slice_offsets: tuple[int, ...]) -> int:
    """Panels of 16 output columns that b takes in :class:`LoraStep`'s layout: each slice of
    ``slice_offsets`` (the N + 1 bounds of the slices in H_out) rounded up to whole panels."""
    return sum(-(-(hi - lo) // 16) for lo, hi in zip(slice_offsets, slice_offsets[1:]))


def lora_panels(b: torch.Tensor, slice_offsets: tuple[int, ...]) -> torch.Tensor:
    """b [..., H_out, R] (peft's lora_B, slices stacked along H_out) in :class:`LoraStep`'s
    layout: [..., P, R, 16], P = :func:`lora_panel_count`, each slice in its own panels (zero past
    its width), a panel's R × 16 weights contiguous."""
    *lead, hout, r = b.shape
    if slice_offsets[0] != 0 or slice_offsets[-1] != hout:
        raise ValueError(f"lora: slice bounds {list(slice_offsets)} do not split 0..{hout}")
    out = b.new_zeros(*lead, lora_panel_count(slice_offsets) * 16, r)
    p = 0
    for lo, hi in zip(slice_offsets, slice_offsets[1:]):
        out[..., p:p + hi - lo, :] = b[..., lo:hi, :]
        p += -(-(hi - lo) // 16) * 16
    return out.unflatten(-2, (-1, 16)).transpose(-1, -2).contiguous()


class LoraStep:
    """The LoRA of a decode step's rows, each with its own adapter slot, one call per projection
    (in place on the projection's output). Prepared once per step: ``slots`` [T] (-1: no
    adapter) checked against the ``num_slots`` stacked slots here, once, since the kernel indexes
    memory by them. Serves fp32 CPU steps of at most ``LORA_MAX_ROWS`` rows (longer runs of one
    adapter are GEMMs, faster in torch) and ranks up to ``LORA_MAX_RANK``: :meth:`serves`."""

    @staticmethod
    def serves(rows: int, dtype: torch.dtype, device: torch.device, rank: int) -> bool:
        return (rows <= LORA_MAX_ROWS and dtype == torch.float32 and torch.device(device).type == "cpu"
                and rank <= LORA_MAX_RANK and available())

    def __init__(self, slots: torch.Tensor, num_slots: int):
        if not available():
            raise RuntimeError(f"the CPU kernels are unavailable: {_why_not}")
        self.slots = slots.to(torch.int32).contiguous()
        if self.slots.dim() != 1:
            raise ValueError(f"lora: slots must be [T], not {tuple(self.slots.shape)}")
        if self.slots.numel():
            lo, hi = int(self.slots.min()), int(self.slots.max())
            if lo < -1 or hi >= num_slots:
                raise ValueError(f"lora: slots {lo}..{hi} outside -1..{num_slots - 1}")
        self.num_slots = num_slots
        # rows grouped by adapter, in groups of at most 4 rows that share one (the kernel's unit)
        self.order = torch.argsort(self.slots, stable=True).to(torch.int64)
        starts, prev, run = [], None, 0
        for k, slot in enumerate(self.slots[self.order].tolist()):
            if slot != prev or run == 4:
                starts.append(k)
                prev, run = slot, 0
            run += 1
        self.group_starts = torch.tensor(starts + [self.slots.numel()], dtype=torch.int64)
        self._offsets: dict[tuple[int, ...], tuple[torch.Tensor, int]] = {}

    def __call__(self, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, bp: torch.Tensor, scales: torch.Tensor,
                 slice_offsets: tuple[int, ...]) -> torch.Tensor:
        """``y[t, slice n] += scales[s] · (x[t] · a[s, n]ᵀ) · b[s, slice n]ᵀ`` for each row whose slot
        ``s`` is not -1; the shapes of :mod:`atoll.kernels.lora` (``a`` [S, N, R, H_in],
        ``slice_offsets`` the N + 1 bounds of the slices in H_out) but for ``bp``: b in panels of 16
        output columns, [S, P, R, 16] (:func:`lora_panels`)."""
        b = bp
        t, hin = x.shape
        s_, n, r, _ = a.shape
        hout = y.shape[1]
        known = self._offsets.get(slice_offsets)
        if known is None:
            o = [int(v) for v in slice_offsets]
            if len(o) != n + 1 or o[0] != 0 or o[-1] != hout or any(p > q for p, q in zip(o, o[1:])):
                raise ValueError(f"lora: slice bounds {o} do not split 0..{hout} into {n} slices")
            known = self._offsets[slice_offsets] = (torch.tensor(o, dtype=torch.int64), lora_panel_count(tuple(o)))
        offs, panels = known
        if (t != self.slots.shape[0] or y.shape[0] != t or s_ != self.num_slots or x.stride(1) != 1
                or y.stride(1) != 1 or a.shape[3] != hin or tuple(b.shape) != (s_, panels, r, 16) or r > LORA_MAX_RANK
                or not (a.is_contiguous() and b.is_contiguous() and scales.is_contiguous())
                or not (x.dtype == y.dtype == a.dtype == b.dtype == scales.dtype == torch.float32)
                or scales.shape != (s_,) or x.device.type != "cpu"):
            raise ValueError(f"lora: fp32 CPU rows x [{self.slots.shape[0]}, H_in] and y [.., H_out], contiguous "
                             f"a [{self.num_slots}, N, R, H_in], b's panels [{self.num_slots}, {panels}, R, 16], scales "
                             f"[{self.num_slots}]")
        if t:
            _lib.atoll_lora(y.data_ptr(), y.stride(0), x.data_ptr(), x.stride(0), a.data_ptr(), b.data_ptr(),
                            scales.data_ptr(), self.slots.data_ptr(), self.order.data_ptr(),
                            self.group_starts.data_ptr(), self.group_starts.numel() - 1, n, r, hin, hout,
                            offs.data_ptr(),
                            torch.get_num_threads())
        return y
