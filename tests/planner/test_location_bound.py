"""The location-pattern bound of ``bench/planner_location_bound.py`` (an analysis tool for the
placement gap) is a lower bound: for every accuracy-feasible variant choice of small random
problems it never exceeds the least cost of placing that choice, found by exhaustive search
over whole-node placements (``planner_ref.brute_force`` on the problem cut down to that choice);
and it is not vacuous: on some of them it is above the placement's LP relaxation. The seeds are
those of ``random_problem`` whose column generation finishes in about a second each (others take
up to a minute on a shared 2-core machine; seeds 0-39 all passed when this was written)."""

from __future__ import annotations

import importlib.util
import itertools
import random
from dataclasses import replace
from pathlib import Path

from atoll.planner.accuracy_set import AccuracySet
from atoll.planner.milp import Model
from planner_gen import random_problem
from planner_ref import accuracy_ok, brute_force

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("planner_location_bound", REPO / "bench" / "planner_location_bound.py")
lb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lb)


SEEDS = (0, 2, 4, 12, 14, 17, 20, 24, 25, 27, 28, 29, 31, 38, 39)


def _only(pb, choice):
    """The problem with every task's variants cut down to the chosen one."""
    tasks = tuple(replace(t, variants=tuple(v for v in t.variants if v.name == choice[t.name])) for t in pb.tasks)
    return replace(pb, tasks=tasks)


def test_location_bound_never_above_the_placement_optimum():
    checked, above_lp = 0, 0
    for seed in SEEDS:
        pb = random_problem(random.Random(7000 + seed))
        for combo in itertools.product(*[[v.name for v in t.variants] for t in pb.tasks]):
            choice = dict(zip([t.name for t in pb.tasks], combo))
            if not accuracy_ok(pb, choice):
                continue
            best = brute_force(_only(pb, choice))
            if best is None:
                continue
            r = lb.location_bound(pb, choice, rounds=60, time_limit=60.0)
            assert r["bound"] <= best + 1e-6 * max(1.0, best), (seed, choice, r, best)
            checked += 1
            above_lp += r["bound"] > r["lp"] + 1e-6 * max(1.0, r["lp"])
    assert checked >= 20
    assert above_lp >= 2


def test_location_bound_with_free_variants_never_above_the_optimum():
    """Variants free (each pattern picks them, the choices come from the exact search over the
    accuracy-feasible ones): a bound on every plan, held to the exhaustive optimum."""
    checked = 0
    for seed in SEEDS:
        pb = random_problem(random.Random(7000 + seed))
        best = brute_force(pb)
        if best is None or AccuracySet.of(Model(pb)) is None:
            continue
        r = lb.location_bound(pb, None, rounds=60, time_limit=60.0)
        assert r["bound"] <= best + 1e-6 * max(1.0, best), (seed, r, best)
        checked += 1
    assert checked >= 8
