"""atoll tokens create / list / revoke: join tokens scoped to tiers and regions (admin)."""

from __future__ import annotations

import argparse
import re
import time

from atoll.cli.admin import admin_flags, list_and_revoke, run_admin

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """'90s', '30m', '24h', '7d' or plain seconds -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (for example 30m, 24h, 7d)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def register(sub) -> None:
    p = sub.add_parser("tokens", help="manage join tokens (which hosts may join, as what)",
                       description="Join tokens admit new hosts: only the tiers and regions listed (none: any), "
                                   "trusted only when created --trusted, until they expire or are used up. "
                                   "Admin only. The bootstrap token (STATE_DIR/join-token) admits any tier, "
                                   "never trusted.")
    tsub = p.add_subparsers(dest="tokens_command", metavar="ACTION")
    c = tsub.add_parser("create", help="create a join token (printed once)")
    c.add_argument("--tier", action="append", default=[], choices=["datacenter", "renter", "edge"],
                   help="a tier it may register (repeat for several; none: any)")
    c.add_argument("--region", action="append", default=[], help="a region it may register (repeat; none: any)")
    c.add_argument("--trusted", action="store_true", help="nodes joining with it are trusted (trusted_only work)")
    c.add_argument("--ttl", type=duration, default=0.0, help="expires after this long (30m, 24h, 7d; default never)")
    c.add_argument("--uses", type=int, default=0, help="at most this many nodes join with it (default unlimited)")
    ls, r = list_and_revoke(tsub, "list join tokens (never the tokens themselves)",
                            "revoke a join token by id (and cut off the nodes that joined with it)")
    admin_flags(c, ls, r)
    p.set_defaults(func=run)


def run(ns) -> int:
    def create(c):
        t = c.create_join_token(ns.tier, ns.region, trusted=ns.trusted, ttl=ns.ttl, uses=ns.uses)
        return f"created join token {t['id']} ({_scope(t)})", t["token"]

    def revoke(c, token_id):
        t = c.revoke_join_token(token_id)
        return f"join token {t['id']} revoked"

    now = time.time()
    return run_admin(ns, getattr(ns, "tokens_command", None), "atoll tokens create | list | revoke",
                     create=create, listing=lambda c: c.list_join_tokens(), revoke=revoke,
                     columns=["ID", "SCOPE", "EXPIRES", "USES", "LEFT", "REVOKED"],
                     row=lambda t: [t["id"], _scope(t), _expires(t["expires_unix"], now), str(t["uses"]),
                                    "unlimited" if t["uses_left"] < 0 else str(t["uses_left"]),
                                    "yes" if t["revoked"] else "no"])


def _expires(unix: float, now: float) -> str:
    if not unix:
        return "never"
    return "expired" if unix < now else f"in {(unix - now) / 3600:.1f} h"


def _scope(t: dict) -> str:
    tiers = ",".join(t["tiers"]) or "any tier"
    regions = ",".join(t["regions"]) or "any region"
    return f"{tiers} in {regions}" + (", trusted" if t["trusted"] else "")
