"""The torch reference against a per-row formula, the fast torch path against the reference,
the launchers' argument errors, and the dispatch rule. No Triton launches here (see
test_lora_triton.py), so this file is quick."""

from __future__ import annotations

import re

import pytest
import torch

from atoll.kernels.lora import lora_apply, lora_expand, lora_shrink
from atoll.kernels import triton_lora
from atoll.kernels.checks import LoraArgumentError
from atoll.kernels.lora import LoraMeta, expand_ref, shrink_ref
from atoll.kernels.torch_lora import DEFAULT_POLICY, HAS_GROUPED_MM, TorchLoraPlan, TorchLoraPolicy
from lora_cases import POPULARITIES, assert_close, is_close, make_case


def per_row(c):
    """Independent formula: y[t] + scale * (x[t] @ A[slot].T) @ B[slot].T, row by row, fp64."""
    y = c.y0.double().clone()
    for t, s in enumerate(c.slots.tolist()):
        if s < 0:
            continue
        for n, (lo, hi) in enumerate(zip(c.offsets, c.offsets[1:])):
            hn = c.a[s, n].double() @ c.x[t].double()
            y[t, lo:hi] += c.scales[s].double() * (c.b[s, lo:hi].double() @ hn)
    return y


@pytest.mark.parametrize("popularity", POPULARITIES + ("all_none",))
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_reference_matches_per_row_formula(popularity, phase):
    c = make_case(popularity, phase)
    y = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="ref")
    assert_close(y, per_row(c), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["single", "gate_up", "qkv"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
@pytest.mark.parametrize("popularity", POPULARITIES + ("all_none",))
def test_fast_torch_matches_reference(popularity, phase, layout, dtype):
    n_req = 19 if phase == "decode" else 7    # decode: enough distinct slots for the gather path
    c = make_case(popularity, phase, dtype, layout, n_req=n_req, seed=3)
    h_ref = shrink_ref(c.x, c.a, c.meta)
    h = lora_shrink(c.x, c.a, c.meta, backend="torch")
    assert h.dtype == torch.float32 and h.shape == h_ref.shape and h.is_contiguous()
    assert_close(h, h_ref, torch.float32)
    y_ref = expand_ref(c.y0.clone(), h_ref, c.b, c.scales, c.meta, c.offsets)
    y = c.y0.clone()
    out = lora_expand(y, h_ref, c.b, c.scales, c.meta, c.offsets, backend="torch")
    assert out is y                                            # in place
    assert_close(y, y_ref, dtype)
    bare = c.slots < 0
    assert torch.equal(y[bare], c.y0[bare]) and not h[:, bare].any()


@pytest.mark.parametrize("popularity,phase,plan", [
    ("distinct", "decode", "gather"), ("uniform", "decode", "groups"),
    ("distinct", "prefill", "runs"), ("identical", "prefill", "single"),
])
def test_fast_torch_paths_all_taken(popularity, phase, plan):
    """Each batching plan of the torch backend is taken and agrees with the reference; the
    gather chunking is exercised by shrinking gather_bytes."""
    policy = TorchLoraPolicy(sorted=False, gather_bytes=4096)
    c = make_case(popularity, phase, n_req=23, seed=5)
    step = TorchLoraPlan(c.meta, policy)
    assert step.rows(1024)[0] == plan
    y = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="torch", plan=step)
    y_ref = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="ref")
    assert_close(y, y_ref, torch.float32)


