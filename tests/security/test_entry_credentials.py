"""No API key leaves the coordinator for an agent's entry. A renter that reports an entry
address of its own gets, from the coordinator's forwarded Invoke (gRPC and the OpenAI door) and
from SDK clients that found it through ListEntries, only caller tokens: issued for that one
node, granting only entry.invoke, refused by the coordinator and by every other entry, and
refused by the entry it names once the key it stands for is revoked. Before this rule the
coordinator passed the caller's key on, and a renter collected an admin key with it."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from atoll.client import Client
from atoll.core import credentials as cred
from atoll.core.errors import PermissionDenied, Unauthenticated

from .conftest import DC, RENTER, TOKEN, eventually, start_fleet
from .hostile import HostileAgent, recording_server

pytestmark = pytest.mark.integration


def _bearer_tokens(calls) -> list[str]:
    return [auth[len("Bearer "):] for _, auth in calls]


def test_a_renters_entry_never_receives_an_api_key(tmp_path):
    f = start_fleet(tmp_path, DC)
    srv, rec, evil_address = recording_server()
    evil = None
    try:
        with f.client("a") as c:
            sha = c.push(tmp_path / "adapter-a", "adapter")
            c.submit(str(f.workflow("wf1", adapter_path=sha)))
            c.wait_ready("wf1", 120)
        evil = HostileAgent(f.addr, dict(RENTER, name="evil-1"), TOKEN,
                            status={"entry_address": evil_address, "worker_address": ""})
        evil.register()
        evil.start()
        f.wait_ready("evil-1")
        with f.client("a") as c:
            listed = eventually(lambda: (es := c.entries(workflow="wf1")) and len(es) == 2 and es, 20,
                                "both entries listed")
            dc_entry = next(e["address"] for e in listed if e["node_name"] == "dc-1")
            for _ in range(4):                           # the forwarder takes the region's entries in turn
                assert c.invoke("wf1", {"text": "hi"}, timeout=60)["output"]
        req = urllib.request.Request(f.openai + "/completions", method="POST",
                                     data=json.dumps({"model": "wf1", "prompt": "hi", "max_tokens": 2}).encode(),
                                     headers={"Authorization": "Bearer " + f.keys["a"],
                                              "Content-Type": "application/json"})
        for _ in range(2):
            with urllib.request.urlopen(req, timeout=60) as r:
                assert r.status == 200

        forwarded = [c for c in rec.calls if c[0].endswith("/Invoke")]
        assert len(forwarded) >= 2, rec.calls
        keys = set(f.keys.values())
        for tok in _bearer_tokens(forwarded):
            assert tok not in keys and cred.is_token(tok)
            claims = cred.verify_token(evil.coordinator_key, tok, now=time.time(), audience=evil.node_id,
                                       scope=cred.SCOPE_ENTRY)
            assert (claims.is_caller, claims.tenant, claims.role, claims.scopes) == \
                (True, "team-a", "user", (cred.SCOPE_ENTRY,))
        stolen = _bearer_tokens(forwarded)[0]

        # what the renter holds is worth nothing elsewhere: not at the coordinator ...
        with Client(f.addr, api_key=stolen) as thief:
            with pytest.raises(Unauthenticated, match="caller token"):
                thief.workflows()
        # ... nor at another entry
        with Client(f.addr, api_key=stolen, entries=dc_entry) as thief:
            with pytest.raises(PermissionDenied, match="another node"):
                thief.invoke("wf1", {"text": "hi"}, timeout=30)

        # a host that copies the real entry's address is not listed in its place
        copy = HostileAgent(f.addr, dict(RENTER, name="copy-1"), TOKEN,
                            status={"entry_address": dc_entry, "worker_address": ""})
        copy.register()
        copy.start()
        try:
            f.wait_ready("copy-1")
            with f.client("a") as c:
                listed = c.entries(workflow="wf1")
                assert sorted(e["node_name"] for e in listed) == ["dc-1", "evil-1"], listed
                for _ in range(4):
                    assert c.invoke("wf1", {"text": "hi"}, timeout=60)["output"]
        finally:
            copy.stop()

        # an SDK client that finds the entries through the coordinator presents their tokens
        seen = len(rec.calls)
        with Client(f.addr, api_key=f.keys["a"], region="us-east") as c:
            assert c.invoke("wf1", {"text": "hi"}, timeout=60)["output"]
            sdk_calls = rec.calls[seen:]
            assert sdk_calls, "the client ranks every listed entry with a Describe call"
            for tok in _bearer_tokens(sdk_calls):
                assert tok not in keys and cred.is_token(tok)
                cred.verify_token(evil.coordinator_key, tok, now=time.time(), audience=evil.node_id)

            # a revoked key's tokens stop at the entry once its key set says so
            with f.client("admin") as admin:
                key_id = next(k["id"] for k in admin.list_keys() if k["tenant"] == "team-a")
                admin.revoke_key(key_id)

            def refused():
                try:
                    c.invoke("wf1", {"text": "hi"}, timeout=30)
                    return False
                except Unauthenticated as exc:
                    return "revoked" in str(exc)
            eventually(refused, 20, "the dc entry refusing the revoked key's token")
    finally:
        if evil is not None:
            evil.stop()
        srv.stop(0)
        f.stop()
