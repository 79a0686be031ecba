from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteStage(_message.Message):
    __slots__ = ("task", "kind", "prompt", "parents", "max_tokens", "temperature", "stop", "chat", "no_max_tokens")
    TASK_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    NO_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    task: str
    kind: str
    prompt: str
    parents: _containers.RepeatedScalarFieldContainer[str]
    max_tokens: int
    temperature: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    chat: bool
    no_max_tokens: bool
    def __init__(self, task: _Optional[str] = ..., kind: _Optional[str] = ..., prompt: _Optional[str] = ..., parents: _Optional[_Iterable[str]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., chat: _Optional[bool] = ..., no_max_tokens: _Optional[bool] = ...) -> None: ...

class RouteEndpoint(_message.Message):
    __slots__ = ("replica_id", "task", "variant", "node_id", "node_name", "region", "address", "weight", "adapter", "location", "base_model", "tier")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    task: str
    variant: str
    node_id: str
    node_name: str
    region: str
    address: str
    weight: float
    adapter: str
    location: str
    base_model: str
    tier: str
    def __init__(self, replica_id: _Optional[str] = ..., task: _Optional[str] = ..., variant: _Optional[str] = ..., node_id: _Optional[str] = ..., node_name: _Optional[str] = ..., region: _Optional[str] = ..., address: _Optional[str] = ..., weight: _Optional[float] = ..., adapter: _Optional[str] = ..., location: _Optional[str] = ..., base_model: _Optional[str] = ..., tier: _Optional[str] = ...) -> None: ...

class RouteFlow(_message.Message):
    __slots__ = ("src", "dst", "from_location", "to_location", "rate")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    FROM_LOCATION_FIELD_NUMBER: _ClassVar[int]
    TO_LOCATION_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    from_location: str
    to_location: str
    rate: float
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., from_location: _Optional[str] = ..., to_location: _Optional[str] = ..., rate: _Optional[float] = ...) -> None: ...

class WorkflowRoute(_message.Message):
    __slots__ = ("workflow", "tenant", "state", "trusted_only", "wakeable", "stages", "endpoints", "flows", "source_region", "source_location", "sink")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_ONLY_FIELD_NUMBER: _ClassVar[int]
    WAKEABLE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_REGION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LOCATION_FIELD_NUMBER: _ClassVar[int]
    SINK_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    tenant: str
    state: str
    trusted_only: bool
    wakeable: bool
    stages: _containers.RepeatedCompositeFieldContainer[RouteStage]
    endpoints: _containers.RepeatedCompositeFieldContainer[RouteEndpoint]
    flows: _containers.RepeatedCompositeFieldContainer[RouteFlow]
    source_region: str
    source_location: str
    sink: str
    def __init__(self, workflow: _Optional[str] = ..., tenant: _Optional[str] = ..., state: _Optional[str] = ..., trusted_only: _Optional[bool] = ..., wakeable: _Optional[bool] = ..., stages: _Optional[_Iterable[_Union[RouteStage, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[RouteEndpoint, _Mapping]]] = ..., flows: _Optional[_Iterable[_Union[RouteFlow, _Mapping]]] = ..., source_region: _Optional[str] = ..., source_location: _Optional[str] = ..., sink: _Optional[str] = ...) -> None: ...

class RoutingState(_message.Message):
    __slots__ = ("digest", "routes")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    digest: int
    routes: _containers.RepeatedCompositeFieldContainer[WorkflowRoute]
    def __init__(self, digest: _Optional[int] = ..., routes: _Optional[_Iterable[_Union[WorkflowRoute, _Mapping]]] = ...) -> None: ...

class ApiKeyEntry(_message.Message):
    __slots__ = ("id", "tenant", "role", "secret_sha256", "revoked")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant: str
    role: str
    secret_sha256: str
    revoked: bool
    def __init__(self, id: _Optional[str] = ..., tenant: _Optional[str] = ..., role: _Optional[str] = ..., secret_sha256: _Optional[str] = ..., revoked: _Optional[bool] = ...) -> None: ...

class KeySet(_message.Message):
    __slots__ = ("digest", "enforced", "keys", "revoked_nodes")
    class RevokedNodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_NODES_FIELD_NUMBER: _ClassVar[int]
    digest: int
    enforced: bool
    keys: _containers.RepeatedCompositeFieldContainer[ApiKeyEntry]
    revoked_nodes: _containers.ScalarMap[str, float]
    def __init__(self, digest: _Optional[int] = ..., enforced: _Optional[bool] = ..., keys: _Optional[_Iterable[_Union[ApiKeyEntry, _Mapping]]] = ..., revoked_nodes: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EntryLoad(_message.Message):
    __slots__ = ("workflow", "started", "finished", "failed", "completion_tokens", "in_flight")
    class CompletionTokensEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    started: int
    finished: int
    failed: int
    completion_tokens: _containers.ScalarMap[str, int]
    in_flight: int
    def __init__(self, workflow: _Optional[str] = ..., started: _Optional[int] = ..., finished: _Optional[int] = ..., failed: _Optional[int] = ..., completion_tokens: _Optional[_Mapping[str, int]] = ..., in_flight: _Optional[int] = ...) -> None: ...

class EntryInfo(_message.Message):
    __slots__ = ("node_name", "node_id", "region", "tier", "address", "degraded", "degraded_reason", "routing_age_seconds", "workflows", "token")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    ROUTING_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    node_id: str
    region: str
    tier: str
    address: str
    degraded: bool
    degraded_reason: str
    routing_age_seconds: float
    workflows: int
    token: str
    def __init__(self, node_name: _Optional[str] = ..., node_id: _Optional[str] = ..., region: _Optional[str] = ..., tier: _Optional[str] = ..., address: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[str] = ..., routing_age_seconds: _Optional[float] = ..., workflows: _Optional[int] = ..., token: _Optional[str] = ...) -> None: ...
