r"""The planner's MILP: variants, pooled replicas and location-level flows at least $/h.

Notation
--------
  v ∈ T            tasks (topological order); λ_v its request rate (from the sources)
  m ∈ M_v          candidate variants of v; g(m) its sharing group (base model @ precision)
  p ∈ P            pools of identical nodes (allowed tiers/regions only); N_p nodes, c_p $/node-h,
                   loc(p) = (region, tier), mem_p GPU memory per node
  μ_vmp            req/s of one node of p running (v, m); 0 when it cannot (no profile, no fit)
  e = (u→w) ∈ E    edges; ρ_e messages/s on e in total, k_e = ρ_e / λ_u per request of u
  s_e(a, b)        message size (KB) on e between producer variant a and consumer variant b
  π(l1, l2)        $/GB from location l1 to l2;  β(l1, l2) bandwidth cap (Mbit/s)
  K = 3.6e-3       (KB→GB) · (s→h):  f msg/s · s KB · K · π = $/h

Variables
---------
  z[v,m] ∈ {0,1}        variant m chosen for task v
  r[v,m,p,c] ≥ 0        req/s of v served by variant m on pool p, in configuration c
  h[c,p] ∈ Z≥0          nodes of pool p running configuration c (shared by its members)
  c ∈ C_gp              configurations of group g on pool p: all of g's candidates when their
                        adapters fit beside the base weights, else each maximal subset that fits
  f[e,a,b,l1,l2] ≥ 0    messages/s on e from producer key a at l1 to consumer key b at l2
                        (a, b are variants when the size depends on them, else one key)
  y[v] ∈ [0,1]          output accuracy of v (profile model)
  d[c,p] ≥ 0            replicas moved against the previous plan (re-plan only)

Objective
---------
  min  Σ_{c,p} c_p h[c,p]  +  Σ K·s_e(a,b)·π(l1,l2)·f[e,a,b,l1,l2]  +  γ Σ d[c,p]

Constraints (numbered as in the code)
-------------------------------------
  (1) one variant per task            Σ_m z[v,m] = 1
  (2) throughput SLO                  Σ_{p,c} r[v,m,p,c] = λ_v z[v,m]
      (costing a baseline's plan may also fix its split: Σ_{m,c} r[v,m,p,c] = its rate on p)
  (3) shared capacity (LoRA-aware)    Σ_{(v,m)∈c} r[v,m,p,c] / μ_vmp ≤ h[c,p]
  (4) pool size                       Σ_c h[c,p] ≤ N_p
      Pools alike but for price (hardware, location, memory) are merged into one class c with
      Σ_c h[c,P] = Σ_k s[P,k], 0 ≤ s[P,k] ≤ N_k, paying Σ_k c_k s[P,k] (cheapest first, convex),
      instead of c_p h[c,p]; the plan maps a class P back to its pools cheapest first
  (5) adapter memory                  max_mem(c) + Σ_{(v,m)∈c} adapter_mem ≤ mem_p for every
                                      configuration c (by construction of C_gp)
  (6) flow conservation, per edge e = (u→w), producer key a / consumer key b:
        out of l1:  Σ_{b,l2} f[e,a,b,l1,l2] = k_e Σ_{m∈a, loc(p)=l1} r[u,m,p]   (source: ρ_e at its location)
        into l2:    Σ_{e∈I} Σ_{a,l1} f[e,a,b,l1,l2] = Σ_{m∈b, loc(p)=l2} r[w,m,p]
      per input group I of w: all edges from sources (merged streams), or one edge from a task
      with f ≡ 0 from a higher to a lower tier when data may only move up (JellyBean's rule)
  (7) bandwidth caps                  Σ_e Σ_{a,b} 0.008·s_e(a,b)·f[e,a,b,l1,l2] ≤ β(l1,l2)
  (8) accuracy SLO, one of
        profile:  (8a) y[w] ≤ σ_k y[u] + κ_k + B_k (1 - z[w,m])  for every parent u (sources: y = 1)
                  and every line (σ_k, κ_k) of m's concave profile;  y[sink] ≥ A_min
                  (8b) when no variant has a profile (y = acc·x), in logs, without big-M:
                  ly[w] ≤ ly[u] + Σ_m ln(acc_m) z[w,m]  (sources: ly = 0);  ly[sink] ≥ ln A_min
        additive: Σ_{v,m} (1 - acc_m) z[v,m] ≤ 1 - A_min ;  Σ (best_v - acc_m) z[v,m] ≤ loss budget
        table:    Σ_c w[c] = 1,  z[v,m] = Σ_{c: c_v = m} w[c]  over the rows c meeting A_min
  (9) churn                           d[c,p] ≥ h[c,p] - h⁰[c,p],  d[c,p] ≥ h⁰[c,p] - h[c,p]

  (10) node cover (valid, tightens the LP on small fleets):
        Σ_{p, c ∋ (v,m)} h[c,p] ≥ ⌈λ_v / max_p μ_vmp⌉ · z[v,m]
  (11) accuracy hull cuts (two-phase method only, :mod:`atoll.planner.decompose`): with Z the
        set of variant choices meeting (8), for prices y
            Σ_{v,m} y[v,m] z[v,m] ≥ β(y),   β(y) ≤ min_{ẑ ∈ Z} Σ y[v,m] ẑ[v,m]
        valid for every plan since its z is in Z; β is computed by a search over Z (exact, or
        over a superset, which only lowers it). The LP alone lets a task mix variants to meet
        (8) on average; these cuts bring it to conv(Z). The y come from column generation.
  (12) node-cost cuts (valid, the integrality of small fleets): the nodes of base group g cost
        at least the least cost K_vm of whole nodes whose capacity covers λ_v with any member m,
            Σ_{c ∈ g, p} π_p h[c,p] ≥ K_vm · z[v,m],   K_vm = min Σ_p π_p n_p  s.t.  Σ_p μ_vmp n_p ≥ λ_v,
        n_p ∈ {0..N_p} (:mod:`atoll.planner.knapsack`), π_p the cheapest price in class p

Scaling: the code keeps r as a share of λ_v and f as a share of the consumer's rate, so (2)
and (6) have unit coefficients; the costs and caps above are multiplied back accordingly.

Max-throughput mode (for infeasibility reports) replaces the objective by max α, (2) by
Σ_{m,p} r[v,m,p] = α λ_v with r[v,m,p,c] ≤ μ_vmp N_p z[v,m], and scales the sources by α.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import replace
from typing import Optional

import pulp

from atoll.planner.knapsack import least_cover_cost
from atoll.planner.problem import PlanProblem

K_COST = 3.6e-3
MBPS_PER_KB = 0.008


class Model:
    """One built MILP (or LP when the integers are fixed) with handles on its variables.

    ``mode="throughput"`` builds the max-throughput variant; ``fix_choice`` (task -> variant)
    keeps only those variants; ``fix_hosts`` ((group, pool) -> nodes) fixes the node counts,
    leaving an LP over rates and flows (how the baselines are costed), and ``fix_rates``
    ((task, pool) -> req/s) also fixes how a baseline split each task's requests."""

    def __init__(self, problem: PlanProblem, *, up_only: bool = False, previous=None,
                 churn_penalty: float = 0.0, fix_choice: Optional[dict] = None,
                 fix_hosts: Optional[dict] = None, fix_rates: Optional[dict] = None,
                 mode: str = "cost"):
        self.pb = problem
        self.mode = mode
        sense = pulp.LpMaximize if mode == "throughput" else pulp.LpMinimize
        self.prob = pulp.LpProblem("atoll_plan", sense)
        self.f: dict = {}
        self.d: dict = {}
        self.w: dict = {}
        self.y: dict = {}
        self.h0: dict = {}
        self.seg_cost: list[tuple] = []
        self.churn_const = 0
        self.group_nodes: dict = defaultdict(dict)   # (12): group -> {h var: class price}
        self.cover_cost: dict = {}                    # (12): (task, variant) -> K_vm where it cuts
        self._pool_classes(fix_choice)
        self._capacities(fix_choice)
        self._variables(fix_hosts)
        self.alpha = self.prob.add_variable("alpha", lowBound=0) if mode == "throughput" else None
        self.empty_tasks = [t.name for t in problem.tasks if not self.cand[t.name]]
        if not self.z or self.empty_tasks:
            return
        if fix_choice:
            for k, var in self.z.items():
                var.lowBound = var.upBound = 1 if fix_choice.get(k[0]) == k[1] else 0
        self._c1_one_variant_per_task()
        self._c2_throughput()
        if fix_rates:
            self._c2_fixed_rates(fix_rates)
        self._c3_shared_capacity()
        self._c4_pool_size()
        # (5) adapter memory: enforced by the configurations (see _configurations)
        self._c6_flows(up_only)
        self._c7_bandwidth_caps()
        self._c8_accuracy()
        self._c9_churn(previous, churn_penalty if fix_hosts is None else 0.0)
        if mode == "cost":
            self._c10_node_cover()
            self._c12_node_cost()
        self._objective(churn_penalty)

    # ------------------------------------------------------------------ index sets
    def _pool_classes(self, fix_choice) -> None:
        """Pools alike but for price (hardware, location, GPU memory) form one class: an optimal
        plan fills a class cheapest pool first, so a class is one integer per group with a
        convex piecewise-linear price (block 4) -- same optimum, far fewer integers."""
        pb = self.pb
        classes = defaultdict(list)
        for p in pb.pools:
            if pb.pool_allowed(p):
                # pools where adapters might not all fit keep their own adapter sets (block 5)
                key = (p.hardware, p.region, p.tier, p.gpu_memory_gb)
                classes[key + ((p.id,) if self._adapters_tight(p, fix_choice) else ())].append(p)
        self.class_pools: dict[str, list] = {}
        self.class_of: dict[str, str] = {}
        self.pools = {}
        for key in sorted(classes, key=lambda k: min(p.id for p in classes[k])):
            ps = sorted(classes[key], key=lambda p: (p.price_per_hour, p.id))
            cid = ps[0].id if len(ps) == 1 else f"{ps[0].id}+{len(ps) - 1}"
            self.class_pools[cid] = ps
            for p in ps:
                self.class_of[p.id] = cid
            self.pools[cid] = replace(ps[0], id=cid, count=sum(p.count for p in ps))

    def _capacities(self, fix_choice) -> None:
        """mu[v, m, p] > 0 where (v, m) runs on class p; cand[v]: v's variants that run somewhere."""
        pb = self.pb
        pools = list(self.pools.values())
        self.mu: dict[tuple[str, str, str], float] = {}
        for t in pb.tasks:
            for m in t.variants:
                if fix_choice and fix_choice.get(t.name) != m.name:
                    continue
                for p in pools:
                    x = pb.mu(m, p)
                    if x > 0:
                        self.mu[(t.name, m.name, p.id)] = x
        self.cand = {t.name: [m for m in t.variants if any((t.name, m.name, p.id) in self.mu for p in pools)]
                     for t in pb.tasks}
        # r is kept as a share of the task's rate (q = r / λ_v) and f as a share of the consumer's
        # rate: unit coefficients in (2) and (6), which keeps large fleets well conditioned.
        self.rate = {t.name: t.rate for t in pb.tasks}
        # groups, and the host configurations of each group on each pool (block 5)
        self.gmembers: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.vgroup: dict[tuple[str, str], str] = {}
        self.vobj = {}
        for t in pb.tasks:
            for m in self.cand[t.name]:
                self.gmembers[m.group].append((t.name, m.name))
                self.vgroup[(t.name, m.name)] = m.group
                self.vobj[(t.name, m.name)] = m
        self.configs: dict[tuple[str, str], list[tuple[str, tuple]]] = {}
        for g, members in self.gmembers.items():
            for p in pools:
                here = tuple(k for k in members if (k[0], k[1], p.id) in self.mu)
                if here:
                    self.configs[(g, p.id)] = self._configurations(g, here, p)

    def _configurations(self, g: str, members: tuple, pool) -> list[tuple[str, tuple]]:
        """Which members of group g may share one node of ``pool``: all of them when their
        adapters fit beside the base weights, else every maximal subset that fits."""
        def fits(sub) -> bool:
            base = max(self.vobj[k].memory_gb for k in sub)
            return base + sum(self.vobj[k].adapter_memory_gb for k in sub) <= pool.gpu_memory_gb + 1e-9
        if pool.gpu_memory_gb <= 0 or len(members) == 1 or fits(members):
            return [(g, members)]
        subs = [c for k in range(len(members), 0, -1) for c in itertools.combinations(members, k) if fits(c)]
        maximal = [c for c in subs if not any(set(c) < set(o) for o in subs)]
        return [(f"{g}#{i + 1}", c) for i, c in enumerate(maximal)]

    def _adapters_tight(self, p, fix_choice) -> bool:
        if p.gpu_memory_gb <= 0:
            return False
        groups = defaultdict(list)
        for t in self.pb.tasks:
            for m in t.variants:
                if (not fix_choice or fix_choice.get(t.name) == m.name) and self.pb.mu(m, p) > 0:
                    groups[m.group].append(m)
        return any(max(m.memory_gb for m in ms) + sum(m.adapter_memory_gb for m in ms) > p.gpu_memory_gb + 1e-9
                   for ms in groups.values() if len(ms) > 1)

    def _variables(self, fix_hosts) -> None:
        """z[v, m], r[v, m, p, c] and h[c, p]; with ``fix_hosts`` the node counts of each
        (group, class) are pinned to the baseline's, however they are configured."""
        new = self.prob.add_variable
        self.z = {(t, m.name): new(f"z_{i}_{j}", cat="Binary")
                  for i, t in enumerate(self.cand) for j, m in enumerate(self.cand[t])}
        self.r = {}
        for (g, p), confs in self.configs.items():
            for label, members in confs:
                for (t, m) in members:
                    self.r[(t, m, p, label)] = new(f"r_{len(self.r)}", lowBound=0)
        self.h = {}
        for (g, p), confs in sorted(self.configs.items()):
            cap = self.pools[p].count
            vars_ = []
            for label, _ in confs:
                v = new(f"h_{len(self.h)}", lowBound=0, upBound=cap,
                        cat="Continuous" if fix_hosts is not None else "Integer")
                self.h[(label, p)] = v
                vars_.append(v)
            if fix_hosts is None:
                continue
            val = sum(n for (g2, p2), n in fix_hosts.items() if g2 == g and self.class_of.get(p2) == p)
            if len(vars_) == 1:
                vars_[0].lowBound = vars_[0].upBound = val
            else:
                for v in vars_:
                    v.cat = "Integer"
                self.prob += pulp.lpSum(vars_) == val

    # ------------------------------------------------------------------ blocks
    def _c1_one_variant_per_task(self) -> None:
        for t in self.pb.tasks:
            self.prob += pulp.lpSum(self.z[(t.name, m.name)] for m in self.cand[t.name]) == 1, f"c1_{t.name}"

    def _c2_throughput(self) -> None:
        prob = self.prob
        r_by_tm = defaultdict(list)
        for (t, m, p, _c), var in self.r.items():
            r_by_tm[(t, m)].append((p, var))
        for t in self.pb.tasks:
            if self.mode == "throughput":
                prob += (pulp.lpSum(v for m in self.cand[t.name] for _, v in r_by_tm[(t.name, m.name)])
                         == self.alpha), f"c2_{t.name}"
                for m in self.cand[t.name]:
                    for p, v in r_by_tm[(t.name, m.name)]:
                        prob += v <= (self.mu[(t.name, m.name, p)] * self.pools[p].count / t.rate) * self.z[(t.name, m.name)]
            else:
                for m in self.cand[t.name]:
                    prob += (pulp.lpSum(v for _, v in r_by_tm[(t.name, m.name)])
                             == self.z[(t.name, m.name)]), f"c2_{t.name}_{m.name}"

    def _c2_fixed_rates(self, fix_rates: dict) -> None:
        """A baseline's split of each task's requests over pools: Σ_{m,c} r[v,m,p,c] = rate / λ_v."""
        want = defaultdict(float)
        for (t, pid), x in fix_rates.items():
            want[(t, self.class_of[pid])] += x
        terms = defaultdict(list)
        for (t, m, p, _c), var in self.r.items():
            terms[(t, p)].append(var)
        for (t, p), x in want.items():
            self.prob += pulp.lpSum(terms[(t, p)]) == x / self.rate[t]

    def _c3_shared_capacity(self) -> None:
        rg = defaultdict(list)
        for (t, m, p, c), var in self.r.items():
            rg[(c, p)].append((var, self.rate[t] / self.mu[(t, m, p)]))
        for n, ((c, p), terms) in enumerate(rg.items()):
            self.prob += pulp.LpAffineExpression(terms) <= self.h[(c, p)], f"c3_{n}"

    def _c4_pool_size(self) -> None:
        """Pool size; a class of pools pays its cheapest nodes first (segments s[c,k])."""
        hp = defaultdict(list)
        for (g, p), var in self.h.items():
            hp[p].append(var)
        for n, (p, vars_) in enumerate(hp.items()):
            members = self.class_pools[p]
            if len(members) == 1:
                if len(vars_) > 1:
                    self.prob += pulp.lpSum(vars_) <= self.pools[p].count, f"c4_{n}"
                self.seg_cost += [(v, members[0].price_per_hour) for v in vars_]
                continue
            segs = [self.prob.add_variable(f"s_{n}_{k}", lowBound=0, upBound=q.count) for k, q in enumerate(members)]
            self.prob += pulp.lpSum(vars_) == pulp.lpSum(segs), f"c4_{n}"
            self.seg_cost += [(sv, q.price_per_hour) for sv, q in zip(segs, members)]

    def _size_keys(self, e, *, src_side: bool, by_dst: bool) -> dict:
        """Flow keys on one side of edge e: variants whose message sizes agree share a key
        (a tuple of their names), so flows are indexed only as finely as the sizes differ."""
        pb = self.pb
        if src_side:
            mine = [m.name for m in self.cand[e.src]]
            other = [m.name for m in self.cand[e.dst]] if by_dst else [None]
            if not e.by_src:
                return {None: mine}
            sig = lambda a: tuple(e.size(a, b) for b in other)  # noqa: E731
        else:
            mine = [m.name for m in self.cand[e.dst]]
            if not by_dst:
                return {None: mine}
            if pb.source(e.src) is not None:   # merged source streams share consumer keys
                return {(x,): [x] for x in mine}
            other = [m.name for m in self.cand[e.src]] if e.by_src else [None]
            sig = lambda b: tuple(e.size(a, b) for a in other)  # noqa: E731
        groups: dict = {}
        for x in mine:
            groups.setdefault(sig(x), []).append(x)
        return {tuple(v): v for v in groups.values()}

    def _c6_flows(self, up_only: bool) -> None:
        """Flow conservation at location level."""
        pb, prob = self.pb, self.prob
        R = defaultdict(list)              # (task, variant, loc) -> [r vars]
        for (t, m, p, _c), var in self.r.items():
            R[(t, m, self.pools[p].location)].append(var)
        locs_of = defaultdict(dict)        # ordered (dict, not set): the same model in every process
        for (t, m, l) in R:
            locs_of[(t, m)][l] = None

        def by_location(task: str, keys: dict, coef: float) -> dict:
            """key -> location -> [(r var, coef)] of the task's variants under each key."""
            out = {}
            for k, ms in keys.items():
                d = defaultdict(list)
                for m in ms:
                    for l in locs_of[(task, m)]:
                        d[l].extend((v, coef) for v in R[(task, m, l)])
                out[k] = d
            return out

        task_rate = self.rate
        src_names = {s.name for s in pb.sources}
        # Edges from sources into one task are merged (their streams add up); each edge from a
        # task is joined (one message per request of the consumer). Consumer constraints are
        # per input group: ("src", task) for the merged sources, the edge index otherwise.
        keyed_dst = {e.dst for e in pb.edges if e.src in src_names and e.by_dst}
        in_terms = defaultdict(list)
        in_rhs = {}
        for ei, e in enumerate(pb.edges):
            src = pb.source(e.src)
            if src is not None:
                prod = {None: {src.location: ("src", e.rate / task_rate[e.dst])}}
                gkey = ("src", e.dst)
                by_dst = e.dst in keyed_dst
            else:
                # in units of the consumer's load: out of u = u's share at l1 (k_e = 1)
                prod = by_location(e.src, self._size_keys(e, src_side=True, by_dst=e.by_dst), 1.0)
                gkey = ei
                by_dst = e.by_dst
            cons = by_location(e.dst, self._size_keys(e, src_side=False, by_dst=by_dst), 1.0)
            for b, d in cons.items():
                for l2, rhs in d.items():
                    in_rhs[(gkey, b, l2)] = rhs
            out_terms = defaultdict(list)
            for a, pl in prod.items():
                for b, cl in cons.items():
                    size = e.size(a[0] if isinstance(a, tuple) else a, b[0] if isinstance(b, tuple) else b)
                    for l1 in pl:
                        for l2 in cl:
                            if not pb.flow_allowed(l1, l2, up_only):
                                continue
                            var = prob.add_variable(f"f_{len(self.f)}", lowBound=0)
                            self.f[(ei, a, b, l1, l2)] = (var, size, task_rate[e.dst])
                            out_terms[(a, l1)].append((var, 1.0))
                            in_terms[(gkey, b, l2)].append((var, 1.0))
            for a, pl in prod.items():
                for l1, rhs in pl.items():
                    lhs = pulp.LpAffineExpression(out_terms[(a, l1)])
                    if isinstance(rhs, tuple):         # a source: constant rate (times alpha)
                        val = rhs[1]
                        prob += (lhs == val * self.alpha) if self.alpha is not None else (lhs == val)
                    else:
                        prob += lhs == pulp.LpAffineExpression(rhs)
        for key, rhs in in_rhs.items():
            prob += pulp.LpAffineExpression(in_terms[key]) == pulp.LpAffineExpression(rhs)

    def _c7_bandwidth_caps(self) -> None:
        cap_terms = defaultdict(list)
        cap = {}                           # per location pair (the network's lookup is a scan)
        for key, (var, size, scale) in self.f.items():
            l1, l2 = key[3], key[4]
            if (l1, l2) not in cap:
                cap[(l1, l2)] = self.pb.network.bandwidth(l1, l2)
            if cap[(l1, l2)] is not None:
                cap_terms[(l1, l2)].append((var, MBPS_PER_KB * size * scale))
        for (l1, l2), terms in cap_terms.items():
            self.prob += pulp.LpAffineExpression(terms) <= cap[(l1, l2)]

    def _c8_accuracy(self) -> None:
        pb = self.pb
        if pb.accuracy_model == "table":
            self._c8_table()
        elif pb.accuracy_model == "additive":
            self._c8_additive()
        elif pb.min_accuracy is None:
            return
        elif all(m.profile is None for c in self.cand.values() for m in c):
            self._c8b_log_profiles()
        else:
            self._c8a_profiles()

    def _c8_table(self) -> None:
        pb, prob = self.pb, self.prob
        amin = pb.min_accuracy if pb.min_accuracy is not None else -1.0
        rows = [(dict(c), acc) for c, acc in pb.accuracy_table if acc >= amin - 1e-9]
        rows = [(c, a) for c, a in rows if all((t, m) in self.z for t, m in c.items())]
        for i, (c, a) in enumerate(rows):
            self.w[i] = prob.add_variable(f"w_{i}", cat="Binary")
        prob += pulp.lpSum(self.w.values()) == 1, "c8_one_row"
        for (t, m), zv in self.z.items():
            prob += zv == pulp.lpSum(self.w[i] for i, (c, _) in enumerate(rows) if c.get(t) == m)

    def _c8_additive(self) -> None:
        pb, prob = self.pb, self.prob
        if pb.min_accuracy is not None:
            prob += pulp.LpAffineExpression(
                [(zv, 1.0 - self.vobj[k].accuracy) for k, zv in self.z.items()]) <= 1.0 - pb.min_accuracy
        if pb.max_accuracy_loss is not None:
            best = {t.name: max(v.accuracy for v in t.variants) for t in pb.tasks}
            prob += pulp.LpAffineExpression(
                [(zv, best[k[0]] - self.vobj[k].accuracy) for k, zv in self.z.items()]) <= pb.max_accuracy_loss

    def _c8b_log_profiles(self) -> None:
        """Default profiles y = acc * x: exact and tight in logs, no big-M."""
        pb, prob = self.pb, self.prob
        for t in pb.tasks:
            self.y[t.name] = prob.add_variable(f"ly_{len(self.y)}", upBound=0)
        for t in pb.tasks:
            gain = pulp.LpAffineExpression([(self.z[(t.name, m.name)], math.log(m.accuracy))
                                            for m in self.cand[t.name]])
            for par in t.parents:
                yin = 0.0 if pb.source(par) is not None else self.y[par]
                prob += self.y[t.name] <= yin + gain
        for s in pb.sinks():
            prob += self.y[s] >= math.log(max(pb.min_accuracy, 1e-12)), f"c8_sink_{s}"

    def _c8a_profiles(self) -> None:
        pb, prob = self.pb, self.prob
        for t in pb.tasks:
            self.y[t.name] = prob.add_variable(f"y_{len(self.y)}", lowBound=0, upBound=1)
        for t in pb.tasks:
            for m in self.cand[t.name]:
                zv = self.z[(t.name, m.name)]
                for s, c in m.segments():
                    big = max(0.0, 1.0 - min(c, s + c))
                    for par in t.parents:
                        yin = 1.0 if pb.source(par) is not None else self.y[par]
                        prob += self.y[t.name] <= s * yin + c + big * (1 - zv)
        for s in pb.sinks():
            prob += self.y[s] >= pb.min_accuracy, f"c8_sink_{s}"

    def _c9_churn(self, previous, penalty: float) -> None:
        """Replicas moved against the previous plan, |h - h0| per (configuration, class)."""
        h0 = defaultdict(int)
        if previous is not None:
            for (g, pid), c in previous.host_counts().items():
                h0[(g, self.class_of.get(pid, pid))] += c
        self.h0 = dict(h0)
        self.churn_const = sum(c for k, c in self.h0.items() if k not in self.h)
        if previous is None or penalty <= 0:
            return
        for n, (k, var) in enumerate(self.h.items()):
            before = self.h0.get(k, 0)
            dv = self.prob.add_variable(f"d_{n}", lowBound=0)
            self.prob += dv >= var - before
            self.prob += dv >= before - var
            self.d[k] = dv

    def _c10_node_cover(self) -> None:
        """A chosen variant needs at least ceil(λ / best μ) nodes holding it."""
        cover = defaultdict(list)
        fastest: dict = {}
        for (t, m, p, c) in self.r:
            cover[(t, m)].append(self.h[(c, p)])
            fastest[(t, m)] = max(fastest.get((t, m), 0.0), self.mu[(t, m, p)])
        for n, ((t, m), hs) in enumerate(cover.items()):
            need = math.ceil(self.rate[t] / fastest[(t, m)] - 1e-9)
            self.prob += pulp.lpSum(list(dict.fromkeys(hs))) >= need * self.z[(t, m)], f"c10_{n}"

    def _c12_node_cost(self) -> None:
        """The nodes holding (v, m)'s base cost at least the cheapest whole-node cover of λ_v."""
        hs = self.group_nodes
        for (g, p), confs in self.configs.items():
            for label, _ in confs:
                hs[g][self.h[(label, p)]] = self.pools[p].price_per_hour
        items = defaultdict(list)
        for (t, m, p), mu in self.mu.items():
            items[(t, m)].append((mu, self.pools[p].price_per_hour, self.pools[p].count))
        for n, (t, m) in enumerate(self.vobj):
            need = least_cover_cost(self.rate[t], items[(t, m)])
            frac = self.rate[t] * min(c / a for a, c, _ in items[(t, m)])
            if math.isfinite(need) and need > frac * (1 + 1e-9):
                self.cover_cost[(t, m)] = need
                self.prob += (pulp.LpAffineExpression(list(hs[self.vgroup[(t, m)]].items()))
                              >= need * self.z[(t, m)]), f"c12_{n}"

    def _objective(self, churn_penalty: float) -> None:
        if self.mode == "throughput":
            self.prob += self.alpha
            return
        terms = list(self.seg_cost)
        price = {}
        for k in self.f:
            if (k[3], k[4]) not in price:
                price[(k[3], k[4])] = self.pb.network.price(k[3], k[4])
        terms += [(var, K_COST * size * scale * price[(k[3], k[4])]) for k, (var, size, scale) in self.f.items()]
        terms += [(dv, churn_penalty) for dv in self.d.values()]
        self.prob += pulp.LpAffineExpression(terms)