@pytest.mark.parametrize("mode", ["padded", "grouped", "per_slot"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
@pytest.mark.parametrize("popularity", POPULARITIES)
def test_sorted_paths_match_reference(popularity, phase, mode):
    """fp32 on the CPU with two or more slots in the batch: the sorted plan is taken, in each of
    its three forms (padded bmm, grouped GEMM, a matmul per slot), and agrees with the
    segment-loop reference; rows without an adapter are untouched."""
    if mode == "grouped" and not HAS_GROUPED_MM:
        pytest.skip("this torch has no torch._grouped_mm")
    policy = TorchLoraPolicy(padded_max_waste=1e9 if mode == "padded" else 0.0, grouped=mode == "grouped")
    h_in = 128 if mode == "grouped" else 129      # the grouped GEMM needs 16-byte strides
    c = make_case(popularity, phase, layout="qkv_aligned", h_in=h_in, n_req=13, seed=11)
    n_slots = len({int(s) for s in c.slots if s >= 0})
    step = TorchLoraPlan(c.meta, policy)
    plan = step.rows(1, policy.sorted_for(c.x, c.a))
    assert plan[0] == ("sorted" if n_slots >= 2 else "single")
    h = lora_shrink(c.x, c.a, c.meta, backend="torch", plan=step)
    h_ref = shrink_ref(c.x, c.a, c.meta)
    assert_close(h, h_ref, torch.float32)
    y = lora_expand(c.y0.clone(), h_ref, c.b, c.scales, c.meta, c.offsets, backend="torch", plan=step)
    y_ref = expand_ref(c.y0.clone(), h_ref, c.b, c.scales, c.meta, c.offsets)
    assert_close(y, y_ref, torch.float32)
    bare = c.slots < 0
    assert torch.equal(y[bare], c.y0[bare])
    if n_slots >= 2:
        aligned = policy.grouped_for(c.x, c.a, h_in, 3 * 8)
        assert aligned == (mode == "grouped")
        assert step.layout(plan, c.a.shape[0], aligned)[0] == ("padded" if mode == "padded" else "grouped")


@pytest.mark.parametrize("runs", [False, True])
@pytest.mark.parametrize("layout", ["single", "gate_up", "qkv"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
@pytest.mark.parametrize("popularity", POPULARITIES)
def test_fused_apply_matches_reference(popularity, phase, layout, runs):
    """lora_apply on the torch backend (fp32, CPU, two or more slots) either runs a GEMM pair
    per run of rows (when each slot's rows form one run, long enough: ``runs``) or keeps padded
    rows padded between shrink and expand: same result as the reference, bare rows untouched,
    whether every row has an adapter (one gather-add) or not (indexed add)."""
    policy = TorchLoraPolicy(padded_max_waste=1e9, run_min_rows=1 if runs else 10**9)
    c = make_case(popularity, phase, layout=layout, n_req=13, seed=17)
    step = TorchLoraPlan(c.meta, policy)
    y = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="torch", plan=step)
    y_ref = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="ref")
    assert_close(y, y_ref, torch.float32)
    bare = c.slots < 0
    assert torch.equal(y[bare], c.y0[bare])
    plan = step.rows(1, True)
    n_slots = len({int(s) for s in c.slots if s >= 0})
    seg_slots = [int(s) for s in c.meta.seg_slots if s >= 0]
    took_runs = plan[0] == "sorted" and plan[3]["long_runs"] is not None
    assert took_runs == (runs and n_slots >= 2 and len(seg_slots) == len(set(seg_slots)))
    fused = any(isinstance(k, tuple) and k[0] == "padded_index" for k in plan[3]) if plan[0] == "sorted" else False
    assert fused == (n_slots >= 2 and not took_runs)
    if fused:
        src, dst = next(v for k, v in plan[3].items() if isinstance(k, tuple) and k[0] == "padded_index")
        assert (dst is None) == bool(bare.any())


def test_padded_layout_only_when_rows_fill_the_slots():
    """Distinct decode rows (one per slot) take the padded bmm; a few adapters over many rows
    (most slots empty or one slot holding many rows) take the grouped path."""
    c = make_case("distinct", "decode", layout="qkv_aligned", h_in=128, n_req=13)
    step = TorchLoraPlan(c.meta)
    plan = step.rows(1, True)
    assert step.layout(plan, c.a.shape[0], True)[0] == "padded"          # 15 slots, 13 rows
    c = make_case("skewed", "decode", layout="qkv_aligned", h_in=128, n_req=13)
    step = TorchLoraPlan(c.meta)
    plan = step.rows(1, True)
    assert step.layout(plan, c.a.shape[0], True)[0] == "grouped"         # one slot holds 12 rows


def test_sorted_family_is_for_fp32_on_the_cpu():
    c = make_case("distinct", "decode", layout="qkv_aligned", h_in=128)
    assert DEFAULT_POLICY.sorted_for(c.x, c.a)
    assert not DEFAULT_POLICY.sorted_for(c.x.half(), c.a.half())
    assert DEFAULT_POLICY.grouped_for(c.x, c.a, 128, 48) == HAS_GROUPED_MM
    assert not DEFAULT_POLICY.grouped_for(c.x, c.a, 129)                       # odd stride


def test_plan_is_reused_per_step_and_refreshed_on_refill():
    c = make_case("uniform", "decode", n_req=12, seed=2)
    step = TorchLoraPlan(c.meta)
    assert step.rows(64) is step.rows(64)
    y_ref = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="ref")
    y = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="torch", plan=step)
    assert_close(y, y_ref, torch.float32)
    # refill the same meta's buffers in place with another step's slots (same segment count)
    other = LoraMeta.build(torch.roll(c.slots, 3))
    assert other.seg_slots.numel() == c.meta.seg_slots.numel()
    for name in ("token_slots", "seg_starts", "seg_lens", "seg_slots"):
        getattr(c.meta, name).copy_(getattr(other, name))
    y_ref = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, other, c.offsets, backend="ref")
    y = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="torch", plan=step)
    assert_close(y, y_ref, torch.float32)


