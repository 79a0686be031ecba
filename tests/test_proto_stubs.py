"""The committed stubs must match a fresh generation from proto/v1/*.proto."""

from atoll.proto import gen


def test_generated_stubs_are_fresh():
    stale = gen.stale_files()
    assert stale == [], f"stale stubs {stale}: run `python -m atoll.proto.gen`"


def test_generated_modules_import_under_atoll_namespace():
    from atoll.proto.v1 import common_pb2, control_pb2, control_pb2_grpc, worker_pb2_grpc

    assert control_pb2.DESCRIPTOR.package == "atoll.v1"
    assert common_pb2.NodeState.Name(common_pb2.LOST) == "LOST"
    assert hasattr(control_pb2_grpc, "AgentServiceStub")
    assert hasattr(worker_pb2_grpc, "WorkerServicer")
