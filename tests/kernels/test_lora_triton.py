"""Triton SGMV/BGMV kernels against the fp32 torch reference, run by the Triton interpreter on
CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton).

fp32 and fp16; bf16 only for BGMV, because the interpreter computes bf16 ``tl.dot`` wrongly
(bf16 SGMV is checked on a GPU by bench/kernels_bench.py). Shapes are small and odd (H_in 129,
slice widths 17..45, ranks 5 and 8 padded to the 16-wide dot tile) because every launch is
interpreted in Python.
"""

from __future__ import annotations

import os

import pytest
import torch

from atoll.kernels.lora import lora_apply, lora_expand, lora_shrink
from atoll.kernels import triton_lora as tl_lora
from atoll.kernels.lora import LoraMeta, expand_ref, shrink_ref
from lora_cases import POPULARITIES, assert_close, is_close, make_case

DTYPES = [torch.float32, torch.float16]


def test_interpreter_is_on():
    assert os.environ.get("TRITON_INTERPRET") == "1", "these tests run Triton on CPU tensors"


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("phase,layout,rank", [
    ("decode", "qkv", 8), ("prefill", "gate_up", 5), ("prefill", "qkv", 16),
])
@pytest.mark.parametrize("popularity", POPULARITIES)
def test_sgmv_and_bgmv_match_reference(popularity, phase, layout, rank, dtype):
    """Both kernel families, shrink and expand, for one step's layout and adapter popularity."""
    n_req = 13 if phase == "decode" else 5                  # T = 13 odd rows, or ~17 in segments
    c = make_case(popularity, phase, dtype, layout, rank=rank, n_req=n_req, seed=11)
    h_ref = shrink_ref(c.x, c.a, c.meta)
    y_ref = expand_ref(c.y0.clone(), h_ref, c.b, c.scales, c.meta, c.offsets)
    bare = c.slots < 0
    for family in ("sgmv", "bgmv"):
        h = getattr(tl_lora, f"{family}_shrink")(c.x, c.a, c.meta)
        assert h.shape == h_ref.shape and h.dtype == torch.float32
        assert_close(h, h_ref, torch.float32)       # fp16 products are exact in fp32
        assert not h[:, bare].any()
        y = c.y0.clone()
        out = getattr(tl_lora, f"{family}_expand")(y, h_ref, c.b, c.scales, c.meta, c.offsets)
        assert out is y
        assert_close(y, y_ref, dtype)
        assert torch.equal(y[bare], c.y0[bare]), f"{family}: rows without an adapter changed"


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
def test_split_k_and_row_blocks(dtype):
    """Shrink with the H_in reduction split in 3 (fp32 partials summed), and segments longer
    than one 16-row block (SGMV row blocks), single slice, rank 16."""
    slots = [2] * 21 + [-1] * 2 + [0] * 17 + [1]
    c = make_case(dtype=dtype, layout="single", rank=16, h_in=161, slots=slots, seed=4)
    h_ref = shrink_ref(c.x, c.a, c.meta)
    for h in (tl_lora.sgmv_shrink(c.x, c.a, c.meta, split_k=3, block_m=16, block_k=32),
              tl_lora.bgmv_shrink(c.x, c.a, c.meta, split_k=3, block_k=32)):
        assert_close(h, h_ref, torch.float32)
    y_ref = expand_ref(c.y0.clone(), h_ref, c.b, c.scales, c.meta, c.offsets)
    y = tl_lora.sgmv_expand(c.y0.clone(), h_ref, c.b, c.scales, c.meta, c.offsets, block_m=16,
                            block_n=16)
    assert_close(y, y_ref, dtype)
    y = tl_lora.bgmv_expand(c.y0.clone(), h_ref, c.b, c.scales, c.meta, c.offsets, block_n=16)
    assert_close(y, y_ref, dtype)


@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_lora_apply_triton_backend(phase):
    """The public entry point with backend='triton' (dispatch picks BGMV for decode)."""
    c = make_case("zipf1.5", phase, torch.float16, "qkv", n_req=6, seed=2)
    assert tl_lora.use_bgmv(c.meta) == (c.meta.max_seg_len <= tl_lora.BGMV_MAX_SEG_LEN)
    y = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="triton")
    y_ref = lora_apply(c.y0.clone(), c.x, c.a, c.b, c.scales, c.meta, c.offsets, backend="ref")
    assert_close(y, y_ref, torch.float16)


def test_wrong_slots_differ_under_triton():
    """The check can fail: the kernel fed a shuffled slot mapping disagrees with the reference."""
    c = make_case("distinct", "prefill", n_req=5, seed=8)
    wrong = LoraMeta.build(torch.flip(c.slots, [0]))
    h_ref = shrink_ref(c.x, c.a, c.meta)
    assert not is_close(tl_lora.sgmv_shrink(c.x, c.a, wrong), h_ref, torch.float32)
    y_ref = expand_ref(c.y0.clone(), h_ref, c.b, c.scales, c.meta, c.offsets)
    y = tl_lora.bgmv_expand(c.y0.clone(), h_ref, c.b, c.scales, wrong, c.offsets)
    assert not is_close(y, y_ref, torch.float32)


@pytest.mark.parametrize("family", ["sgmv", "bgmv"])
def test_tiny_rank_and_width(family):
    """Rank 1 and H_in 7 (both far below the block sizes: everything is masking)."""
    c = make_case("uniform", "prefill", torch.float32, "gate_up", rank=1, h_in=7, n_req=3, seed=6)
    h_ref = shrink_ref(c.x, c.a, c.meta)
    assert_close(getattr(tl_lora, f"{family}_shrink")(c.x, c.a, c.meta), h_ref, torch.float32)
    y_ref = expand_ref(c.y0.clone(), h_ref, c.b, c.scales, c.meta, c.offsets)
    y = getattr(tl_lora, f"{family}_expand")(c.y0.clone(), h_ref, c.b, c.scales, c.meta, c.offsets)
    assert_close(y, y_ref, torch.float32)


@pytest.mark.parametrize("backend", ["torch", "ref", "triton"])
def test_empty_step(backend):
    c = make_case(slots=[])
    assert c.x.shape[0] == 0
    h = lora_shrink(c.x, c.a, c.meta, backend=backend)
    assert h.shape == (3, 0, 8) and h.dtype == torch.float32
    y = lora_expand(c.y0, h, c.b, c.scales, c.meta, c.offsets, backend=backend)
    assert y.shape == (0, 74)


@pytest.mark.parametrize("popularity", ["distinct", "with_none"])
def test_bgmv_bf16(popularity):
    """bf16 through BGMV, which has no ``tl.dot`` (the interpreter's bf16 dot is wrong, so
    SGMV's bf16 path is left to the GPU bench)."""
    c = make_case(popularity, "decode", torch.bfloat16, "qkv", n_req=9, seed=12)
    h_ref = shrink_ref(c.x, c.a, c.meta)
    assert_close(tl_lora.bgmv_shrink(c.x, c.a, c.meta), h_ref, torch.float32)
    y_ref = expand_ref(c.y0.clone(), h_ref, c.b, c.scales, c.meta, c.offsets)
    y = tl_lora.bgmv_expand(c.y0.clone(), h_ref, c.b, c.scales, c.meta, c.offsets)
    assert_close(y, y_ref, torch.bfloat16)
    assert torch.equal(y[c.slots < 0], c.y0[c.slots < 0])
