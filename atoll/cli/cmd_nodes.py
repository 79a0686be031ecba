"""atoll nodes / atoll drain: see and drain the fleet; atoll nodes trust | untrust | remove NODE."""

from __future__ import annotations

import json

from atoll.cli.views import node_table


def _coord(p) -> None:
    p.add_argument("--coordinator", default=None, metavar="ADDR",
                   help="coordinator HOST:PORT (default $ATOLL_COORDINATOR or 127.0.0.1:7070)")


def register(sub) -> None:
    p = sub.add_parser("nodes", help="list the fleet's nodes; trust, untrust or remove one",
                       description="One row per node. `atoll nodes trust NODE` (admin) lets trusted_only "
                                   "workflows run on it; `atoll nodes untrust NODE` moves them off it; "
                                   "`atoll nodes remove NODE` cuts it off (its tokens and key refused).")
    _coord(p)
    p.add_argument("action", nargs="?", choices=["trust", "untrust", "remove"],
                   help="trust, untrust or remove NODE (admin)")
    p.add_argument("node", nargs="?", help="node name or id (with trust | untrust | remove)")
    p.add_argument("--tier", choices=["datacenter", "renter", "edge"])
    p.add_argument("--region")
    p.add_argument("--state", type=str.upper, choices=["READY", "SUSPECT", "LOST", "DRAINING"])
    p.add_argument("--output", "-o", choices=["table", "json"], default="table")
    p.set_defaults(func=run_nodes)

    d = sub.add_parser("drain", help="drain a node (it takes no new work)",
                       description="Mark a node DRAINING; its agent is told over its heartbeat stream.")
    _coord(d)
    d.add_argument("node", help="node name or id")
    d.set_defaults(func=run_drain)


def run_nodes(ns) -> int:
    from atoll.client import Client
    from atoll.core.errors import InvalidArgument

    if ns.action:
        if not ns.node:
            raise InvalidArgument(f"say which node: atoll nodes {ns.action} NODE")
        with Client(ns.coordinator) as c:
            if ns.action == "remove":
                n = c.remove_node(ns.node)
                print(f"node {n.name} ({n.id}) is removed: its tokens and its key are refused")
                return 0
            n = c.set_trust(ns.node, ns.action == "trust")
        print(f"node {n.name} ({n.id}) is {'trusted' if n.trusted else 'not trusted'}")
        return 0
    if ns.node:
        raise InvalidArgument(f"unexpected {ns.node!r}: atoll nodes [trust|untrust|remove NODE]")
    with Client(ns.coordinator) as c:
        nodes = c.nodes(tier=ns.tier, region=ns.region, state=ns.state)
    if ns.output == "json":
        print(json.dumps([n.to_dict() for n in nodes], indent=2))
    else:
        print(node_table(nodes) if nodes else "no nodes")
    return 0


def run_drain(ns) -> int:
    from atoll.client import Client

    with Client(ns.coordinator) as c:
        n = c.drain(ns.node)
    print(f"node {n.name} ({n.id}) is {n.state}")
    return 0
