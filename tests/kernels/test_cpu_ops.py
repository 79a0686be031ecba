"""atoll's CPU operators (atoll.kernels.cpu_ops) against fp64 formulas, and the rules of
their build: where the library may live, which CPU a build is for, how it is turned off.

The kernel tests need an x86-64 CPU with AVX-512F or AVX2 + FMA and a C compiler (they run with
whichever vector layer this CPU builds: AVX-512F where it has it, else AVX2);
elsewhere they are skipped with the reason the kernel gave, and the runtime serves oneDNN's
layout instead (tests/runtime/test_reference.py checks whichever layout is taken)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch

from atoll.kernels import cpu_ops

needs_kernel = pytest.mark.skipif(not cpu_ops.available(), reason=f"no CPU kernel here: {cpu_ops.why_not()}")

# rows 0-9 cross every tile height (AVX-512: 1, 2-7, 8; AVX2: 1, 2-5, 6); 47-49, 63-65 and 130
# cross the row chunks (64 rows; AVX2 48); columns cross the 32-wide panels and their 16-lane
# halves; k = 1, 3, 5 run the single-row kernel's tail
SHAPES = [(m, n, k) for m in (0, 1, 2, 3, 5, 7, 8, 9, 47, 48, 49, 63, 64, 65, 130)
          for n, k in ((1, 1), (7, 5), (16, 3), (17, 33), (31, 64), (32, 576), (33, 17), (100, 130))]


def _ref(x, w, bias=None, res=None):
    y = x.double() @ w.double().T
    if bias is not None:
        y += bias.double()
    if res is not None:
        y += res.double()
    return y


@needs_kernel
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_linear_matches_fp64(m, n, k):
    g = torch.Generator().manual_seed(m * 10007 + n * 101 + k)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    bias, res = torch.randn(n, generator=g), torch.randn(m, n, generator=g)
    pw = cpu_ops.pack(w)
    assert pw.shape == (n, k) and torch.equal(pw.unpack(), w)
    tol = 1e-5 * (k ** 0.5) * 4
    for b, r in ((None, None), (bias, None), (None, res), (bias, res)):
        y = cpu_ops.linear(x, pw, b, r)
        assert y.shape == (m, n) and y.dtype == torch.float32
        assert (y.double() - _ref(x, w, b, r)).abs().max().item() <= tol if m else True


@needs_kernel
def test_linear_takes_strided_rows_and_leaves_inputs_alone():
    g = torch.Generator().manual_seed(3)
    big = torch.randn(9, 40, generator=g)
    x = big[:, 4:29]                                  # row stride 40, 25 features
    w = torch.randn(37, 25, generator=g)
    res_big = torch.randn(9, 50, generator=g)
    res = res_big[:, 3:40]
    before = (big.clone(), res_big.clone())
    y = cpu_ops.linear(x, cpu_ops.pack(w), None, res)
    assert (y.double() - _ref(x, w, None, res)).abs().max().item() < 1e-4
    assert torch.equal(big, before[0]) and torch.equal(res_big, before[1])
    # rows summed in the kernel's order: the residual is added last, so linear + add has the same bits
    assert torch.equal(y, cpu_ops.linear(x, cpu_ops.pack(w)) + res)


@needs_kernel
def test_linear_refuses_what_it_cannot_take():
    pw = cpu_ops.pack(torch.randn(8, 4))
    with pytest.raises(ValueError, match="input has 5 features"):
        cpu_ops.linear(torch.randn(2, 5), pw)
    with pytest.raises(ValueError, match="bias of shape"):
        cpu_ops.linear(torch.randn(2, 4), pw, torch.randn(7))
    with pytest.raises(ValueError, match="residual of shape"):
        cpu_ops.linear(torch.randn(2, 4), pw, None, torch.randn(3, 8))
    with pytest.raises(ValueError, match="2-D fp32 CPU tensor"):
        cpu_ops.pack(torch.randn(8, 4, dtype=torch.float64))


@needs_kernel
@pytest.mark.parametrize("m,n", [(1, 576), (2, 17), (3, 16), (9, 100), (64, 64), (130, 33)])
def test_rms_norm_matches_fp64_and_torch(m, n):
    g = torch.Generator().manual_seed(m + n)
    x, w = torch.randn(m, n, generator=g) * 3, torch.randn(n, generator=g)
    xd = x.double()
    want = w.double() * (xd / torch.sqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5))
    got = cpu_ops.rms_norm(x, w, 1e-5)
    assert (got.double() - want).abs().max().item() < 1e-5 * want.abs().max().item()
    assert torch.allclose(got, torch.nn.functional.rms_norm(x, (n,), w, 1e-5), rtol=1e-5, atol=1e-6)
    assert cpu_ops.rms_norm_applies(x, w)
    assert not cpu_ops.rms_norm_applies(x.double(), w) and not cpu_ops.rms_norm_applies(x[:, ::2], w[: (n + 1) // 2])


def test_cache_directory_must_be_private(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert "writable by others" in cpu_ops._private_dir(shared)
    own = tmp_path / "own" / "kernels"
    assert cpu_ops._private_dir(own) is None
    assert stat.S_IMODE(own.stat().st_mode) & 0o077 == 0


def test_library_name_names_the_source_compiler_and_cpu(monkeypatch):
    name = cpu_ops.library_name("cc 1.0")
    assert name == cpu_ops.library_name("cc 1.0") and name != cpu_ops.library_name("cc 1.1")
    monkeypatch.setattr(cpu_ops, "_cpu_identity", lambda: "model name: another CPU\nflags: fpu sse2")
    assert cpu_ops.library_name("cc 1.0") != name


def _in_child(code: str, **env) -> str:
    full = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_build_uses_the_widest_vector_layer_this_cpu_has():
    flags = set(cpu_ops._cpu_identity().split())
    if not cpu_ops.available():
        pytest.skip(f"no CPU kernel here: {cpu_ops.why_not()}")
    forced = cpu_ops.requested_isa() == "avx2"
    assert cpu_ops.isa() == ("avx512f" if "avx512f" in flags and not forced else "avx2")


def test_an_unknown_isa_request_is_refused_with_the_choices():
    code = "from atoll.kernels import cpu_ops\nprint(cpu_ops.available(), cpu_ops.why_not(), sep='|')"
    got = _in_child(code, ATOLL_CPU_OPS_ISA="sse2").split("|")
    assert got[0] == "False" and "ATOLL_CPU_OPS_ISA='sse2'" in got[1] and "native, avx2" in got[1]


@needs_kernel
def test_the_avx2_build_passes_these_tests_on_an_avx512_cpu(tmp_path):
    """On a CPU with AVX-512F the tests above ran the AVX-512 build; this runs them again on the
    AVX2 build (ATOLL_CPU_OPS_ISA=avx2), so one machine checks both vector layers."""
    if cpu_ops.isa() != "avx512f":
        pytest.skip(f"the native build here is already {cpu_ops.isa()}: the tests above ran it")
    env = {**os.environ, "ATOLL_CPU_OPS_ISA": "avx2", "ATOLL_KERNEL_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "not avx2_build and not cached_per_cpu"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout
    assert _in_child("from atoll.kernels import cpu_ops\nprint(cpu_ops.isa())", ATOLL_CPU_OPS_ISA="avx2",
                     ATOLL_KERNEL_CACHE=str(tmp_path / "cache")) == "avx2"


def test_turned_off_by_the_environment_and_the_runtime_falls_back():
    code = ("import torch\nfrom atoll.kernels import cpu_ops\nfrom atoll.agent.runtime.weights import pack, layout_of\n"
            "print(cpu_ops.available(), cpu_ops.why_not(), layout_of(pack(torch.randn(4, 4))), sep='|')")
    got = _in_child(code, ATOLL_CPU_OPS="0").split("|")
    assert got[0] == "False" and "ATOLL_CPU_OPS" in got[1] and got[2] == "onednn"


@needs_kernel
def test_build_is_cached_per_cpu_and_refused_in_a_shared_directory(tmp_path):
    code = "from atoll.kernels import cpu_ops\nprint(cpu_ops.available(), cpu_ops.why_not(), sep='|')"
    cache = tmp_path / "cache"
    assert _in_child(code, ATOLL_KERNEL_CACHE=str(cache)) == "True|"
    built = sorted(p.name for p in cache.iterdir())
    assert len(built) == 1 and built[0].startswith("cpu_ops-") and built[0].endswith(".so")
    # a second process loads the same file
    assert _in_child(code, ATOLL_KERNEL_CACHE=str(cache)) == "True|"
    assert sorted(p.name for p in cache.iterdir()) == built
    (cache / built[0]).chmod(0o777)                 # a library others could have replaced
    got = _in_child(code, ATOLL_KERNEL_CACHE=str(cache)).split("|")
    assert got[0] == "False" and "writable by others" in got[1]
    (cache / built[0]).chmod(0o700)
    cache.chmod(0o777)
    got = _in_child(code, ATOLL_KERNEL_CACHE=str(cache)).split("|")
    assert got[0] == "False" and "writable by others" in got[1]


def _attention_ref(q, cache, table, lens, bs, nh, nkv, d, scale, cap, window):
    """fp64, request by request: gather the request's rows through its block table, mask, softmax."""
    out = torch.zeros(len(lens), nh * d, dtype=torch.float64)
    g = nh // nkv
    for b, n in enumerate(lens.tolist()):
        pos = torch.arange(n)
        rows = table[b, pos // bs] * bs + pos % bs
        k, v = cache[0][:, rows].double(), cache[1][:, rows].double()          # [nkv, n, d]
        for h in range(nh):
            s = scale * (k[h // g] @ q[b, h * d:(h + 1) * d].double())
            if cap:
                s = cap * torch.tanh(s / cap)
            if window:
                s[pos <= n - 1 - window] = float("-inf")
            out[b, h * d:(h + 1) * d] = torch.softmax(s, 0) @ v[h // g]
    return out


@needs_kernel
@pytest.mark.parametrize("nh,nkv,d,bs,cap,window", [
    (9, 3, 64, 16, None, None), (4, 4, 24, 4, None, None), (8, 2, 80, 16, 50.0, None),
    (6, 1, 16, 8, None, 5), (4, 2, 32, 16, 30.0, 40), (2, 2, 130, 1, None, None)])
def test_decode_attention_matches_fp64(nh, nkv, d, bs, cap, window):
    g = torch.Generator().manual_seed(nh * 1000 + d + bs)
    lens = torch.tensor([1, bs, bs + 1, 3 * bs - 1, 50, 97])
    nbmax = -(-int(lens.max()) // bs)
    num_blocks = len(lens) * nbmax + 5
    cache = torch.randn(2, nkv, num_blocks * bs, d, generator=g)
    perm = torch.randperm(num_blocks, generator=g)                # scattered, non-overlapping blocks
    table = perm[: len(lens) * nbmax].view(len(lens), nbmax)
    width = nh * d + 2 * nkv * d                                    # rows as the runtime's qkv output
    qkv = torch.randn(len(lens), width, generator=g) * 2
    scale = d ** -0.5
    attn = cpu_ops.DecodeAttention(table, lens, num_blocks=num_blocks, block_size=bs, num_heads=nh,
                                   num_kv_heads=nkv, head_dim=d)
    got = attn(qkv, cache, scale=scale, softcap=cap, window=window)
    want = _attention_ref(qkv, cache, table, lens, bs, nh, nkv, d, scale, cap, window)
    assert got.shape == (len(lens), nh * d)
    assert (got.double() - want).abs().max().item() < 2e-5


@needs_kernel
def test_decode_attention_refuses_tables_outside_the_cache():
    kw = dict(num_blocks=4, block_size=4, num_heads=2, num_kv_heads=1, head_dim=8)
    with pytest.raises(ValueError, match="block ids outside"):
        cpu_ops.DecodeAttention(torch.tensor([[0, 4]]), torch.tensor([5]), **kw)
    with pytest.raises(ValueError, match="lengths"):
        cpu_ops.DecodeAttention(torch.tensor([[0, 1]]), torch.tensor([9]), **kw)
    with pytest.raises(ValueError, match="lengths"):
        cpu_ops.DecodeAttention(torch.tensor([[0, 1]]), torch.tensor([0]), **kw)
    attn = cpu_ops.DecodeAttention(torch.tensor([[0, 1]]), torch.tensor([5]), **kw)
    with pytest.raises(ValueError, match="cache must be"):
        attn(torch.randn(1, 16), torch.randn(2, 1, 15, 8), scale=1.0)
    with pytest.raises(ValueError, match="q must be"):
        attn(torch.randn(2, 16), torch.randn(2, 1, 16, 8), scale=1.0)


@needs_kernel
@pytest.mark.parametrize("t,nh,nkv,d,rd", [(1, 9, 3, 64, 64), (5, 4, 2, 24, 24), (9, 6, 1, 80, 32),
                                           (3, 2, 2, 130, 130)])
def test_rope_write_matches_the_torch_path(t, nh, nkv, d, rd):
    g = torch.Generator().manual_seed(t * 31 + d)
    width = (nh + 2 * nkv) * d
    qkv = torch.randn(t, width + 3, generator=g)[:, :width]          # rows with a stride, as views are
    pos = torch.randint(0, 500, (t,), generator=g).double()
    freqs = pos[:, None] * (10000.0 ** (-torch.arange(0, rd, 2).double() / rd))[None, :]
    cos = torch.cat([freqs, freqs], -1).cos().float()
    sin = torch.cat([-freqs.sin(), freqs.sin()], -1).float()
    rows = 40
    cache = torch.randn(2, nkv, rows, d, generator=g)
    write = torch.randperm(rows, generator=g)[:t]
    want_qkv = qkv.double().clone().view(t, nh + 2 * nkv, d)
    x = want_qkv[:, : nh + nkv, :rd]
    h = rd // 2
    x.copy_(x * cos.double()[:, None] + torch.cat([x[..., h:], x[..., :h]], -1) * sin.double()[:, None])
    want_cache = cache.double().clone()
    want_cache[:, :, write] = want_qkv[:, nh:].reshape(t, 2, nkv, d).permute(1, 2, 0, 3)
    cpu_ops.rope_write(qkv, cos, sin, cache, write, num_heads=nh, num_kv_heads=nkv, head_dim=d)
    assert (qkv.double() - want_qkv.view(t, width)).abs().max().item() < 1e-5
    assert (cache.double() - want_cache).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="rope_write"):
        cpu_ops.rope_write(qkv, cos, sin, cache, write.int(), num_heads=nh, num_kv_heads=nkv, head_dim=d)


@needs_kernel
@pytest.mark.parametrize("m,n", [(1, 1536), (3, 17), (8, 100), (33, 64)])
def test_silu_mul_matches_fp64(m, n):
    g = torch.Generator().manual_seed(m + n)
    gu = torch.randn(m, 2 * n, generator=g) * 6
    gu[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -30.0])           # the far tails of exp
    want = torch.nn.functional.silu(gu[:, :n].double()) * gu[:, n:].double()
    got = cpu_ops.silu_mul(gu)
    assert (got.double() - want).abs().max().item() < 1e-5 * max(1.0, want.abs().max().item())
    assert torch.isfinite(got).all()


@needs_kernel
@pytest.mark.parametrize("slots,r,widths,hin", [
    ([0, 1, 2, 3, 0, 1, 2, 3], 16, (576, 192, 192), 576),          # decode rows, 4 adapters (qkv-like)
    ([2, 2, 2, 2, 2, 2, -1, 0], 5, (37,), 33),                      # a run of 6 (two groups), a bare row
    ([-1, -1], 8, (20, 12), 16),                                    # no adapter at all: y untouched
    ([1, 0, 1, 0, 1], 20, (100, 3), 70),                            # ranks and slices off the 4/16 grid
])
def test_lora_step_matches_fp64(slots, r, widths, hin):
    g = torch.Generator().manual_seed(len(slots) * 7 + r)
    s_ = 4
    t = len(slots)
    offs = (0,)
    for w_ in widths:
        offs += (offs[-1] + w_,)
    hout = offs[-1]
    a = torch.randn(s_, len(widths), r, hin, generator=g)
    b = torch.randn(s_, hout, r, generator=g)
    scales = torch.tensor([0.5, 2.0, -1.5, 0.75])
    x = torch.randn(t, hin, generator=g)
    y0 = torch.randn(t, hout, generator=g)
    want = y0.double().clone()
    for row, s in enumerate(slots):
        if s < 0:
            continue
        for n in range(len(widths)):
            h = a[s, n].double() @ x[row].double()
            want[row, offs[n]:offs[n + 1]] += scales[s].double() * (b[s, offs[n]:offs[n + 1]].double() @ h)
    y = y0.clone()
    step = cpu_ops.LoraStep(torch.tensor(slots), s_)
    step(y, x, a, cpu_ops.lora_panels(b, offs), scales, offs)
    assert (y.double() - want).abs().max().item() < 1e-4 * max(1.0, want.abs().max().item())
    bare = [i for i, s in enumerate(slots) if s < 0]
    assert torch.equal(y[bare], y0[bare])


def test_lora_panels_put_each_slice_in_its_own_zero_padded_panels():
    b = torch.arange(2 * 21 * 3, dtype=torch.float32).view(2, 21, 3)       # [S, H_out, R], slices 17 + 4
    p = cpu_ops.lora_panels(b, (0, 17, 21))
    assert cpu_ops.lora_panel_count((0, 17, 21)) == 3 and p.shape == (2, 3, 3, 16)
    assert torch.equal(p[:, 0], b[:, :16].transpose(1, 2))                  # panel 0: columns 0..15
    assert torch.equal(p[:, 1, :, 0], b[:, 16]) and not p[:, 1, :, 1:].any()   # column 16, then zeros
    assert torch.equal(p[:, 2, :, :4], b[:, 17:].transpose(1, 2)) and not p[:, 2, :, 4:].any()
    with pytest.raises(ValueError, match="do not split"):
        cpu_ops.lora_panels(b, (0, 20))


@needs_kernel
def test_lora_step_refuses_slots_and_shapes_it_cannot_take():
    with pytest.raises(ValueError, match="slots 0..3 outside -1..2"):
        cpu_ops.LoraStep(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="outside"):
        cpu_ops.LoraStep(torch.tensor([-2, 0]), 3)
    step = cpu_ops.LoraStep(torch.tensor([0, 1]), 3)
    a, bp = torch.randn(3, 1, 4, 8), torch.randn(3, 1, 4, 16)
    with pytest.raises(ValueError, match="slice bounds"):
        step(torch.randn(2, 6), torch.randn(2, 8), a, bp, torch.ones(3), (0, 5))
    with pytest.raises(ValueError, match="b's panels \\[3, 1, R, 16\\]"):       # b unpanelled: refused
        step(torch.randn(2, 6), torch.randn(2, 8), a, torch.randn(3, 4, 6), torch.ones(3), (0, 6))
    with pytest.raises(ValueError, match="b's panels \\[3, 2, R, 16\\]"):       # two slices: two panels
        step(torch.randn(2, 6), torch.randn(2, 8), torch.randn(3, 2, 4, 8), bp, torch.ones(3), (0, 3, 6))
    assert cpu_ops.LoraStep.serves(128, torch.float32, "cpu", 16)
    assert not cpu_ops.LoraStep.serves(129, torch.float32, "cpu", 16)
    assert not cpu_ops.LoraStep.serves(8, torch.float16, "cpu", 16)


_POOL_CHILD = """
import os, threading, torch
from atoll.kernels import cpu_ops
torch.set_num_threads(2)
x = torch.zeros(4_000_000)
x.add_(1)                                  # the main thread's pool exists from here on
def tids():                                 # the threads alive now (new ones counted by id: a thread
    return set(os.listdir("/proc/self/task"))  # that ends meanwhile must not cancel one that starts)
def helper(serial, out):
    if serial:
        out.append(cpu_ops.serial_torch_thread())
    before = tids()
    torch.zeros(4_000_000).add_(1)         # a parallel operator (when this thread may run one)
    out.append(len(tids() - before))
for serial in (True, False):
    out = []
    t = threading.Thread(target=helper, args=(serial, out))
    t.start(); t.join()
    print(serial, out[-1], out[0] if serial else "")
"""


def test_a_serial_helper_thread_starts_no_second_openmp_pool():
    """A parallel operator on a second thread starts a second OpenMP pool (libgomp then counts
    more threads than CPUs and stops letting idle workers spin); after serial_torch_thread it
    runs on the thread alone. The control (no call) shows the check can fail."""
    lines = _in_child(_POOL_CHILD).splitlines()
    serial, plain = (ln.split() for ln in lines)
    assert plain[0] == "False" and int(plain[1]) >= 1, lines     # the control: a new pool thread
    assert serial[0] == "True" and serial[1] == "0" and serial[2] == "True", lines
