"""atoll keys create / list / revoke: API keys bound to a tenant."""

from __future__ import annotations

import json

from atoll.cli.admin import admin_flags, list_and_revoke


def register(sub) -> None:
    p = sub.add_parser("keys", help="manage API keys (tenants and roles)",
                       description="API keys bound to a tenant. The first key must be an admin key; after "
                                   "that every client call presents one (--api-key or ATOLL_API_KEY).")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    c = ksub.add_parser("create", help="create a key (printed once)")
    c.add_argument("--tenant", required=True)
    c.add_argument("--role", choices=["user", "admin"], default="user")
    ls, r = list_and_revoke(ksub, "list keys (ids, tenants, roles; never the keys)", "revoke a key by id")
    admin_flags(c, ls, r)
    p.set_defaults(func=run)


def run(ns) -> int:
    from atoll.cli.table import render
    from atoll.client import Client
    from atoll.core.errors import InvalidArgument

    if not getattr(ns, "keys_command", None):
        raise InvalidArgument("say what to do: atoll keys create | list | revoke")
    with Client(ns.coordinator, api_key=ns.api_key) as c:
        if ns.keys_command == "create":
            k = c.create_key(ns.tenant, ns.role)
            print(f"created key {k['id']} for tenant {k['tenant']} ({k['role']}); it is shown only once:")
            print(k["key"])
        elif ns.keys_command == "list":
            keys = c.list_keys()
            if ns.output == "json":
                print(json.dumps(keys, indent=2))
            else:
                print(render(["ID", "TENANT", "ROLE", "REVOKED"],
                             [[k["id"], k["tenant"], k["role"], "yes" if k["revoked"] else "no"] for k in keys]))
        else:
            k = c.revoke_key(ns.id)
            print(f"key {k['id']} ({k['tenant']}) revoked")
    return 0
