"""Node keys, proofs of possession and capability tokens: Ed25519 signatures, pure.

Three things are signed in atoll, all with Ed25519 (``cryptography``):

- **Proof of possession.** An agent proves at ``Register`` that it holds the private half of
  its node key: it signs ``register_message(node_id, public_key, unix, nonce)``. The
  coordinator checks the signature, that ``unix`` is within ``FRESHNESS_S`` of its clock and
  that the nonce was not seen within that window (:class:`NonceCache`), so a captured proof
  cannot be replayed.
- **Capability tokens.** The coordinator signs short-lived tokens with its signing key;
  agents verify them with the coordinator's public key, which they pinned at registration. A
  token is ``atc1.<claims>.<signature>`` (base64url, no padding) and its claims are
  :class:`Claims`: the subject (``coordinator`` or ``node:<id>``), the audience (a node id, or
  ``*`` for every node), the expiry (minutes away) and the scopes it grants (``SCOPES``); a
  node token also says whether the operator trusts the node and its tier, so that the node it
  calls can refuse it the data of ``trusted_only`` workflows. A *caller token* (subject
  ``key:<key id>``) stands for an API key's holder at one agent's entry: it carries the key's
  tenant and role, names that one node as its audience and grants only ``entry.invoke``. The
  coordinator gives one instead of the key itself whenever a call goes on to an agent (its own
  forwarded ``Invoke``, and the entries ``ListEntries`` returns to a client), so an API key is
  never sent to a host the tenant did not name.
- **Proof of holding a node token.** A node token names its holder's node key (``cnf``), and
  a node presenting it (to another node's Worker or DataPlane, or to the coordinator's model
  store) also presents ``atoll-proof: <unix>.<signature>``: its node key's signature over the
  callee (a node id, or ``coordinator``) and the time (:func:`make_call_proof`,
  :func:`check_call_proof`). A host that receives a node token on a call made to it (a renter
  serving as a hop) holds neither the key nor a proof for any other callee, so it cannot
  present the token elsewhere.
- **Keys on the wire** are the 32 raw bytes of the public key; keys at rest are PKCS#8 PEM.

Nothing here reads files, clocks or the network: callers pass ``now`` and keep the keys.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from atoll.core.errors import InvalidArgument, PermissionDenied, Unauthenticated

TOKEN_PREFIX = "atc1."
FRESHNESS_S = 60.0           # a proof's timestamp may be this far from the verifier's clock
CLOCK_SKEW_S = 30.0          # a token stays valid this long past its expiry (hosts' clocks differ)
MAX_TOKEN_BYTES = 4096

COORDINATOR = "coordinator"
PROOF_METADATA = "atoll-proof"      # a node token's holder proof rides in this metadata key
# The callee named in a proof made for the coordinator. The "@" keeps it out of the node ids'
# alphabet (letters, digits, '-'): a host registered as node "coordinator" once received, as a
# hop, proofs it could present to the model store.
COORDINATOR_AUDIENCE = "@coordinator"
NODE_PREFIX = "node:"
KEY_PREFIX = "key:"
ANY_NODE = "*"

# What a capability token may grant. The authorization table (atoll.core.access) names the
# scope each method needs from a token-holding caller.
SCOPE_INFER = "worker.infer"        # Worker.Generate, Worker.Embed
SCOPE_MANAGE = "worker.manage"      # Worker.LoadAdapter, UnloadAdapter, ListAdapters
SCOPE_FETCH = "store.fetch"         # ModelStore.Fetch of blobs the node's assignments reference
SCOPE_ENTRY = "entry.invoke"        # Entry.Invoke at the one node a caller token names
SCOPES = (SCOPE_INFER, SCOPE_MANAGE, SCOPE_FETCH, SCOPE_ENTRY)

PrivateKey = Ed25519PrivateKey
PublicKey = Ed25519PublicKey


# ------------------------------------------------------------------------------ keys
def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def private_from_pem(data: bytes, what: str = "private key") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"{what} is not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(f"{what} is not an Ed25519 key")
    return key


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key (of a private key's public half)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_from_bytes(raw: bytes, what: str = "public key") -> Ed25519PublicKey:
    if len(raw) != 32:
        raise InvalidArgument(f"{what} must be 32 bytes (Ed25519), got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(bytes(raw))


def fingerprint(raw_public: bytes) -> str:
    """A short printable name of a public key (for logs and error messages)."""
    return "ed25519:" + _b64(raw_public)[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ------------------------------------------------------------------------------ proofs
def register_message(node_id: str, public_key: bytes, unix: float, nonce: str) -> bytes:
    """What an agent signs at Register: its id (empty on a first join), its key, a time, a nonce."""
    return b"\x00".join((b"atoll-register-v1", node_id.encode(), public_key, repr(float(unix)).encode(),
                         nonce.encode()))


@dataclass(frozen=True)
class Proof:
    public_key: bytes
    unix: float
    nonce: str
    signature: bytes


def make_proof(key: Ed25519PrivateKey, node_id: str, now: float) -> Proof:
    nonce = secrets.token_hex(16)
    pub = public_bytes(key)
    return Proof(pub, now, nonce, key.sign(register_message(node_id, pub, now, nonce)))


class NonceCache:
    """Nonces seen within the freshness window (bounded: the oldest go first)."""

    def __init__(self, window: float = FRESHNESS_S, limit: int = 100_000):
        self.window, self.limit = window, limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, nonce: str, now: float) -> bool:
        """Record ``nonce``; False when it was seen within the window (a replay)."""
        while self._seen and (next(iter(self._seen.values())) < now - 2 * self.window
                              or len(self._seen) >= self.limit):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


def check_proof(proof: Proof, node_id: str, now: float, nonces: NonceCache) -> str:
    """Verify a Register proof; returns "" when good, else the refusal reason
    (``no_key`` | ``bad_signature`` | ``stale_proof`` | ``replayed_proof``)."""
    if not proof.public_key:
        return "no_key"
    try:
        pub = public_from_bytes(proof.public_key)
        if not (0 < len(proof.nonce) <= 128):
            return "bad_signature"
        pub.verify(proof.signature, register_message(node_id, proof.public_key, proof.unix, proof.nonce))
    except (InvalidArgument, InvalidSignature, ValueError):
        return "bad_signature"
    if not abs(now - proof.unix) <= FRESHNESS_S:
        return "stale_proof"
    if not nonces.add(proof.nonce, now):
        return "replayed_proof"
    return ""


# ------------------------------------------------------------------------------ tokens
@dataclass(frozen=True)
class Claims:
    sub: str                      # "coordinator" | "node:<id>" | "key:<API key id>"
    aud: str                      # a node id, or "*" for every node
    exp: float                    # unix seconds
    iat: float
    scopes: tuple[str, ...]
    trusted: bool = False         # node tokens: the operator trusts the node (trusted_only work)
    tier: str = ""                # node tokens: the node's tier, as it joined
    tenant: str = ""              # caller tokens: the API key's tenant
    role: str = ""                # caller tokens: the API key's role
    cnf: str = ""                 # node tokens: the holder's node key (base64url of the raw 32 bytes)

    @property
    def is_caller(self) -> bool:
        """A caller token: an API key's holder at the one entry it names."""
        return self.sub.startswith(KEY_PREFIX)

    @property
    def key_id(self) -> str:
        return self.sub[len(KEY_PREFIX):] if self.is_caller else ""

    @property
    def node_id(self) -> str:
        """The node a node token was issued to ("" for the coordinator's)."""
        return self.sub[len(NODE_PREFIX):] if self.sub.startswith(NODE_PREFIX) else ""

    @property
    def is_coordinator(self) -> bool:
        return self.sub == COORDINATOR


