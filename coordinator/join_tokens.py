"""Join tokens: what lets a new host into the fleet, and as what.

Two kinds admit a node whose key is not yet bound to an id:

- the **bootstrap token** (``STATE_DIR/join-token`` or ``--join-token``): any tier, any
  region, never trusted;
- **scoped tokens** an admin creates (``atoll tokens create --tier renter --region us-west
  [--trusted] [--ttl 24h] [--uses N]``): only the listed tiers and regions (none listed: any),
  trusted when created ``--trusted``, until they expire, are revoked or are used up. They look
  like ``atj_<id>_<secret>``; the store keeps ``sha256(secret)`` in its meta table
  (``join_tokens``), re-read every second so that every coordinator of an HA deployment sees
  a token created or revoked on the leader.

A token is spent once per *new* node: a node whose key is bound to its id re-registers with its
key alone, within the scope recorded when it joined (``NodeRecord.scope``), as long as the token
is not revoked (an expired or used-up one does not matter). :func:`check_scope` is that rule.
Revoking a token cuts off the nodes that joined with it (:func:`revoked_nodes`): they can no
longer register or heartbeat, and every agent refuses their node tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Sequence

from atoll.core.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from atoll.specs.node import TIERS

META_KEY = "join_tokens"
BOOTSTRAP = "bootstrap"
MAX_REGIONS = 64


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What a join admits: tiers and regions (empty: any), trust, and the token's id."""

    tiers: tuple[str, ...]
    regions: tuple[str, ...]
    trusted: bool
    token: str                       # the token id, or "bootstrap"

    def scope(self) -> dict:
        return {"tiers": list(self.tiers), "regions": list(self.regions), "token": self.token}

    @classmethod
    def of_scope(cls, scope: dict, trusted: bool) -> "Grant":
        return cls(tuple(scope.get("tiers") or ()), tuple(scope.get("regions") or ()), trusted,
                   str(scope.get("token", "")))


def cut_off(rec, revoked_tokens: Collection[str]) -> bool:
    """Is the node ``rec`` out of the fleet for good: removed by the operator, or joined with a
    join token since revoked?"""
    return rec.tokens_before == math.inf or rec.scope.get("token") in revoked_tokens


def revoked_nodes(nodes: Iterable, revoked_tokens: Collection[str], now: float, keep: float) -> dict[str, float]:
    """node id -> unix seconds before which its node tokens are revoked: every token (infinity)
    of a node :func:`cut_off`; those issued before an untrust (``NodeRecord.tokens_before``) for
    ``keep`` seconds after it (the longest a token issued then can still be valid)."""
    out = {}
    for rec in nodes:
        if cut_off(rec, revoked_tokens):
            out[rec.id] = math.inf
        elif rec.tokens_before and now - rec.tokens_before < keep:
            out[rec.id] = rec.tokens_before
    return out


def describe(tiers: Sequence[str], regions: Sequence[str]) -> str:
    return (f"tier {'|'.join(tiers) if tiers else 'any'} in region "
            f"{'|'.join(regions) if regions else 'any'}")


def check_scope(grant: Grant, tier: str, region: str) -> None:
    """PermissionDenied naming what the token allows, when the host claims more."""
    if (grant.tiers and tier not in grant.tiers) or (grant.regions and region not in grant.regions):
        raise PermissionDenied(f"this node's join token allows {describe(grant.tiers, grant.regions)}; "
                               f"node.yaml claims tier {tier} in region {region}",
                               hint="fix node.yaml, or ask an admin for a token with that scope "
                                    "(`atoll tokens create --tier ... --region ...`)")


