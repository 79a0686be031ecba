"""atoll.wire: protobuf <-> domain conversion, one module per service.

These modules and the servicers are the only product code that imports the generated
``atoll.proto.v1.*_pb2`` modules (``tests/test_imports.py`` holds the rule). Domain code on
every side (coordinator, agent, SDK) passes plain values and typed domain objects in and out.

- :mod:`atoll.wire.nodes`: the node messages of ``common.proto`` (spec, capacity, status, node).
- :mod:`atoll.wire.agent_service`: ``AgentService`` (register, heartbeat stream, instructions),
  both sides: the agent's heartbeat client and the coordinator's servicer.
- :mod:`atoll.wire.worker`: ``Worker``, the calling side: :class:`~atoll.wire.worker.WorkerClient`.
- :mod:`atoll.wire.model_store`: ``ModelStore``, the calling side (push, fetch).
- :mod:`atoll.wire.client_service`: ``ClientService`` as the SDK sees it. The coordinator's side
  of that service is ``atoll.coordinator.convert``.
"""
