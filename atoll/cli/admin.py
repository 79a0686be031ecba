"""What the admin verbs share (``atoll keys``, ``atoll tokens``): list and revoke actions, and the
coordinator and admin-key flags."""

from __future__ import annotations


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
