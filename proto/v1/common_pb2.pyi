from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    READY: _ClassVar[NodeState]
    SUSPECT: _ClassVar[NodeState]
    LOST: _ClassVar[NodeState]
    DRAINING: _ClassVar[NodeState]
NODE_STATE_UNSPECIFIED: NodeState
READY: NodeState
SUSPECT: NodeState
LOST: NodeState
DRAINING: NodeState

class GpuInfo(_message.Message):
    __slots__ = ("index", "name", "memory_total_bytes", "memory_free_bytes", "compute_capability")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    memory_total_bytes: int
    memory_free_bytes: int
    compute_capability: str
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ..., compute_capability: _Optional[str] = ...) -> None: ...

class NodeCapacity(_message.Message):
    __slots__ = ("gpus", "cpu_cores", "memory_bytes", "disk_bytes", "simulated", "agent_version")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    cpu_cores: int
    memory_bytes: int
    disk_bytes: int
    simulated: bool
    agent_version: str
    def __init__(self, gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., simulated: _Optional[bool] = ..., agent_version: _Optional[str] = ...) -> None: ...

class NodeSpec(_message.Message):
    __slots__ = ("name", "tier", "region", "zone", "price_per_hour", "preemptible", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIBLE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tier: str
    region: str
    zone: str
    price_per_hour: float
    preemptible: bool
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., tier: _Optional[str] = ..., region: _Optional[str] = ..., zone: _Optional[str] = ..., price_per_hour: _Optional[float] = ..., preemptible: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("base_model", "adapters", "state", "message")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    adapters: _containers.RepeatedScalarFieldContainer[str]
    state: str
    message: str
    def __init__(self, base_model: _Optional[str] = ..., adapters: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("loaded", "queue_depth", "running_requests", "measured_throughput", "kv_cache_usage", "worker_address", "replica_states", "replica_messages", "replica_load_seconds", "cached_models", "ttft_seconds", "replica_queue_depth", "entry_address")
    class MeasuredThroughputEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ReplicaStatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ReplicaMessagesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ReplicaLoadSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ReplicaQueueDepthEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LOADED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_STATES_FIELD_NUMBER: _ClassVar[int]
    REPLICA_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    REPLICA_LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHED_MODELS_FIELD_NUMBER: _ClassVar[int]
    TTFT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    loaded: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    queue_depth: int
    running_requests: int
    measured_throughput: _containers.ScalarMap[str, float]
    kv_cache_usage: float
    worker_address: str
    replica_states: _containers.ScalarMap[str, str]
    replica_messages: _containers.ScalarMap[str, str]
    replica_load_seconds: _containers.ScalarMap[str, float]
    cached_models: _containers.RepeatedScalarFieldContainer[str]
    ttft_seconds: float
    replica_queue_depth: _containers.ScalarMap[str, int]
    entry_address: str
    def __init__(self, loaded: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ..., queue_depth: _Optional[int] = ..., running_requests: _Optional[int] = ..., measured_throughput: _Optional[_Mapping[str, float]] = ..., kv_cache_usage: _Optional[float] = ..., worker_address: _Optional[str] = ..., replica_states: _Optional[_Mapping[str, str]] = ..., replica_messages: _Optional[_Mapping[str, str]] = ..., replica_load_seconds: _Optional[_Mapping[str, float]] = ..., cached_models: _Optional[_Iterable[str]] = ..., ttft_seconds: _Optional[float] = ..., replica_queue_depth: _Optional[_Mapping[str, int]] = ..., entry_address: _Optional[str] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("id", "spec", "capacity", "state", "last_heartbeat_unix", "last_heartbeat_age_seconds", "registered_unix", "status", "heartbeats", "trusted")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_UNIX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEATS_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: NodeSpec
    capacity: NodeCapacity
    state: NodeState
    last_heartbeat_unix: float
    last_heartbeat_age_seconds: float
    registered_unix: float
    status: NodeStatus
    heartbeats: int
    trusted: bool
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[NodeSpec, _Mapping]] = ..., capacity: _Optional[_Union[NodeCapacity, _Mapping]] = ..., state: _Optional[_Union[NodeState, str]] = ..., last_heartbeat_unix: _Optional[float] = ..., last_heartbeat_age_seconds: _Optional[float] = ..., registered_unix: _Optional[float] = ..., status: _Optional[_Union[NodeStatus, _Mapping]] = ..., heartbeats: _Optional[int] = ..., trusted: _Optional[bool] = ...) -> None: ...
