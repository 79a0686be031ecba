"""Keys are checked by one function at every door; an entry keeps the last key set it got and
forgets verified keys when the set changes; load reports start afresh on a new session."""

from __future__ import annotations

import pytest

from atoll.agent.dataplane.entry import Keys
from atoll.agent.dataplane.load import LoadBook
from atoll.coordinator.auth import KeyRing
from atoll.coordinator.store import SqliteStore
from atoll.core.apikeys import may_see
from atoll.core.errors import Unauthenticated, Unavailable


def test_an_agent_refuses_keys_exactly_as_the_coordinator(tmp_path):
    ring = KeyRing(SqliteStore(tmp_path / "s.db"))
    admin, akey = ring.create("ops", "admin")
    _, ukey = ring.create("team-a", "user", caller=ring.check(akey))
    keys = Keys()
    with pytest.raises(Unavailable):
        keys.identify(ukey)                    # nothing received yet: this entry cannot judge
    keys.set(ring.key_set())
    bad = ["", "Bearer x", "atoll_nope", "atoll_" + ukey.split("_")[1] + "_wrongsecret", "atoll_zzzzzz_secret"]
    for k in bad:
        with pytest.raises(Unauthenticated) as at_coord:
            ring.check(k)
        with pytest.raises(Unauthenticated) as at_agent:
            keys.identify(k)
        assert str(at_coord.value) == str(at_agent.value)
    ident = keys.identify(ukey)
    assert ident.tenant == "team-a" and not ident.is_admin
    assert may_see(ident, "team-a") and not may_see(ident, "team-b") and may_see(keys.identify(akey), "team-b")
    ring.revoke(ident.key_id, ring.check(akey))
    keys.set(ring.key_set())                   # the next push: the remembered key is forgotten
    with pytest.raises(Unauthenticated, match="revoked"):
        keys.identify(ukey)


def test_open_fleet_until_the_first_key(tmp_path):
    ring = KeyRing(SqliteStore(tmp_path / "s.db"))
    keys = Keys()
    keys.set(ring.key_set())
    assert keys.identify("") is None and not keys.keyset.enforced


def test_load_book_reports_changes_and_rebases_on_a_new_session():
    book = LoadBook()
    for _ in range(3):
        book.started("wf")
    book.finished("wf", True, {"gen": 4})
    book.finished("wf", False)
    (row,) = book.take()
    assert (row.started, row.finished, row.failed, row.completion_tokens, row.in_flight) == (3, 2, 1, {"gen": 4}, 1)
    assert book.take() == []
    book.started("wf")                         # then the coordinator goes away for a while ...
    book.rebase()                              # ... and a new session starts: what is in flight now
    (row,) = book.take()
    assert (row.started, row.finished, row.in_flight) == (2, 0, 2)


def test_requests_waiting_for_a_workflow_to_wake_are_bounded(monkeypatch):
    """Requests for a workflow at zero wait at their entry until it serves (each polling the
    routing state): at most MAX_WAKE_WAITERS per workflow wait at one entry, the next is
    RESOURCE_EXHAUSTED at once; they all go on when the workflow serves."""
    import asyncio
    import time

    import atoll.agent.dataplane.entry as entry_mod
    from atoll.agent.dataplane.chain import NodeSelf, Request
    from atoll.agent.dataplane.node import DataPlaneNode
    from atoll.agent.dataplane.trace import start_span
    from atoll.core.errors import ResourceExhausted
    from atoll.specs.routing import routing_state
    from tests.dataplane.helpers import endpoint, route

    monkeypatch.setattr(entry_mod, "MAX_WAKE_WAITERS", 3)
    wakes = []
    node = DataPlaneNode(node=lambda: NodeSelf("self", "self", "eu", "datacenter"), local=None,
                         local_address=lambda: "", connected=lambda: True, wake=lambda: wakes.append(1))
    node.on_instruction({"routing": routing_state([route("wf", state="IDLE", wakeable=True)])})
    svc = node.entry

    async def go():
        def req():
            return Request("wf", "hi", time.monotonic() + 10, start_span((), "test"))

        waiting = [asyncio.ensure_future(svc._ready(svc.resolver.resolve("wf", None), req(), None)) for _ in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(ResourceExhausted, match="3 requests already wait for workflow 'wf'"):
            await svc._ready(svc.resolver.resolve("wf", None), req(), None)
        node.on_instruction({"routing": routing_state([route("wf", endpoints=(endpoint("r1", "gen"),))])})
        done = await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert all(cr.route.state == "READY" for cr in done) and svc._waking == {}

    asyncio.run(go())
    assert len(wakes) == 3