class JoinTokens:
    RELOAD_S = 1.0

    def __init__(self, store, bootstrap_hash: str, clock: Callable[[], float] = time.time):
        self.store = store
        self._bootstrap = bootstrap_hash
        self.clock = clock
        self._loaded = -1e18
        self._tokens: dict[str, dict] = {}

    def _fresh(self) -> dict[str, dict]:
        if time.monotonic() - self._loaded > self.RELOAD_S:
            self._tokens = json.loads(self.store.get_meta(META_KEY) or "{}")
            self._loaded = time.monotonic()
        return self._tokens

    def _save(self) -> None:
        self.store.set_meta(META_KEY, json.dumps(self._tokens, sort_keys=True))

    @staticmethod
    def view(rec: dict) -> dict:
        return {k: v for k, v in rec.items() if k != "hash"}

    def create(self, tiers: Sequence[str] = (), regions: Sequence[str] = (), trusted: bool = False,
               ttl: float = 0.0, uses: int = 0) -> tuple[dict, str]:
        bad = [t for t in tiers if t not in TIERS]
        if bad:
            raise InvalidArgument(f"unknown tier {bad[0][:40]!r}", hint="one of " + ", ".join(TIERS))
        if len(regions) > MAX_REGIONS or any(not r or len(r) > 64 for r in regions):
            raise InvalidArgument(f"regions: at most {MAX_REGIONS}, each 1-64 characters")
        if not (0 <= ttl <= 10 * 365 * 86400) or ttl != ttl:
            raise InvalidArgument("ttl must be 0 (never expires) or a positive number of seconds up to 10 years")
        if not 0 <= uses <= 1_000_000:
            raise InvalidArgument("uses must be 0 (unlimited) to 1000000")
        self._fresh()
        tid, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        now = self.clock()
        rec = {"id": tid, "hash": hash_token(secret), "tiers": sorted(set(tiers)), "regions": sorted(set(regions)),
               "trusted": bool(trusted), "expires": now + ttl if ttl else 0.0,
               "uses_left": uses if uses else -1, "uses": 0, "created": now, "revoked": False}
        self._tokens[tid] = rec
        self._save()                                       # durable before the token is shown
        return self.view(rec), f"atj_{tid}_{secret}"

    def list(self) -> list[dict]:
        return [self.view(r) for r in sorted(self._fresh().values(), key=lambda r: r["created"])]

    def revoke(self, tid: str) -> dict:
        rec = self._fresh().get(tid)
        if rec is None:
            raise NotFound(f"no join token with id {tid[:20]!r}", hint="see `atoll tokens list`")
        rec["revoked"] = True
        self._save()
        return self.view(rec)

    def revoked_ids(self) -> frozenset[str]:
        """The ids of the revoked tokens: the nodes that joined with one are cut off."""
        return frozenset(tid for tid, rec in self._fresh().items() if rec["revoked"])

    def admit(self, token: str) -> Grant:
        """The grant of a join token, or Unauthenticated saying why it admits nothing."""
        if token and self._bootstrap and hmac.compare_digest(hash_token(token), self._bootstrap):
            return Grant((), (), False, BOOTSTRAP)
        parts = (token or "").split("_", 2)
        if len(parts) != 3 or parts[0] != "atj":
            raise Unauthenticated("join token missing or wrong",
                                  hint="pass the coordinator's token with --join-token or ATOLL_JOIN_TOKEN")
        rec = self._fresh().get(parts[1])
        if rec is None or not hmac.compare_digest(rec["hash"], hash_token(parts[2])):
            raise Unauthenticated("join token missing or wrong",
                                  hint="pass the coordinator's token with --join-token or ATOLL_JOIN_TOKEN")
        if rec["revoked"]:
            raise Unauthenticated(f"join token {rec['id']} was revoked", hint="ask an admin for another")
        if rec["expires"] and self.clock() > rec["expires"]:
            raise Unauthenticated(f"join token {rec['id']} expired", hint="ask an admin for another")
        if rec["uses_left"] == 0:
            raise Unauthenticated(f"join token {rec['id']} is used up", hint="ask an admin for another")
        return Grant(tuple(rec["tiers"]), tuple(rec["regions"]), bool(rec["trusted"]), rec["id"])

    def spend(self, grant: Grant) -> None:
        """Count one node joined with ``grant``'s token (the bootstrap token is not counted)."""
        rec = self._fresh().get(grant.token)
        if rec is None:
            return
        rec["uses"] += 1
        if rec["uses_left"] > 0:
            rec["uses_left"] -= 1
        self._save()
