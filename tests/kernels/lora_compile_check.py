"""Compile every LoRA kernel for real CUDA targets, without a GPU (run as a script).

The Triton interpreter runs the kernels' Python, not Triton's compiler, so a construct that
compiles only in the interpreter would pass the CPU tests and fail on the first GPU. This
script lowers each kernel through TTIR -> TTGIR -> LLVM -> PTX -> cubin (ptxas ships with
Triton) for sm_80 and sm_90 in fp16, bf16 and fp32, and prints one JSON line per kernel.
It must run with TRITON_INTERPRET unset (the test starts it in a clean subprocess).
"""

from __future__ import annotations

import json
import os
import sys

if os.environ.get("TRITON_INTERPRET"):
    sys.exit("run with TRITON_INTERPRET unset")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from atoll.kernels import triton_lora as k  # noqa: E402

META = {"seg_starts_ptr": "*i32", "seg_lens_ptr": "*i32", "seg_slots_ptr": "*i32",
        "slots_ptr": "*i32", "offs_ptr": "*i32", "scales_ptr": "*fp32", "out_ptr": "*fp32",
        "h_ptr": "*fp32"}


def kernels(dt: str):
    ieee = dt == "fp32"
    io = {"x_ptr": f"*{dt}", "a_ptr": f"*{dt}", "b_ptr": f"*{dt}", "y_ptr": f"*{dt}"}
    yield "sgmv_shrink", k._sgmv_shrink_kernel, io, dict(SPLIT_K=8, BLOCK_M=64, BLOCK_K=64,
                                                         BLOCK_R=16, IEEE=ieee)
    yield "sgmv_expand", k._sgmv_expand_kernel, io, dict(BLOCK_M=16, BLOCK_N=64, BLOCK_R=32,
                                                         IEEE=ieee)
    yield "bgmv_shrink", k._bgmv_shrink_kernel, io, dict(SPLIT_K=8, BLOCK_K=128, BLOCK_R=16)
    yield "bgmv_expand", k._bgmv_expand_kernel, io, dict(N=3, BLOCK_N=128, BLOCK_R=8)


def main() -> int:
    failed = 0
    for arch in (80, 90):
        for dt in ("fp16", "bf16", "fp32"):
            for name, fn, io, consts in kernels(dt):
                types = {**META, **io}
                sig = {a: "constexpr" if a in consts else types.get(a, "i32") for a in fn.arg_names}
                src = ASTSource(fn=fn, signature=sig,
                                constexprs={(fn.arg_names.index(c),): v for c, v in consts.items()})
                row = {"kernel": name, "arch": arch, "dtype": dt}
                try:
                    ck = triton.compile(src, target=GPUTarget("cuda", arch, 32))
                    ptx = ck.asm["ptx"]
                    row.update(ok=True, mma="mma" in ptx, cubin_bytes=len(ck.asm["cubin"]))
                except Exception as e:  # report every kernel, then fail
                    row.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
                    failed += 1
                print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
