from atoll.proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("join_token", "node_id", "spec", "capacity", "status")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    node_id: str
    spec: _common_pb2.NodeSpec
    capacity: _common_pb2.NodeCapacity
    status: _common_pb2.NodeStatus
    def __init__(self, join_token: _Optional[str] = ..., node_id: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.NodeSpec, _Mapping]] = ..., capacity: _Optional[_Union[_common_pb2.NodeCapacity, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.NodeStatus, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("node_id", "session_token", "heartbeat_interval_seconds", "lease_seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_token: str
    heartbeat_interval_seconds: float
    lease_seconds: float
    def __init__(self, node_id: _Optional[str] = ..., session_token: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[float] = ..., lease_seconds: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "session_token", "seq", "capacity", "has_capacity", "status", "draining", "assignments_generation", "sent_unix")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HAS_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_GENERATION_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_token: str
    seq: int
    capacity: _common_pb2.NodeCapacity
    has_capacity: bool
    status: _common_pb2.NodeStatus
    draining: bool
    assignments_generation: int
    sent_unix: float
    def __init__(self, node_id: _Optional[str] = ..., session_token: _Optional[str] = ..., seq: _Optional[int] = ..., capacity: _Optional[_Union[_common_pb2.NodeCapacity, _Mapping]] = ..., has_capacity: _Optional[bool] = ..., status: _Optional[_Union[_common_pb2.NodeStatus, _Mapping]] = ..., draining: _Optional[bool] = ..., assignments_generation: _Optional[int] = ..., sent_unix: _Optional[float] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("replica_id", "workflow", "task", "variant", "base_model", "adapter", "adapter_source", "kind", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    workflow: str
    task: str
    variant: str
    base_model: str
    adapter: str
    adapter_source: str
    kind: str
    options: _containers.ScalarMap[str, str]
    def __init__(self, replica_id: _Optional[str] = ..., workflow: _Optional[str] = ..., task: _Optional[str] = ..., variant: _Optional[str] = ..., base_model: _Optional[str] = ..., adapter: _Optional[str] = ..., adapter_source: _Optional[str] = ..., kind: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("generation", "items")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    items: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, generation: _Optional[int] = ..., items: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class Instruction(_message.Message):
    __slots__ = ("assignments", "drain", "reregister")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    REREGISTER_FIELD_NUMBER: _ClassVar[int]
    assignments: Assignments
    drain: bool
    reregister: bool
    def __init__(self, assignments: _Optional[_Union[Assignments, _Mapping]] = ..., drain: _Optional[bool] = ..., reregister: _Optional[bool] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("ack_seq", "heartbeat_interval_seconds", "instructions")
    ACK_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    ack_seq: int
    heartbeat_interval_seconds: float
    instructions: _containers.RepeatedCompositeFieldContainer[Instruction]
    def __init__(self, ack_seq: _Optional[int] = ..., heartbeat_interval_seconds: _Optional[float] = ..., instructions: _Optional[_Iterable[_Union[Instruction, _Mapping]]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("tier", "region", "state")
    TIER_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    tier: str
    region: str
    state: _common_pb2.NodeState
    def __init__(self, tier: _Optional[str] = ..., region: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.NodeState, str]] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[_common_pb2.Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[_common_pb2.Node, _Mapping]]] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class DrainNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...