def node_subject(node_id: str) -> str:
    return NODE_PREFIX + node_id


def key_subject(key_id: str) -> str:
    return KEY_PREFIX + key_id


def sign_token(key: Ed25519PrivateKey, *, sub: str, aud: str, scopes: Iterable[str], now: float,
               ttl: float, trusted: bool = False, tier: str = "", tenant: str = "", role: str = "",
               holder: str = "") -> str:
    """A signed token. ``trusted`` and ``tier`` are claims of node tokens (``sub: node:<id>``)
    only, ``tenant`` and ``role`` of caller tokens (``sub: key:<id>``, which grant only
    ``entry.invoke`` and name one node); a coordinator token carries none of them."""
    scopes = tuple(sorted(set(scopes)))
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise InvalidArgument(f"unknown scopes {sorted(unknown)}", hint="one of " + ", ".join(SCOPES))
    claims = {"sub": sub, "aud": aud, "exp": round(now + ttl, 3), "iat": round(now, 3), "scopes": list(scopes)}
    if sub.startswith(NODE_PREFIX):
        claims.update(trusted=bool(trusted), tier=str(tier), cnf=str(holder))
    if sub.startswith(KEY_PREFIX):
        if scopes != (SCOPE_ENTRY,) or aud == ANY_NODE:
            raise InvalidArgument("a caller token grants entry.invoke only, at one named node")
        claims.update(tenant=str(tenant), role=str(role))
    body = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    payload = _b64(body)
    sig = key.sign((TOKEN_PREFIX + payload).encode())
    return f"{TOKEN_PREFIX}{payload}.{_b64(sig)}"


