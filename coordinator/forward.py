"""The coordinator's ``Invoke`` (and its OpenAI door), kept for convenience: the request is
forwarded to an agent's entry in the workflow's source region, which runs it on the data plane.

The coordinator takes no part in the request's path beyond this hop: it checks that the caller
may see the workflow, wakes a workflow at zero, and passes the call (its trace context and
request id included) to an entry, streaming the entry's answer back as it comes. The caller's
API key stays here: the entry gets a caller token instead (``Issuer.caller_token``: the key's
tenant and role, for that one node, expiring within minutes), so a host that reports an entry
address, a renter's included, never sees a key it could use anywhere else. Entries of the source's region come first, in turn; an entry that cannot be reached gives
way to the next, and one that has not yet received the newest routing state or key set (a
workflow or key created a moment ago) is given up to ``KEY_WAIT_S`` to catch up. An answer
that came whole (its ``done`` message) stands even when the entry vanishes before the call's
status (a preempted host: the caller has its answer).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import AsyncIterator, Callable, Sequence

import grpc

from atoll.core.apikeys import Identity
from atoll.core.errors import Unavailable
from atoll.core.rpc import PEER_CHANNEL_OPTIONS, error_from_rpc
from atoll.wire.dataplane import EntryInfo, Invocation, entry_stub, invocation_to_pb

PASSED_ON = ("traceparent", "tracestate", "x-request-id")     # never the caller's API key
MAX_CHANNELS = 256          # channels kept to entries; past this, those no entry reports are closed
KEY_WAIT_S = 2.0            # how long an entry may lag behind a key or a workflow new here
# what an entry answers when it lags behind: a key or workflow it has not heard of yet
LAGGING = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}


class EntryForwarder:
    def __init__(self, entries: Callable[[str, str], Sequence[EntryInfo]],
                 credentials: grpc.ChannelCredentials | None = None,
                 current: Callable[[str], bool] = lambda node_id: True,
                 mint: Callable[[Identity, str], str] | None = None):
        """``entries(region, workflow)``: the entries that may take the workflow, the region's
        first; ``current(node id)``: whether that entry holds the routing state and key set this
        coordinator last decided for it; ``mint(identity, node id)``: the caller token that
        identity presents at that node's entry."""
        self.entries, self.credentials, self.current, self.mint = entries, credentials, current, mint
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._turn = itertools.count()

    def _stub(self, address: str):
        ch = self._channels.get(address)
        if ch is None:
            if len(self._channels) >= MAX_CHANNELS:
                self._drop_unlisted()
            ch = self._channels[address] = (
                grpc.aio.secure_channel(address, self.credentials, options=PEER_CHANNEL_OPTIONS) if self.credentials
                else grpc.aio.insecure_channel(address, options=PEER_CHANNEL_OPTIONS))
        return entry_stub(ch)

    def _drop_unlisted(self) -> None:
        """Close the channels to addresses no entry reports any more (a host that changes its
        entry address at every heartbeat would otherwise leave one channel behind each time)."""
        listed = {e.address for e in self.entries("", "")}
        for address in [a for a in self._channels if a not in listed]:
            asyncio.ensure_future(self._channels.pop(address).close())

    def order(self, region: str, workflow: str) -> list[EntryInfo]:
        """The entries to try: the region's, starting at the next in turn, then the others."""
        es = list(self.entries(region, workflow))
        if not es:
            raise Unavailable("no agent serves an entry for this workflow", hint="see `atoll nodes`")
        local = [e for e in es if e.region == region] or es
        rest = [e for e in es if e not in local]
        n = next(self._turn) % len(local)
        return local[n:] + local[:n] + rest

    async def invoke(self, inv: Invocation, *, region: str, timeout: float, metadata: Sequence[tuple[str, str]],
                     carried_by: str = "", caller: Identity | None = None) -> AsyncIterator:
        """The entry's answer messages (``InvokeResponse``) to ``inv``, passed through unchanged.
        ``carried_by``: the workflow whose placement rules choose the entries when ``inv`` names
        a ``base:adapter`` model (a trusted_only workflow's adapter never enters at a renter);
        ``caller``: who the coordinator identified (None while keys are not enforced)."""
        deadline = time.monotonic() + timeout
        passed = tuple((k, v) for k, v in metadata if k in PASSED_ON)
        last: grpc.aio.AioRpcError | None = None
        for entry in self.order(region, carried_by or inv.workflow):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            md = passed
            if caller is not None and self.mint is not None:
                md = passed + (("authorization", "Bearer " + self.mint(caller, entry.node_id)),)
            req = invocation_to_pb(inv, timeout_seconds=left)
            key_wait_end = time.monotonic() + KEY_WAIT_S
            while True:
                answered = done = False
                try:
                    async for msg in self._stub(entry.address).Invoke(req, timeout=left + 1.0, metadata=md or None):
                        answered, done = True, done or msg.done
                        yield msg
                    return
                except grpc.aio.AioRpcError as exc:
                    last = exc
                    if done:        # the whole answer came; the entry went away before its status
                        return
                    if answered:
                        raise passed_on(exc) from None
                    code = exc.code()
                    if code in LAGGING and not self.current(entry.node_id) \
                            and time.monotonic() < min(deadline, key_wait_end):
                        await asyncio.sleep(0.05)         # the entry has not received the newest state yet
                        left = deadline - time.monotonic()
                        req.timeout_seconds = max(left, 0.001)
                        continue
                    if code == grpc.StatusCode.PERMISSION_DENIED and "another node" in (exc.details() or ""):
                        break               # the host at that address is not the node it was listed as
                    if code != grpc.StatusCode.UNAVAILABLE:
                        raise passed_on(exc) from None
                    break
        if last is not None:
            raise Unavailable(f"no entry answered: {last.code().name}: {last.details()}")
        raise Unavailable("deadline passed before an entry answered")

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()


def passed_on(exc: grpc.aio.AioRpcError):
    """The entry's refusal as this coordinator answers it: the same status and words."""
    return type(error_from_rpc(exc))(exc.details() or exc.code().name)
