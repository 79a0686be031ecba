"""Argument checks for the LoRA launchers: every problem is collected, then one error is raised.

The Triton launchers index raw pointers, so a wrong shape, dtype, device or stride would read
or write the wrong memory instead of failing. These checks run on the host before a launch and
cost a few attribute reads (no device syncs).
"""

from __future__ import annotations

import torch

WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class LoraArgumentError(ValueError):
    """A LoRA launcher was called with tensors that do not fit together.

    The message lists every problem found, one per line, each with what was expected.
    """

    def __init__(self, op: str, problems: list[str]):
        self.op = op
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{op}: {len(problems)} problem(s) with the arguments:\n{lines}")


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_dims(problems: list[str], *wanted: tuple[str, torch.Tensor, tuple[str, ...]]) -> None:
    """One problem per tensor whose number of dimensions differs from its named layout."""
    for name, t, layout in wanted:
        if t.dim() != len(layout):
            problems.append(f"{name} must be {len(layout)}-D [{', '.join(layout)}], got shape {_shape(t)}")


def _check_meta(meta, t_rows: int, device: torch.device, problems: list[str]) -> None:
    if meta.num_tokens != t_rows:
        problems.append(f"meta was built for {meta.num_tokens} rows but x/y has {t_rows}: "
                        "build LoraMeta from this step's token_slots")
    for name in ("token_slots", "seg_starts", "seg_lens", "seg_slots"):
        v = getattr(meta, name)
        if v.dtype != torch.int32:
            problems.append(f"meta.{name} must be int32, got {v.dtype}")
        if v.device != device:
            problems.append(f"meta.{name} is on {v.device} but the activations are on {device}: "
                            "build LoraMeta from token_slots on the activations' device")
        if not v.is_contiguous():
            problems.append(f"meta.{name} must be contiguous")


def check_shrink(x: torch.Tensor, a: torch.Tensor, meta) -> list[str]:
    """Problems with shrink arguments: x [T, H_in], a [S, N, R, H_in] of the same dtype."""
    problems: list[str] = []
    _check_dims(problems, ("x", x, ("T", "H_in")), ("a", a, ("S", "N", "R", "H_in")))
    if x.dim() == 2 and a.dim() == 4 and a.shape[3] != x.shape[1]:
        problems.append(f"a.shape[3] (H_in) = {a.shape[3]} but x.shape[1] = {x.shape[1]}")
    if x.dtype not in WEIGHT_DTYPES:
        problems.append(f"x dtype {x.dtype} is not one of fp16/bf16/fp32")
    if a.dtype != x.dtype:
        problems.append(f"a dtype {a.dtype} differs from x dtype {x.dtype}: cast the adapter "
                        "stack to the activation dtype when loading it")
    if a.device != x.device:
        problems.append(f"a is on {a.device} but x is on {x.device}")
    if x.dim() == 2 and x.shape[1] > 0 and x.stride(1) != 1:
        problems.append(f"x rows must be contiguous (stride(1) == 1), got strides {x.stride()}")
    if not a.is_contiguous():
        problems.append("a must be contiguous: call .contiguous() once when the stack is built")
    if x.dim() == 2:
        _check_meta(meta, x.shape[0], x.device, problems)
    return problems


def check_expand(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, meta,
                 slice_offsets) -> list[str]:
    """Problems with expand arguments (see :func:`atoll.kernels.lora.lora_expand` for shapes)."""
    problems: list[str] = []
    _check_dims(problems, ("y", y, ("T", "H_out")), ("h", h, ("N", "T", "R")),
                ("b", b, ("S", "H_out", "R")), ("scales", scales, ("S",)))
    if y.dim() == 2 and h.dim() == 3 and h.shape[1] != y.shape[0]:
        problems.append(f"h has {h.shape[1]} rows (h.shape[1]) but y has {y.shape[0]}")
    if y.dim() == 2 and b.dim() == 3 and b.shape[1] != y.shape[1]:
        problems.append(f"b.shape[1] (H_out) = {b.shape[1]} but y.shape[1] = {y.shape[1]}")
    if h.dim() == 3 and b.dim() == 3 and h.shape[2] != b.shape[2]:
        problems.append(f"rank mismatch: h.shape[2] = {h.shape[2]}, b.shape[2] = {b.shape[2]}")
    if b.dim() == 3 and scales.dim() == 1 and scales.shape[0] != b.shape[0]:
        problems.append(f"scales has {scales.shape[0]} entries but b has {b.shape[0]} slots")
    if y.dtype not in WEIGHT_DTYPES:
        problems.append(f"y dtype {y.dtype} is not one of fp16/bf16/fp32")
    if b.dtype != y.dtype:
        problems.append(f"b dtype {b.dtype} differs from y dtype {y.dtype}")
    if h.dtype != torch.float32:
        problems.append(f"h must be float32 (the shrink output), got {h.dtype}")
    if scales.dtype != torch.float32:
        problems.append(f"scales must be float32, got {scales.dtype}")
    for name, t in (("h", h), ("b", b), ("scales", scales)):
        if t.device != y.device:
            problems.append(f"{name} is on {t.device} but y is on {y.device}")
        if not t.is_contiguous():
            problems.append(f"{name} must be contiguous")
    if y.dim() == 2 and y.shape[1] > 0 and y.stride(1) != 1:
        problems.append(f"y rows must be contiguous (stride(1) == 1), got strides {y.stride()}")
    n = h.shape[0] if h.dim() == 3 else None
    offs = tuple(int(o) for o in slice_offsets)
    if n is not None and len(offs) != n + 1:
        problems.append(f"slice_offsets {offs} must have N + 1 = {n + 1} entries")
    elif offs and (offs[0] != 0 or any(hi < lo for lo, hi in zip(offs, offs[1:]))
                   or (y.dim() == 2 and offs[-1] != y.shape[1])):
        problems.append(f"slice_offsets {offs} must rise from 0 to H_out = "
                        f"{y.shape[1] if y.dim() == 2 else '?'}")
    if y.dim() == 2:
        _check_meta(meta, y.shape[0], y.device, problems)
    return problems
