"""The agent daemon: one per host.

It is an ordered list of periodic duties (STYLE.md 7). The order matters: the heartbeat duty
runs first because the coordinator's view of the node (and every later duty's instructions)
depends on it; the capacity refresh feeds the next heartbeat; duties added later (reconcile
assignments, report throughput) consume what the heartbeat delivered.

SIGTERM/SIGINT drains: health turns NOT_SERVING, the coordinator is told (it marks the node
DRAINING and acknowledges), in-flight work finishes, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import grpc

from atoll.agent.heartbeat import AgentRefused, HeartbeatClient
from atoll.agent.probe import probe
from atoll.errors import FailedPrecondition, Unauthenticated
from atoll.logs import kv
from atoll.rpc import CHANNEL_OPTIONS
from atoll.specs.common import load_yaml
from atoll.specs.config import AgentSettings
from atoll.specs.node import NodeConfig

log = logging.getLogger("atoll.agent")


@dataclass
class Duty:
    """A periodic duty: ``fn`` runs every ``period`` seconds (0: runs once, for its lifetime)."""

    name: str
    period: float
    fn: Callable[[], Awaitable[None]]


class NodeIdFile:
    """The node id lives in STATE_DIR/node_id so that it survives agent restarts."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "node_id"

    def read(self) -> str:
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            return ""

    def write(self, node_id: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(node_id + "\n")
        tmp.replace(self.path)


class Agent:
    def __init__(self, settings: AgentSettings, node: NodeConfig):
        self.settings = settings
        self.node = node
        self.state_dir = Path(settings.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ids = NodeIdFile(self.state_dir)
        self.channel: grpc.aio.Channel | None = None
        self.hb: HeartbeatClient | None = None
        self.duties: list[Duty] = []
        self._tasks: list[asyncio.Task] = []

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> "Agent":
        return cls(settings, load_yaml(NodeConfig, settings.config))

    def spec(self) -> dict:
        return self.node.model_dump(exclude={"simulated_hardware"})

    async def start(self) -> None:
        token = self.settings.join_token
        if not token:
            raise Unauthenticated("no join token", hint="pass --join-token or set ATOLL_JOIN_TOKEN "
                                  "(the coordinator keeps it in STATE_DIR/join-token)")
        self.channel = grpc.aio.insecure_channel(self.settings.coordinator, options=CHANNEL_OPTIONS)
        self.hb = HeartbeatClient(self.channel, join_token=token, spec=self.spec(),
                                  capacity=probe(self.node, str(self.state_dir)),
                                  node_id=self.ids.read(), on_node_id=self.ids.write,
                                  on_instruction=self._on_instruction)
        # The ordered duties: heartbeat first (everything else depends on the coordinator's view).
        self.duties = [
            Duty("heartbeat", 0, self.hb.run),
            Duty("capacity-refresh", 30.0, self._refresh_capacity),
        ]
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run_duty(d), name=d.name) for d in self.duties]

    async def _run_duty(self, duty: Duty) -> None:
        if duty.period <= 0:
            await duty.fn()
            return
        while True:
            await asyncio.sleep(duty.period)
            try:
                await duty.fn()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one failed round must not stop the duty
                log.exception("duty failed", extra=kv(duty=duty.name))

    async def _refresh_capacity(self) -> None:
        self.hb.set_capacity(probe(self.node, str(self.state_dir)))

    async def _on_instruction(self, ins) -> None:
        kind = ins.WhichOneof("kind")
        if kind == "drain" and not self.hb._draining:
            log.info("drained by the coordinator; taking no new work", extra=kv(node=self.node.name))

    async def wait_registered(self, timeout: float = 30.0) -> str:
        await asyncio.wait_for(self.hb.connected.wait(), timeout)
        return self.hb.node_id

    async def drain_and_stop(self) -> None:
        if self.hb is not None and self.hb.connected.is_set():
            acked = await self.hb.drain(timeout=5.0)
            log.info("drained", extra=kv(node=self.node.name, acknowledged=acked))
        await self.stop()

    async def stop(self) -> None:
        if self.hb is not None:
            self.hb.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.channel is not None:
            await self.channel.close()

    async def run_until_signal(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        hb_task = self._tasks[0]
        waiter = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({waiter, hb_task}, return_when=asyncio.FIRST_COMPLETED)
        if hb_task in done and not waiter.done():
            waiter.cancel()
            exc = hb_task.exception()
            await self.stop()
            if isinstance(exc, AgentRefused):
                raise FailedPrecondition(str(exc)) if exc.code != grpc.StatusCode.UNAUTHENTICATED \
                    else Unauthenticated(str(exc))
            if exc:
                raise exc
            return
        log.info("signal received: draining", extra=kv(node=self.node.name))
        await self.drain_and_stop()
