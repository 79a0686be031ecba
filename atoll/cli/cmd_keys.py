"""atoll keys create / list / revoke: API keys bound to a tenant."""

from __future__ import annotations

from atoll.cli.admin import admin_flags, list_and_revoke, run_admin


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
    def create(c):
        k = c.create_key(ns.tenant, ns.role)
        return f"created key {k['id']} for tenant {k['tenant']} ({k['role']})", k["key"]

    def revoke(c, key_id):
        k = c.revoke_key(key_id)
        return f"key {k['id']} ({k['tenant']}) revoked"

    return run_admin(ns, getattr(ns, "keys_command", None), "atoll keys create | list | revoke",
                     create=create, listing=lambda c: c.list_keys(), revoke=revoke,
                     columns=["ID", "TENANT", "ROLE", "REVOKED"],
                     row=lambda k: [k["id"], k["tenant"], k["role"], "yes" if k["revoked"] else "no"])
