"""HiGHS through highspy: the only module of the planner that imports it.

highspy is optional: atoll depends on PuLP, which solves with HiGHS when highspy is installed
and with its bundled CBC otherwise (:func:`atoll.planner.solve.solver_name`). ``AVAILABLE`` says
which; the two-phase method of :mod:`atoll.planner.two_phase` needs HiGHS and is skipped without it.

The first ``highspy.Highs()`` of a process prints a copyright banner on the C-level stdout,
which would corrupt ``atoll plan --output json``; importing this module makes that first
instance with stdout pointed at /dev/null.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional, Sequence

try:                        # optional dependency (see above): None when not installed
    import highspy
except ImportError:         # pragma: no cover - the test environment installs highspy
    highspy = None

AVAILABLE = highspy is not None


def _quiet_first_instance() -> None:
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)


if AVAILABLE:
    _quiet_first_instance()


def new(lp=None, threads: Optional[int] = None, presolve: str = "off"):
    """A silent HiGHS instance, holding ``lp`` (a ``highspy.HighsLp``) when given."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    if threads:
        h.setOptionValue("threads", int(threads))
    if lp is not None:
        h.passModel(lp)
    h.setOptionValue("presolve", presolve)
    return h


def set_deadline(h, deadline: float) -> None:
    """HiGHS' clock runs across the run() calls of one instance: its limit is a total."""
    h.setOptionValue("time_limit", float(h.getRunTime() + max(0.05, deadline - time.perf_counter())))


def optimal(h) -> bool:
    return h.getModelStatus() == highspy.HighsModelStatus.kOptimal


def infeasible(h) -> bool:
    return is_infeasible_status(h.getModelStatus())


def is_infeasible_status(status) -> bool:
    return status in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible)


def start_from(h, values: Sequence[float]) -> None:
    """Give ``h`` a starting point (a primal solution, one value per column)."""
    sol = highspy.HighsSolution()
    sol.col_value = list(values)
    sol.value_valid = True
    h.setSolution(sol)


def stop_when(h, test) -> None:
    """Interrupt the MIP search as soon as ``test(mip_primal_bound, mip_dual_bound)`` holds."""
    def check(e):
        if test(e.data_out.mip_primal_bound, e.data_out.mip_dual_bound):
            e.interrupt()
    h.cbMipInterrupt += check


INF = highspy.kHighsInf if AVAILABLE else float("inf")


def row_lp(cost, col_lower, col_upper, row_lower, row_upper, starts, index, value, offset: float = 0.0):
    """A ``highspy.HighsLp`` from numpy arrays, its matrix given row by row (CSR)."""
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(cost), len(row_lower)
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, col_lower, col_upper
    lp.row_lower_, lp.row_upper_ = row_lower, row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = len(cost), len(row_lower)
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = starts, index, value
    lp.offset_ = float(offset)
    return lp


def make_integer(h, cols) -> None:
    """Mark the columns ``cols`` (an int32 array) of ``h`` integer."""
    h.changeColsIntegrality(len(cols), cols, [highspy.HighsVarType.kInteger] * len(cols))