def is_token(text: str) -> bool:
    return bool(text) and text.startswith(TOKEN_PREFIX)


def verify_token(public: Ed25519PublicKey, token: str, *, now: float, audience: str | None = None,
                 scope: str | None = None, revoked: Mapping[str, float] | None = None) -> Claims:
    """The claims of a valid token, or Unauthenticated (bad, forged, expired, revoked) /
    PermissionDenied (another audience, a missing scope). ``audience``: this node's id (a token
    for ``*`` fits every node); None skips the check (the coordinator verifying its own tokens).
    ``revoked``: node id -> unix seconds; a node token issued before its node's time is refused."""
    if not is_token(token) or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise Unauthenticated("malformed capability token")
    _, payload, sig = token.split(".")
    try:
        public.verify(_unb64(sig), (TOKEN_PREFIX + payload).encode())
        d = json.loads(_unb64(payload))
        claims = Claims(sub=str(d["sub"]), aud=str(d["aud"]), exp=float(d["exp"]), iat=float(d["iat"]),
                        scopes=tuple(str(s) for s in d["scopes"]), trusted=d.get("trusted") is True,
                        tier=str(d.get("tier", "")), tenant=str(d.get("tenant", "")), role=str(d.get("role", "")),
                        cnf=str(d.get("cnf", "")))
    except InvalidSignature:
        raise Unauthenticated("capability token signature does not verify (not issued by this "
                              "fleet's coordinator)") from None
    except (ValueError, KeyError, TypeError):
        raise Unauthenticated("malformed capability token") from None
    if now > claims.exp + CLOCK_SKEW_S:
        raise Unauthenticated(f"capability token expired {now - claims.exp:.0f} s ago",
                              hint="the holder refreshes it from the coordinator")
    if audience is not None and claims.aud not in (ANY_NODE, audience):
        raise PermissionDenied("capability token was issued for another node")
    if revoked and claims.node_id and claims.iat < revoked.get(claims.node_id, float("-inf")):
        raise Unauthenticated(f"the node token of node {claims.node_id} was revoked",
                              hint="an operator revoked this node's join token or changed its trust; a node "
                                   "still admitted gets a fresh token from the coordinator")
    if scope is not None and scope not in claims.scopes:
        raise PermissionDenied(f"capability token does not grant {scope}")
    return claims


# ------------------------------------------------------------------------------ holder proofs
def call_message(audience: str, unix: int) -> bytes:
    """What a node signs to present its node token to ``audience`` (a node id, or
    :data:`COORDINATOR_AUDIENCE`, which no node id can equal)."""
    return b"\x00".join((b"atoll-call-v1", audience.encode(), str(int(unix)).encode()))


def make_call_proof(key: Ed25519PrivateKey, audience: str, now: float) -> str:
    """``<unix>.<signature>``: the holder of ``key`` calls ``audience`` around ``now``."""
    t = int(now)
    return f"{t}.{_b64(key.sign(call_message(audience, t)))}"


def check_call_proof(claims: Claims, proof: str, audience: str, now: float) -> None:
    """Unauthenticated unless ``proof`` is the node token's holder's signature for ``audience``,
    made within :data:`FRESHNESS_S` of ``now``."""
    if not claims.cnf:
        raise Unauthenticated("this node token names no holder key", hint="the holder gets a fresh token "
                                                                           "from the coordinator")
    try:
        if not proof or len(proof) > 256:
            raise ValueError
        t_text, sig = proof.split(".", 1)
        t = int(t_text)
        public_from_bytes(_unb64(claims.cnf), "the token's holder key").verify(_unb64(sig), call_message(audience, t))
    except (ValueError, InvalidSignature, InvalidArgument):
        raise Unauthenticated(f"a node token must come with its holder's proof for this callee "
                              f"({PROOF_METADATA}); it is missing or does not verify",
                              hint="a node token is good only from the node it was issued to") from None
    if abs(now - t) > FRESHNESS_S:
        raise Unauthenticated(f"the node token's holder proof is {abs(now - t):.0f} s old",
                              hint="hosts' clocks must agree within a minute")
