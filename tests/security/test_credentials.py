"""Capability tokens and proofs of possession, pure: what verifies, and every way one does not."""

from __future__ import annotations

import base64

import pytest

from atoll.core import credentials as cred
from atoll.core.errors import InvalidArgument, PermissionDenied, Unauthenticated

KEY = cred.new_private_key()
NOW = 1_700_000_000.0


def token(**over):
    kw = dict(sub=cred.COORDINATOR, aud="node-1234", scopes=[cred.SCOPE_INFER], now=NOW, ttl=300)
    kw.update(over)
    return cred.sign_token(kw.pop("key", KEY), **kw)


def test_a_token_verifies_with_the_issuers_key_and_says_what_it_grants():
    c = cred.verify_token(KEY.public_key(), token(), now=NOW + 10, audience="node-1234", scope=cred.SCOPE_INFER)
    assert (c.sub, c.aud, c.is_coordinator, c.node_id, c.scopes) == ("coordinator", "node-1234", True, "",
                                                                      (cred.SCOPE_INFER,))
    n = cred.verify_token(KEY.public_key(), token(sub=cred.node_subject("n-1"), aud=cred.ANY_NODE), now=NOW,
                          audience="any-node")
    assert n.node_id == "n-1" and not n.is_coordinator


def test_a_node_token_says_whether_its_node_is_trusted_and_its_tier_and_that_cannot_be_edited():
    node = token(sub=cred.node_subject("n-1"), aud=cred.ANY_NODE, trusted=True, tier="datacenter")
    c = cred.verify_token(KEY.public_key(), node, now=NOW)
    assert (c.trusted, c.tier) == (True, "datacenter")
    plain = cred.verify_token(KEY.public_key(), token(sub=cred.node_subject("n-2"), aud=cred.ANY_NODE, tier="renter"),
                              now=NOW)
    assert (plain.trusted, plain.tier) == (False, "renter")
    coord = cred.verify_token(KEY.public_key(), token(trusted=True, tier="datacenter"), now=NOW)
    assert (coord.trusted, coord.tier) == (False, "")          # a coordinator token carries neither
    head, body, sig = token(sub=cred.node_subject("n-2"), aud=cred.ANY_NODE, tier="renter").split(".")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).replace(b'"trusted":false', b'"trusted":true')
    edited = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert edited != body
    with pytest.raises(Unauthenticated, match="does not verify"):
        cred.verify_token(KEY.public_key(), f"{head}.{edited}.{sig}", now=NOW)


@pytest.mark.parametrize("bad", ["", "atoll_abc_def", "atc1.", "atc1.x.y", "atc1.e30.AAAA", "atc1." + "A" * 5000])
def test_malformed_tokens_are_unauthenticated(bad):
    with pytest.raises(Unauthenticated):
        cred.verify_token(KEY.public_key(), bad, now=NOW)


def test_forged_tampered_and_expired_tokens_are_refused():
    other = cred.new_private_key()
    with pytest.raises(Unauthenticated, match="does not verify"):
        cred.verify_token(KEY.public_key(), token(key=other), now=NOW)
    head, body, sig = token().split(".")
    forged_body = cred.sign_token(other, sub="coordinator", aud="*", scopes=cred.SCOPES, now=NOW, ttl=9e9).split(".")[1]
    with pytest.raises(Unauthenticated):
        cred.verify_token(KEY.public_key(), f"{head}.{forged_body}.{sig}", now=NOW)   # a body swapped in
    with pytest.raises(Unauthenticated, match="expired"):
        cred.verify_token(KEY.public_key(), token(ttl=60), now=NOW + 60 + cred.CLOCK_SKEW_S + 1)
    cred.verify_token(KEY.public_key(), token(ttl=60), now=NOW + 60 + cred.CLOCK_SKEW_S - 1)   # skew allowed


def test_audience_and_scope_narrow_a_valid_token():
    with pytest.raises(PermissionDenied, match="another node"):
        cred.verify_token(KEY.public_key(), token(aud="node-1234"), now=NOW, audience="node-9999")
    with pytest.raises(PermissionDenied, match="worker.manage"):
        cred.verify_token(KEY.public_key(), token(), now=NOW, scope=cred.SCOPE_MANAGE)
    with pytest.raises(InvalidArgument):
        token(scopes=["root"])