@pytest.mark.parametrize("popularity,phase,policy,taken", [
    ("identical", "decode", TorchLoraPolicy(), {"apply.run"}),
    ("distinct", "decode", TorchLoraPolicy(), {"apply.padded"}),
    ("distinct", "prefill", TorchLoraPolicy(run_min_rows=1), {"apply.run"}),
    ("skewed", "decode", TorchLoraPolicy(grouped=False), {"sorted.per_slot"}),
    ("distinct", "decode", TorchLoraPolicy(sorted=False), {"gather"}),
    ("uniform", "decode", TorchLoraPolicy(sorted=False), {"groups"}),
])
def test_plan_reports_the_path_that_ran(popularity, phase, policy, taken):
    """The plan a step passes to every layer names the paths that served it; a policy passed in
    (not a module switch) chooses among them."""
    c = make_case(popularity, phase, n_req=13, seed=9)
    step = TorchLoraPlan(c.meta, policy)
    y = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="torch", plan=step)
    assert step.taken == taken
    y_ref = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="ref")
    assert_close(y, y_ref, torch.float32)


def test_plan_of_another_step_is_refused():
    c = make_case("uniform", "decode", n_req=5)
    other = TorchLoraPlan(LoraMeta.build(c.slots.clone()))
    with pytest.raises(ValueError, match="this step's LoraMeta"):
        lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="torch", plan=other)


def test_step_plans_per_backend():
    from atoll.kernels.lora import TritonLoraPlan, plan_step

    c = make_case()
    assert isinstance(plan_step(c.meta, backend="torch"), TorchLoraPlan)
    assert plan_step(c.meta, backend="ref") is None
    tp = plan_step(c.meta, backend="triton")
    assert isinstance(tp, TritonLoraPlan)
    offs = tp.offsets(c.offsets, c.x.device)
    assert offs.dtype == torch.int32 and offs.tolist() == list(c.offsets)
    assert tp.offsets(c.offsets, c.x.device) is offs                 # copied once per step
    with pytest.raises(ValueError, match="unknown LoRA backend"):
        plan_step(c.meta, backend="cuda")


def test_large_adapters_skip_gather():
    c = make_case("distinct", "decode", n_req=23)
    assert TorchLoraPlan(c.meta).rows(DEFAULT_POLICY.gather_max_row_bytes + 1)[0] == "runs"


def test_wrong_slot_mapping_is_detected():
    """The comparison can fail: a rotated slot mapping gives a clearly different result."""
    c = make_case("distinct", "decode", n_req=9, seed=1)
    wrong = LoraMeta.build(torch.roll(c.slots, 1))
    y_ref = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="ref")
    y_bad = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, wrong, c.offsets, backend="torch")
    assert not is_close(y_bad, y_ref, torch.float32)
    h_bad = lora_shrink(c.x, c.a, wrong, backend="torch")
    assert not is_close(h_bad, shrink_ref(c.x, c.a, c.meta), torch.float32)


def test_no_adapter_step_is_a_no_op():
    c = make_case("all_none", "prefill")
    assert not c.meta.any_lora
    for backend in ("torch", "ref", "triton"):
        y = c.y0.clone()
        assert lora_apply(y, c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend=backend) is y
        assert torch.equal(y, c.y0)


def test_meta_segments():
    m = LoraMeta.build(torch.tensor([3, 3, -1, -1, 0, 3]))
    assert m.seg_starts.tolist() == [0, 2, 4, 5] and m.seg_lens.tolist() == [2, 2, 1, 1]
    assert m.seg_slots.tolist() == [3, -1, 0, 3] and m.max_seg_len == 2 and m.any_lora


