"""What the admin verbs share (``atoll keys``, ``atoll tokens``): list and revoke actions, and the
coordinator and admin-key flags."""

from __future__ import annotations

import json
from typing import Callable


def list_and_revoke(actions, list_help: str, revoke_help: str) -> tuple:
    """Add ``list`` (with --output) and ``revoke ID`` to ``actions``; returns their parsers."""
    ls = actions.add_parser("list", help=list_help)
    ls.add_argument("--output", "-o", choices=["table", "json"], default="table")
    r = actions.add_parser("revoke", help=revoke_help)
    r.add_argument("id")
    return ls, r


def admin_flags(*parsers) -> None:
    for q in parsers:
        q.add_argument("--coordinator", default=None, metavar="ADDR")
        q.add_argument("--api-key", default=None, help="an admin key (default $ATOLL_API_KEY)")


def run_admin(ns, action: str | None, usage: str, *, create: Callable[..., tuple[str, str]],
              listing: Callable[..., list[dict]], columns: list[str], row: Callable[[dict], list],
              revoke: Callable[..., str]) -> int:
    """Carry out ``action`` (create, list or revoke) against the coordinator.

    ``create(client)`` returns (the line to print, the secret shown once); ``listing(client)``
    the records, printed as JSON (``--output json``) or a table of ``columns`` with one
    ``row(record)`` each; ``revoke(client, id)`` the line to print."""
    # imported here, not at the top: the client loads grpc, and `atoll --help` stays fast without it
    from atoll.cli.table import render
    from atoll.client import Client
    from atoll.core.errors import InvalidArgument

    if not action:
        raise InvalidArgument(f"say what to do: {usage}")
    with Client(ns.coordinator, api_key=ns.api_key) as c:
        if action == "create":
            line, secret = create(c)
            print(f"{line}; it is shown only once:")
            print(secret)
        elif action == "list":
            records = listing(c)
            print(json.dumps(records, indent=2) if ns.output == "json" else
                  render(columns, [row(r) for r in records]))
        else:
            print(revoke(c, ns.id))
    return 0