def test_proofs_bind_key_id_time_and_nonce_and_cannot_be_replayed():
    nonces = cred.NonceCache()
    p = cred.make_proof(KEY, "node-1234", NOW)
    assert cred.check_proof(p, "node-1234", NOW + 5, nonces) == ""
    assert cred.check_proof(p, "node-1234", NOW + 6, nonces) == "replayed_proof"
    q = cred.make_proof(KEY, "node-1234", NOW)
    assert cred.check_proof(q, "node-9999", NOW, nonces) == "bad_signature"          # signed for another id
    assert cred.check_proof(cred.make_proof(KEY, "", NOW - 3600), "", NOW, nonces) == "stale_proof"
    swapped = cred.Proof(cred.public_bytes(cred.new_private_key()), q.unix, q.nonce, q.signature)
    assert cred.check_proof(swapped, "node-1234", NOW, nonces) == "bad_signature"    # someone else's key
    assert cred.check_proof(cred.Proof(b"", NOW, "n", b""), "", NOW, nonces) == "no_key"
    assert cred.check_proof(cred.Proof(b"short", NOW, "n", b"x"), "", NOW, nonces) == "bad_signature"


def test_the_nonce_cache_forgets_old_nonces_and_stays_bounded():
    c = cred.NonceCache(window=10, limit=3)
    assert c.add("a", 0) and not c.add("a", 1)
    assert c.add("b", 1) and c.add("c", 2) and c.add("d", 3)   # the oldest goes to keep it at 3
    assert c.add("a", 4)
    c2 = cred.NonceCache(window=10)
    c2.add("x", 0)
    assert c2.add("x", 25)                                      # long past the window: forgotten


def test_keys_round_trip_through_pem_and_raw_bytes():
    pem = cred.private_to_pem(KEY)
    assert cred.public_bytes(cred.private_from_pem(pem)) == cred.public_bytes(KEY)
    assert cred.public_bytes(cred.public_from_bytes(cred.public_bytes(KEY))) == cred.public_bytes(KEY)
    with pytest.raises(InvalidArgument):
        cred.private_from_pem(b"not a key")
    with pytest.raises(InvalidArgument):
        cred.public_from_bytes(b"123")


def test_a_caller_token_names_one_node_grants_only_entry_invoke_and_carries_the_keys_tenant_and_role():
    tok = token(sub=cred.key_subject("k-1"), aud="node-1", scopes=[cred.SCOPE_ENTRY], tenant="team-a", role="user")
    c = cred.verify_token(KEY.public_key(), tok, now=NOW, audience="node-1", scope=cred.SCOPE_ENTRY)
    assert (c.is_caller, c.key_id, c.tenant, c.role, c.node_id, c.is_coordinator) == \
        (True, "k-1", "team-a", "user", "", False)
    with pytest.raises(PermissionDenied):               # at another node
        cred.verify_token(KEY.public_key(), tok, now=NOW, audience="node-2")
    with pytest.raises(PermissionDenied):               # for anything but an entry's Invoke
        cred.verify_token(KEY.public_key(), tok, now=NOW, audience="node-1", scope=cred.SCOPE_INFER)
    for bad in (dict(scopes=[cred.SCOPE_ENTRY, cred.SCOPE_INFER]), dict(scopes=[cred.SCOPE_FETCH]),
                dict(aud=cred.ANY_NODE)):
        with pytest.raises(InvalidArgument):
            token(**{"sub": cred.key_subject("k-1"), "aud": "node-1", "scopes": [cred.SCOPE_ENTRY], **bad})
    tampered = tok.split(".")
    body = base64.urlsafe_b64decode(tampered[1] + "=" * (-len(tampered[1]) % 4)).replace(b'"user"', b'"admin"')
    tampered[1] = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated):                # the role cannot be edited
        cred.verify_token(KEY.public_key(), ".".join(tampered), now=NOW, audience="node-1")
