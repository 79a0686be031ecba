"""Who may call this node for a ``trusted_only`` workflow's data: the check behind the guard.

A node token says whether the operator trusts the node holding it, and its tier
(:class:`atoll.core.credentials.Claims`). The Worker port's guard (``agent/guard.py``) verifies
the token but cannot read the request; this module checks what a call asks for against the
caller's claims, with the rule placement and the coordinator's routing use,
:func:`atoll.specs.routing.may_hold` (a ``trusted_only`` workflow: only a node the operator
trusts, and never a renter):

- ``Worker.Generate`` / ``Worker.Embed`` name an adapter (``""``: the bare base model). A node
  caller is refused an adapter this node holds for a workflow the caller may not hold, and the
  base model when this node holds anything for such a workflow (the base model is every replica's
  on the host). What this node holds comes from the coordinator: its replica items (the
  assignments) and its endpoints in the routes (the routing state). A workflow this node has
  replicas of but no route for counts as one the caller may not hold: nothing said it may.
- ``DataPlane.Forward`` names a workflow: refused when the caller may not hold its route.

The coordinator's token is never refused here, nor a trusted node's that is not a renter.
Refusals are PERMISSION_DENIED, counted in ``atoll_trusted_only_refusals_total{method}`` and
logged with the caller's node id and the workflow; the answer does not name the workflow.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter

from atoll.core.credentials import Claims
from atoll.core.errors import PermissionDenied
from atoll.core.logs import kv
from atoll.specs.assignment import ReplicaItem
from atoll.specs.routing import Route, RoutingState, may_hold

log = logging.getLogger("atoll.agent")

BASE = ""          # the bare base model, as Generate names it (no adapter)


def withheld(routes: Mapping[str, Route], items: Sequence[ReplicaItem], node_id: str, tier: str,
             trusted: bool) -> dict[str, str]:
    """What a node caller of ``tier`` (trusted by the operator or not) may not use on node
    ``node_id``: adapter name (:data:`BASE` for the base model) -> a workflow it is held for.
    ``routes``: the routing state's; ``items``: this node's replica items. Pure."""
    out: dict[str, str] = {}

    def hold(adapter: str, workflow: str) -> None:
        out.setdefault(adapter, workflow)
        out.setdefault(BASE, workflow)          # the base model serves every replica on the host

    for it in items:
        r = routes.get(it.workflow)
        if r is None or not may_hold(r, tier, trusted):
            hold(it.adapter, it.workflow)
    for r in routes.values():
        if not may_hold(r, tier, trusted):
            for eps in r.endpoints.values():
                for e in eps:
                    if e.node_id == node_id:
                        hold(e.adapter, r.workflow)
    return out


class TrustGate:
    """The check, wired to this agent: ``claims()`` the caller's verified token (the guard's),
    ``routing()`` the routing state held now, ``items()`` (the assignments' generation, this
    node's replica items), ``node_id()`` this node's id. What is withheld is computed once per
    routing state, assignments and kind of caller, not per call."""

    def __init__(self, claims: Callable[[], Claims | None], routing: Callable[[], RoutingState],
                 items: Callable[[], tuple[int, Sequence[ReplicaItem]]], node_id: Callable[[], str],
                 registry: CollectorRegistry | None = None):
        self.claims, self.routing, self.items, self.node_id = claims, routing, items, node_id
        self.refusals = Counter("atoll_trusted_only_refusals", "Node callers refused a trusted_only workflow's "
                                "adapter, base model or request (the operator does not trust them, or a renter)",
                                ["method"], registry=registry if registry is not None else CollectorRegistry())
        self._for: tuple | None = None
        self._memo: dict[tuple[str, bool], dict[str, str]] = {}

    def _withheld(self, c: Claims) -> dict[str, str]:
        state = self.routing()
        generation, items = self.items()
        node_id = self.node_id()
        key = (state.digest, generation, node_id)
        if self._for != key:
            self._for, self._memo = key, {}
        kind = (c.tier, c.trusted)
        got = self._memo.get(kind)
        if got is None:
            got = self._memo[kind] = withheld(state.routes, items, node_id, c.tier, c.trusted)
        return got

    def infer(self, method: str, adapter: str) -> None:
        """Refuse a node caller ``method`` (Generate, Embed) on ``adapter`` when it is withheld."""
        c = self.claims()
        if c is None or c.is_coordinator:
            return
        workflow = self._withheld(c).get(adapter)
        if workflow is not None:
            held = f"adapter {adapter!r}" if adapter else "the base model"
            self._refuse(method, c, workflow, f"{held} is held here for a workflow that runs on trusted hosts only")

    def forward(self, route: Route) -> None:
        """Refuse a node caller a Forward of ``route``'s request when it may not hold the route."""
        c = self.claims()
        if c is None or c.is_coordinator or may_hold(route, c.tier, c.trusted):
            return
        self._refuse("Forward", c, route.workflow, "this request's workflow runs on trusted hosts only")

    def _refuse(self, method: str, c: Claims, workflow: str, what: str) -> None:
        why = f"is a {c.tier} host" if c.trusted else "is not trusted by the operator"
        self.refusals.labels(method).inc()
        log.warning("trusted_only call refused", extra=kv(method=method, caller=c.node_id, caller_tier=c.tier,
                                                          caller_trusted=c.trusted, workflow=workflow, what=what))
        raise PermissionDenied(f"{method} refused: {what}, and the calling node {c.node_id} {why}",
                               hint="an operator trusts a node with `atoll nodes trust NODE`; its next node token "
                                    "says so")
