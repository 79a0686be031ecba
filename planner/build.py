"""Assemble a :class:`PlanProblem` from the workflow, cluster and catalog specs."""

from __future__ import annotations

from atoll.core.errors import SpecError
from atoll.planner.problem import Edge, Network, PlanProblem, Pool, Source, Task, Variant
from atoll.specs.cluster import ClusterSpec, parse_location
from atoll.specs.workflow import WorkflowSpec


def _pools(cluster: ClusterSpec) -> tuple[Pool, ...]:
    out = []
    for p in cluster.pools:
        out.append(Pool(id=p.name, hardware=p.hardware, tier=p.tier, region=p.region,
                        price_per_hour=p.price_per_hour, count=p.count, preemptible=p.preemptible,
                        gpu_memory_gb=p.gpu_memory_gb, labels=dict(p.labels), node_ids=tuple(p.node_ids),
                        trusted=p.is_trusted))
    for n in cluster.nodes:
        out.append(Pool(id=n.name, hardware=n.hardware, tier=n.tier, region=n.region,
                        price_per_hour=n.price_per_hour, count=1, preemptible=n.preemptible,
                        gpu_memory_gb=n.gpu_memory_gb, labels=dict(n.labels), node_ids=(n.name,),
                        trusted=n.is_trusted))
    return tuple(out)


def _network(cluster: ClusterSpec) -> Network:
    links = tuple((parse_location(l.from_), parse_location(l.to), l.price_per_gb, l.bandwidth_mbps)
                  for l in cluster.links)
    d = cluster.network
    return Network(same_location_per_gb=d.same_location_per_gb, intra_region_per_gb=d.intra_region_per_gb,
                   inter_region_per_gb=d.inter_region_per_gb, links=links)


def task_rate(parents: list[tuple[str, float]], rate: dict, src_rate: dict) -> float:
    """Streams from sources add up; inputs from tasks are joined (min), as in JellyBean:
    lambda_v = min({sum_s lambda_s rho_sv} U {lambda_u rho_uv for task parents u})."""
    merged = sum(rate[p] * r for p, r in parents if p in src_rate)
    joins = [rate[p] * r for p, r in parents if p not in src_rate]
    return min(joins + ([merged] if any(p in src_rate for p, _ in parents) else []))


def edge_rate(src: str, ratio: float, dst: str, parents: dict, rate: dict, src_rate: dict) -> float:
    """Messages/s on an edge: a task edge carries one message per request of ``dst``; source
    edges into ``dst`` share its rate in proportion to their streams."""
    if src not in src_rate:
        return rate[dst]
    merged = sum(rate[p] * r for p, r in parents[dst] if p in src_rate)
    return rate[dst] * (rate[src] * ratio) / merged


def problem_from_specs(workflow: WorkflowSpec, cluster: ClusterSpec, catalog=None, *,
                       workflow_source: str | None = None, cluster_source: str | None = None) -> PlanProblem:
    workflow.check(source=workflow_source, catalog=catalog)
    pools = _pools(cluster)
    hw = sorted({p.hardware for p in pools})
    variants = workflow.resolved_variants(catalog)
    src_rate = {s.name: s.rate for s in workflow.sources}
    parents: dict[str, list[tuple[str, float]]] = {t.name: [] for t in workflow.tasks}
    for e in workflow.edges:
        parents[e.to].append((e.from_, e.ratio))

    # Topological order and rates: lambda_v = min over parents of lambda_u * ratio.
    rate = dict(src_rate)
    order: list[str] = []
    pending = [t.name for t in workflow.tasks]
    while pending:
        progressed = False
        for name in list(pending):
            if all(p in rate for p, _ in parents[name]):
                rate[name] = task_rate(parents[name], rate, src_rate)
                order.append(name)
                pending.remove(name)
                progressed = True
        if not progressed:  # check() rejects cycles; keep a typed error anyway
            raise SpecError("the workflow has a cycle", source=workflow_source, path="edges")

    tasks = []
    by_name = {t.name: (i, t) for i, t in enumerate(workflow.tasks)}
    for name in order:
        i, t = by_name[name]
        vs = []
        for j, v in enumerate(variants[name]):
            rps = {}
            for h in hw:
                x = v.requests_per_second(h, t.tokens_per_request)
                if x:
                    rps[h] = x
            if v.tokens_per_second and t.tokens_per_request <= 0 and not v.throughput:
                raise SpecError(f"variant {v.name!r} gives tokens_per_second but the task has no token "
                                "lengths", source=workflow_source, path=f"tasks[{i}].prompt_tokens",
                                hint="set prompt_tokens and completion_tokens (means per request)")
            vs.append(Variant(name=v.name, accuracy=v.accuracy, rps=rps,
                              group=f"{v.base_model}@{v.precision}", adapter=v.adapter,
                              memory_gb=v.memory_gb, adapter_memory_gb=v.adapter_memory_gb,
                              profile=tuple(tuple(p) for p in v.profile) if v.profile else None))
        if not any(v.rps for v in vs):
            given = sorted({h for v in variants[name] for h in (*v.throughput, *v.tokens_per_second)})
            raise SpecError(f"task {name!r}: no variant has a throughput profile for any hardware class "
                            f"of the cluster ({', '.join(hw)})", source=workflow_source,
                            path=f"tasks[{i}].variants",
                            hint=f"profiles exist for {', '.join(given) or 'nothing'}; add throughput for "
                                 f"one of the cluster's classes or add such nodes to "
                                 f"{cluster_source or 'the cluster'}")
        tasks.append(Task(name=name, rate=rate[name], variants=tuple(vs),
                          parents=tuple(p for p, _ in parents[name])))

    edges = tuple(Edge(src=e.from_, dst=e.to, rate=edge_rate(e.from_, e.ratio, e.to, parents, rate, src_rate),
                       size_kb=e.size_kb,
                       sizes=tuple((s.from_variant, s.to_variant, s.size_kb) for s in e.sizes))
                  for e in workflow.edges)
    sources = tuple(Source(name=s.name, rate=s.rate, location=(s.region, s.tier)) for s in workflow.sources)
    slo = workflow.slo
    table = tuple((tuple(sorted(row.variants.items())), row.accuracy) for row in slo.accuracy_table)
    pl = workflow.placement
    return PlanProblem(
        name=workflow.name, sources=sources, tasks=tuple(tasks), edges=edges, pools=pools,
        network=_network(cluster), accuracy_model=slo.accuracy_model, min_accuracy=slo.min_accuracy,
        max_accuracy_loss=slo.max_accuracy_loss, accuracy_table=table,
        forbid_tiers=tuple(pl.forbid_tiers), forbid_regions=tuple(pl.forbid_regions),
        forbid_locations=tuple(parse_location(x) for x in pl.forbid_locations),
        data_up_only=pl.data_up_only, trusted_only=pl.trusted_only)