def test_dispatch_rule():
    decode = make_case("distinct", "decode").meta
    prefill = LoraMeta.build(torch.tensor([0] * 9 + [1] * 3, dtype=torch.int32))
    assert triton_lora.use_bgmv(decode) and not triton_lora.use_bgmv(prefill)
    assert triton_lora.default_split_k(129) == 1 and triton_lora.default_split_k(4096) == 8


def test_unknown_backend():
    c = make_case()
    with pytest.raises(ValueError, match="unknown LoRA backend 'cuda'"):
        lora_shrink(c.x, c.a, c.meta, backend="cuda")


# ---- launcher argument errors (raised before any launch) ------------------------------------

LAUNCHERS_SHRINK = [triton_lora.sgmv_shrink, triton_lora.bgmv_shrink]
LAUNCHERS_EXPAND = [triton_lora.sgmv_expand, triton_lora.bgmv_expand]


def _bad_shrink_args(c, what):
    x, a, meta = c.x, c.a, c.meta
    if what == "dtype":
        a = a.half()
    elif what == "h_in":
        a = a[..., :-1].contiguous()
    elif what == "rows":
        meta = LoraMeta.build(c.slots[:-1])
    elif what == "noncontig":
        a = a.transpose(2, 3).contiguous().transpose(2, 3)
    elif what == "int64_meta":
        meta = LoraMeta(c.slots.long(), c.meta.seg_starts.long(), c.meta.seg_lens, c.meta.seg_slots,
                        c.meta.max_seg_len, c.meta.num_tokens, True)
    elif what == "device":
        a = torch.empty(a.shape, dtype=a.dtype, device="meta")
    elif what == "int_x":
        x, a = x.to(torch.int32), a.to(torch.int32)
    return x, a, meta


@pytest.mark.parametrize("launcher", LAUNCHERS_SHRINK, ids=lambda f: f.__name__)
@pytest.mark.parametrize("what,message", [
    ("dtype", "a dtype torch.float16 differs from x dtype torch.float32"),
    ("h_in", "a.shape[3] (H_in) = 128 but x.shape[1] = 129"),
    ("rows", "meta was built for 10 rows but x/y has 11"),
    ("noncontig", "a must be contiguous"),
    ("int64_meta", "meta.token_slots must be int32"),
    ("device", "a is on meta but x is on cpu"),
    ("int_x", "is not one of fp16/bf16/fp32"),
])
def test_shrink_launcher_errors(launcher, what, message):
    x, a, meta = _bad_shrink_args(make_case(), what)
    with pytest.raises(LoraArgumentError, match=re.escape(message)):
        launcher(x, a, meta)


def _bad_expand_args(c, what):
    y, h, b, sc, offs = c.y0.clone(), shrink_ref(c.x, c.a, c.meta), c.b, c.scales, c.offsets
    if what == "h_dtype":
        h = h.half()
    elif what == "scales_dtype":
        sc = sc.double()
    elif what == "b_dtype":
        b = b.half()
    elif what == "offsets":
        offs = (0, 40, 74)
    elif what == "offsets_end":
        offs = (0, 40, 57, 70)
    elif what == "rank":
        b = b[..., :4].contiguous()
    elif what == "y_cols":
        y = y.t().contiguous().t()                       # column-major
    return y, h, b, sc, c.meta, offs


@pytest.mark.parametrize("launcher", LAUNCHERS_EXPAND, ids=lambda f: f.__name__)
@pytest.mark.parametrize("what,message", [
    ("h_dtype", "h must be float32"),
    ("scales_dtype", "scales must be float32"),
    ("b_dtype", "b dtype torch.float16 differs from y dtype torch.float32"),
    ("offsets", "must have N \\+ 1 = 4 entries"),
    ("offsets_end", "must rise from 0 to H_out = 74"),
    ("rank", "rank mismatch: h.shape\\[2\\] = 8, b.shape\\[2\\] = 4"),
    ("y_cols", "y rows must be contiguous"),
])
def test_expand_launcher_errors(launcher, what, message):
    args = _bad_expand_args(make_case(), what)
    with pytest.raises(LoraArgumentError, match=message):
        launcher(*args)


def test_launcher_error_lists_every_problem():
    c = make_case()
    with pytest.raises(LoraArgumentError) as e:
        triton_lora.sgmv_expand(c.y0, shrink_ref(c.x, c.a, c.meta).half(), c.b, c.scales.double(),
                                c.meta, (0, 1))
    assert len(e.value.problems) == 3 and isinstance(e.value, ValueError)
