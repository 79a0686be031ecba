"""The ``DataPlane`` service: another agent hands a request to this one.

``Forward`` names a stage and the replica of it on this node that the sender picked, with the
outputs of earlier stages that the rest of the route reads. This agent runs the stage on its
own engine and then goes on along the route (:meth:`~.chain.DataPlane.run`), answering the last
stage's stream and result with every stage run from here on. A failure answers its status code
and, in trailing metadata (``atoll-failed-stage``), the stage that failed: the sender retries
another replica only when it is the stage it handed on.

Who may call: another node presenting its node token, checked by the Worker port's
:class:`~atoll.agent.guard.WorkerGuard` against the authorization table (``atoll.core.access``),
on top of the port's mutual TLS when configured; ``admit(route)`` then refuses a caller that may
not hold the request's route (``agent/carry.py``: a ``trusted_only`` workflow and a node the
operator does not trust).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import grpc

from atoll.agent.dataplane.chain import FAILED_STAGE, DataPlane, Request
from atoll.agent.dataplane.trace import start_span
from atoll.core import logs
from atoll.core.errors import REQUEST_FAULT, AtollError, FailedPrecondition
from atoll.core.logs import kv
from atoll.core.rpc import check_parsed, status_code
from atoll.specs.routing import Route
from atoll.wire.dataplane import delta_message, done_message, forwarded_from_pb
from atoll.wire.worker import Delta

log = logging.getLogger("atoll.agent")


class HopService:
    def __init__(self, plane: DataPlane, admit: Callable[[Route], None] = lambda route: None):
        self.plane, self.admit = plane, admit

    async def Forward(self, request, context):
        t0 = time.monotonic()
        task = getattr(request, "task", "")
        span = None
        try:
            check_parsed(request)
            fw = forwarded_from_pb(request)
            span = start_span(context.invocation_metadata(), "hop", fw.request_id)
            self.plane.metrics.series(self.plane.metrics.hops, "in").inc()
            cr = self.plane.compiled.get(fw.workflow)
            k = cr.index.get(fw.task) if cr is not None else None
            if k is None:
                raise FailedPrecondition(f"no route for {fw.workflow!r} stage {fw.task!r} on this node (yet)")
            self.admit(cr.route)
            cs = cr.stages[k]
            ep = cs.by_replica.get(fw.replica_id) or next(
                (e for e in cs.endpoints if self.plane._is_local(e)), None)
            if ep is None or not self.plane._is_local(ep):
                raise FailedPrecondition(f"replica {fw.replica_id!r} of {fw.task!r} is not on this node")
            left = context.time_remaining()
            req = Request(fw.workflow, fw.text, time.monotonic() + (left if left is not None else 60.0), span,
                          fw.stream, fw.sink, fw.tenant, fw.messages, fw.prompt_ids)

            async def on_delta(d: Delta) -> None:
                await context.write(delta_message(d, fw.request_id))

            outcome = await self.plane.run(cr, k, req, dict(fw.outputs), ep.location, on_delta if fw.stream else None,
                                           first=ep)
            out = {"text": outcome.output} if isinstance(outcome.output, str) else {"embedding": outcome.output}
            await context.write(done_message(out, outcome.stages, fw.request_id, fw.stream, outcome.choices))
            logs.event(log, logging.INFO, "hop", **span.fields(), workflow=fw.workflow, task=fw.task, outcome="ok",
                       ms=round((time.monotonic() - t0) * 1000, 2))
            if self.plane.exporter is not None:
                span.attrs.update({"atoll.workflow": fw.workflow, "atoll.task": fw.task})
                self.plane.exporter.export(span, time.time(), True)
        except AtollError as exc:
            failed = getattr(exc, "stage", "") or task
            if span is not None:
                log.warning("hop failed", extra=kv(**span.fields(), task=task, failed_stage=failed, error=str(exc)[:300]))
                if self.plane.exporter is not None:
                    self.plane.exporter.export(span, time.time(), False, str(exc))
            trailing = ((FAILED_STAGE, failed),) + (((REQUEST_FAULT, "request"),) if exc.request_fault else ())
            context.set_trailing_metadata(trailing)
            await context.abort(status_code(exc), str(exc)[:2000])
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never a crashed server
            log.exception("forward failed")
            context.set_trailing_metadata(((FAILED_STAGE, task),))
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in Forward: {type(exc).__name__}")
