"""Workflow names are one namespace for every tenant (routes, the data plane and the OpenAI
door's model ids are keyed by them), so a name another tenant holds cannot be submitted. What
SubmitWorkflow says then must be no more than that: not whose it is, nor anything of that
workflow. Before, a dry run under another tenant's name planned as that workflow's replacement
(its nodes counted as free, its measured profiles used), and so answered PLANNED where every
other RPC said NOT_FOUND."""

from __future__ import annotations

import asyncio

import pytest

from atoll.coordinator import auth
from atoll.core.errors import AlreadyExists, NotFound

from .test_placement_fairness import manager, spec


def as_tenant(tenant: str, coro_fn):
    """Run ``coro_fn()`` as a user of ``tenant`` (what the auth interceptor sets for an API key)."""
    async def main():
        auth.current.set(auth.Identity(f"key-{tenant}", tenant, "user"))
        return await coro_fn()
    return asyncio.run(main())


def test_another_tenants_workflow_name_is_refused_without_revealing_the_workflow(tmp_path):
    wm = manager(tmp_path, 1, None)          # one node: tenant a's workflow holds it
    rec = as_tenant("team-a", lambda: wm.submit(spec(tmp_path, "acme-bot"), "acme-bot.yaml", tenant="team-a"))
    assert rec.assignments

    def submit_b(dry_run: bool):
        return as_tenant("team-b", lambda: wm.submit(spec(tmp_path, "acme-bot"), "acme-bot.yaml", dry_run=dry_run,
                                                     tenant="team-b"))

    async def get():
        return wm.get("acme-bot")
    with pytest.raises(NotFound):
        as_tenant("team-b", get)
    answers = []
    for dry_run in (True, False):
        with pytest.raises(AlreadyExists) as ei:
            submit_b(dry_run)
        answers.append(str(ei.value))
    assert answers[0] == answers[1] == ("workflow name 'acme-bot' is not available "
                                        "(workflow names are shared by all tenants: pick another name)")
    assert "team-a" not in answers[0] and "yours" not in answers[0]
    assert wm.records["acme-bot"].tenant == "team-a" and len(wm.records) == 1

    # the owner still dry-runs a replacement of its own workflow, and cannot submit it twice
    again = as_tenant("team-a", lambda: wm.submit(spec(tmp_path, "acme-bot"), "acme-bot.yaml", dry_run=True,
                                                  tenant="team-a"))
    assert again.state == "PLANNED" and again.assignments
    with pytest.raises(AlreadyExists, match="is taken"):
        as_tenant("team-a", lambda: wm.submit(spec(tmp_path, "acme-bot"), "acme-bot.yaml", tenant="team-a"))
