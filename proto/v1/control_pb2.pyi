from atoll.proto.v1 import common_pb2 as _common_pb2
from atoll.proto.v1 import routing_pb2 as _routing_pb2
from atoll.proto.v1 import worker_pb2 as _worker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("join_token", "node_id", "spec", "capacity", "status", "node_public_key", "proof_unix", "proof_nonce", "proof_signature")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NODE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PROOF_UNIX_FIELD_NUMBER: _ClassVar[int]
    PROOF_NONCE_FIELD_NUMBER: _ClassVar[int]
    PROOF_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    node_id: str
    spec: _common_pb2.NodeSpec
    capacity: _common_pb2.NodeCapacity
    status: _common_pb2.NodeStatus
    node_public_key: bytes
    proof_unix: float
    proof_nonce: str
    proof_signature: bytes
    def __init__(self, join_token: _Optional[str] = ..., node_id: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.NodeSpec, _Mapping]] = ..., capacity: _Optional[_Union[_common_pb2.NodeCapacity, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.NodeStatus, _Mapping]] = ..., node_public_key: _Optional[bytes] = ..., proof_unix: _Optional[float] = ..., proof_nonce: _Optional[str] = ..., proof_signature: _Optional[bytes] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("node_id", "session_token", "heartbeat_interval_seconds", "lease_seconds", "coordinator_public_key", "trusted")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_token: str
    heartbeat_interval_seconds: float
    lease_seconds: float
    coordinator_public_key: bytes
    trusted: bool
    def __init__(self, node_id: _Optional[str] = ..., session_token: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[float] = ..., lease_seconds: _Optional[float] = ..., coordinator_public_key: _Optional[bytes] = ..., trusted: _Optional[bool] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "session_token", "seq", "capacity", "has_capacity", "status", "draining", "assignments_generation", "sent_unix", "has_price", "price_per_hour", "preemptible", "routing_digest", "keys_digest", "entry_load")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HAS_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_GENERATION_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_FIELD_NUMBER: _ClassVar[int]
    HAS_PRICE_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIBLE_FIELD_NUMBER: _ClassVar[int]
    ROUTING_DIGEST_FIELD_NUMBER: _ClassVar[int]
    KEYS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ENTRY_LOAD_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_token: str
    seq: int
    capacity: _common_pb2.NodeCapacity
    has_capacity: bool
    status: _common_pb2.NodeStatus
    draining: bool
    assignments_generation: int
    sent_unix: float
    has_price: bool
    price_per_hour: float
    preemptible: bool
    routing_digest: int
    keys_digest: int
    entry_load: _containers.RepeatedCompositeFieldContainer[_routing_pb2.EntryLoad]
    def __init__(self, node_id: _Optional[str] = ..., session_token: _Optional[str] = ..., seq: _Optional[int] = ..., capacity: _Optional[_Union[_common_pb2.NodeCapacity, _Mapping]] = ..., has_capacity: _Optional[bool] = ..., status: _Optional[_Union[_common_pb2.NodeStatus, _Mapping]] = ..., draining: _Optional[bool] = ..., assignments_generation: _Optional[int] = ..., sent_unix: _Optional[float] = ..., has_price: _Optional[bool] = ..., price_per_hour: _Optional[float] = ..., preemptible: _Optional[bool] = ..., routing_digest: _Optional[int] = ..., keys_digest: _Optional[int] = ..., entry_load: _Optional[_Iterable[_Union[_routing_pb2.EntryLoad, _Mapping]]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("replica_id", "workflow", "task", "variant", "base_model", "adapter", "adapter_source", "kind")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    workflow: str
    task: str
    variant: str
    base_model: str
    adapter: str
    adapter_source: str
    kind: str
    def __init__(self, replica_id: _Optional[str] = ..., workflow: _Optional[str] = ..., task: _Optional[str] = ..., variant: _Optional[str] = ..., base_model: _Optional[str] = ..., adapter: _Optional[str] = ..., adapter_source: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("generation", "items")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    items: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, generation: _Optional[int] = ..., items: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("token", "expires_unix")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_unix: float
    def __init__(self, token: _Optional[str] = ..., expires_unix: _Optional[float] = ...) -> None: ...

class Instruction(_message.Message):
    __slots__ = ("assignments", "drain", "reregister", "routing", "keys", "credential")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    REREGISTER_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    assignments: Assignments
    drain: bool
    reregister: bool
    routing: _routing_pb2.RoutingState
    keys: _routing_pb2.KeySet
    credential: Credential
    def __init__(self, assignments: _Optional[_Union[Assignments, _Mapping]] = ..., drain: _Optional[bool] = ..., reregister: _Optional[bool] = ..., routing: _Optional[_Union[_routing_pb2.RoutingState, _Mapping]] = ..., keys: _Optional[_Union[_routing_pb2.KeySet, _Mapping]] = ..., credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

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

class SubmitWorkflowRequest(_message.Message):
    __slots__ = ("spec_yaml", "filename", "dry_run")
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    filename: str
    dry_run: bool
    def __init__(self, spec_yaml: _Optional[str] = ..., filename: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("replica_id", "task", "variant", "node_id", "node_name", "state", "worker_address", "region", "tier", "weight", "message", "fetch_seconds", "load_seconds", "warmup_seconds")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FETCH_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    task: str
    variant: str
    node_id: str
    node_name: str
    state: str
    worker_address: str
    region: str
    tier: str
    weight: float
    message: str
    fetch_seconds: float
    load_seconds: float
    warmup_seconds: float
    def __init__(self, replica_id: _Optional[str] = ..., task: _Optional[str] = ..., variant: _Optional[str] = ..., node_id: _Optional[str] = ..., node_name: _Optional[str] = ..., state: _Optional[str] = ..., worker_address: _Optional[str] = ..., region: _Optional[str] = ..., tier: _Optional[str] = ..., weight: _Optional[float] = ..., message: _Optional[str] = ..., fetch_seconds: _Optional[float] = ..., load_seconds: _Optional[float] = ..., warmup_seconds: _Optional[float] = ...) -> None: ...

class ProfileEntry(_message.Message):
    __slots__ = ("variant", "hardware", "declared_rps", "measured_rps", "source")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    DECLARED_RPS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_RPS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    variant: str
    hardware: str
    declared_rps: float
    measured_rps: float
    source: str
    def __init__(self, variant: _Optional[str] = ..., hardware: _Optional[str] = ..., declared_rps: _Optional[float] = ..., measured_rps: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("planner", "status", "variants", "hosts", "replicas", "routes", "compute_cost_per_hour", "transfer_cost_per_hour", "accuracy", "solve_seconds", "gap", "moved_replicas", "notes")
    PLANNER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SOLVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    MOVED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    planner: str
    status: str
    variants: _containers.RepeatedCompositeFieldContainer[PlanMember]
    hosts: _containers.RepeatedCompositeFieldContainer[PlanHostGroup]
    replicas: _containers.RepeatedCompositeFieldContainer[PlanReplica]
    routes: _containers.RepeatedCompositeFieldContainer[PlanRoute]
    compute_cost_per_hour: float
    transfer_cost_per_hour: float
    accuracy: float
    solve_seconds: float
    gap: float
    moved_replicas: int
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, planner: _Optional[str] = ..., status: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[PlanMember, _Mapping]]] = ..., hosts: _Optional[_Iterable[_Union[PlanHostGroup, _Mapping]]] = ..., replicas: _Optional[_Iterable[_Union[PlanReplica, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[PlanRoute, _Mapping]]] = ..., compute_cost_per_hour: _Optional[float] = ..., transfer_cost_per_hour: _Optional[float] = ..., accuracy: _Optional[float] = ..., solve_seconds: _Optional[float] = ..., gap: _Optional[float] = ..., moved_replicas: _Optional[int] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class PlanMember(_message.Message):
    __slots__ = ("task", "variant")
    TASK_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    task: str
    variant: str
    def __init__(self, task: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class PlanHostGroup(_message.Message):
    __slots__ = ("group", "pool", "count", "members", "cost_per_hour")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    group: str
    pool: str
    count: int
    members: _containers.RepeatedCompositeFieldContainer[PlanMember]
    cost_per_hour: float
    def __init__(self, group: _Optional[str] = ..., pool: _Optional[str] = ..., count: _Optional[int] = ..., members: _Optional[_Iterable[_Union[PlanMember, _Mapping]]] = ..., cost_per_hour: _Optional[float] = ...) -> None: ...

class PlanReplica(_message.Message):
    __slots__ = ("task", "variant", "pool", "location", "replicas", "rate", "utilization", "cost_per_hour", "shared_with")
    TASK_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    SHARED_WITH_FIELD_NUMBER: _ClassVar[int]
    task: str
    variant: str
    pool: str
    location: str
    replicas: int
    rate: float
    utilization: float
    cost_per_hour: float
    shared_with: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task: _Optional[str] = ..., variant: _Optional[str] = ..., pool: _Optional[str] = ..., location: _Optional[str] = ..., replicas: _Optional[int] = ..., rate: _Optional[float] = ..., utilization: _Optional[float] = ..., cost_per_hour: _Optional[float] = ..., shared_with: _Optional[_Iterable[str]] = ...) -> None: ...

class PlanRoute(_message.Message):
    __slots__ = ("src", "dst", "from_location", "to_location", "rate", "size_kb", "weight", "cost_per_hour")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    FROM_LOCATION_FIELD_NUMBER: _ClassVar[int]
    TO_LOCATION_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    SIZE_KB_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    from_location: str
    to_location: str
    rate: float
    size_kb: float
    weight: float
    cost_per_hour: float
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., from_location: _Optional[str] = ..., to_location: _Optional[str] = ..., rate: _Optional[float] = ..., size_kb: _Optional[float] = ..., weight: _Optional[float] = ..., cost_per_hour: _Optional[float] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("autoscale", "on_demand_floor", "failure_domains", "constraints")
    AUTOSCALE_FIELD_NUMBER: _ClassVar[int]
    ON_DEMAND_FLOOR_FIELD_NUMBER: _ClassVar[int]
    FAILURE_DOMAINS_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    autoscale: Autoscale
    on_demand_floor: OnDemandFloor
    failure_domains: FailureDomains
    constraints: PlacementConstraints
    def __init__(self, autoscale: _Optional[_Union[Autoscale, _Mapping]] = ..., on_demand_floor: _Optional[_Union[OnDemandFloor, _Mapping]] = ..., failure_domains: _Optional[_Union[FailureDomains, _Mapping]] = ..., constraints: _Optional[_Union[PlacementConstraints, _Mapping]] = ...) -> None: ...

class Autoscale(_message.Message):
    __slots__ = ("scale", "rate", "reason", "decided_unix", "scale_before_zero")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DECIDED_UNIX_FIELD_NUMBER: _ClassVar[int]
    SCALE_BEFORE_ZERO_FIELD_NUMBER: _ClassVar[int]
    scale: float
    rate: float
    reason: str
    decided_unix: float
    scale_before_zero: float
    def __init__(self, scale: _Optional[float] = ..., rate: _Optional[float] = ..., reason: _Optional[str] = ..., decided_unix: _Optional[float] = ..., scale_before_zero: _Optional[float] = ...) -> None: ...

class OnDemandFloor(_message.Message):
    __slots__ = ("share", "cost_per_hour")
    SHARE_FIELD_NUMBER: _ClassVar[int]
    COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    share: float
    cost_per_hour: float
    def __init__(self, share: _Optional[float] = ..., cost_per_hour: _Optional[float] = ...) -> None: ...

class FailureDomains(_message.Message):
    __slots__ = ("label", "domains")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    label: str
    domains: int
    def __init__(self, label: _Optional[str] = ..., domains: _Optional[int] = ...) -> None: ...

class PlacementConstraints(_message.Message):
    __slots__ = ("trusted_only", "on_demand_only", "forbid_tiers", "forbid_regions")
    TRUSTED_ONLY_FIELD_NUMBER: _ClassVar[int]
    ON_DEMAND_ONLY_FIELD_NUMBER: _ClassVar[int]
    FORBID_TIERS_FIELD_NUMBER: _ClassVar[int]
    FORBID_REGIONS_FIELD_NUMBER: _ClassVar[int]
    trusted_only: bool
    on_demand_only: bool
    forbid_tiers: _containers.RepeatedScalarFieldContainer[str]
    forbid_regions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, trusted_only: _Optional[bool] = ..., on_demand_only: _Optional[bool] = ..., forbid_tiers: _Optional[_Iterable[str]] = ..., forbid_regions: _Optional[_Iterable[str]] = ...) -> None: ...

class WorkflowStatus(_message.Message):
    __slots__ = ("name", "state", "message", "replicas", "profiles", "spec_yaml", "created_unix", "updated_unix", "generation", "tenant", "cold_starts_json", "plan", "deployment", "autoscale_decisions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    COLD_STARTS_JSON_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALE_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    message: str
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    profiles: _containers.RepeatedCompositeFieldContainer[ProfileEntry]
    spec_yaml: str
    created_unix: float
    updated_unix: float
    generation: int
    tenant: str
    cold_starts_json: str
    plan: Plan
    deployment: Deployment
    autoscale_decisions: _containers.RepeatedCompositeFieldContainer[AutoscaleDecision]
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., message: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., profiles: _Optional[_Iterable[_Union[ProfileEntry, _Mapping]]] = ..., spec_yaml: _Optional[str] = ..., created_unix: _Optional[float] = ..., updated_unix: _Optional[float] = ..., generation: _Optional[int] = ..., tenant: _Optional[str] = ..., cold_starts_json: _Optional[str] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., deployment: _Optional[_Union[Deployment, _Mapping]] = ..., autoscale_decisions: _Optional[_Iterable[_Union[AutoscaleDecision, _Mapping]]] = ...) -> None: ...

class AutoscaleDecision(_message.Message):
    __slots__ = ("unix", "action", "rate", "previous_rate", "reason", "signals", "outcome")
    class SignalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    UNIX_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    unix: float
    action: str
    rate: float
    previous_rate: float
    reason: str
    signals: _containers.ScalarMap[str, float]
    outcome: str
    def __init__(self, unix: _Optional[float] = ..., action: _Optional[str] = ..., rate: _Optional[float] = ..., previous_rate: _Optional[float] = ..., reason: _Optional[str] = ..., signals: _Optional[_Mapping[str, float]] = ..., outcome: _Optional[str] = ...) -> None: ...

class WorkflowSummary(_message.Message):
    __slots__ = ("name", "state", "cost_per_hour", "accuracy", "replicas", "ready_replicas")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    READY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    cost_per_hour: float
    accuracy: float
    replicas: int
    ready_replicas: int
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., cost_per_hour: _Optional[float] = ..., accuracy: _Optional[float] = ..., replicas: _Optional[int] = ..., ready_replicas: _Optional[int] = ...) -> None: ...

class ListWorkflowsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkflowsResponse(_message.Message):
    __slots__ = ("workflows",)
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[WorkflowSummary]
    def __init__(self, workflows: _Optional[_Iterable[_Union[WorkflowSummary, _Mapping]]] = ...) -> None: ...

class GetWorkflowRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteWorkflowResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class InvokeRequest(_message.Message):
    __slots__ = ("workflow", "input_json", "stream", "timeout_seconds", "request_id", "max_tokens", "temperature", "sampling", "messages", "kind", "prompt_token_ids")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    input_json: str
    stream: bool
    timeout_seconds: float
    request_id: str
    max_tokens: int
    temperature: float
    sampling: SinkSampling
    messages: _containers.RepeatedCompositeFieldContainer[_worker_pb2.ChatMessage]
    kind: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, workflow: _Optional[str] = ..., input_json: _Optional[str] = ..., stream: _Optional[bool] = ..., timeout_seconds: _Optional[float] = ..., request_id: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., sampling: _Optional[_Union[SinkSampling, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[_worker_pb2.ChatMessage, _Mapping]]] = ..., kind: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SinkSampling(_message.Message):
    __slots__ = ("top_p", "seed", "stop", "n", "logprobs", "top_logprobs", "no_max_tokens")
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    NO_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    n: int
    logprobs: bool
    top_logprobs: int
    no_max_tokens: bool
    def __init__(self, top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., n: _Optional[int] = ..., logprobs: _Optional[bool] = ..., top_logprobs: _Optional[int] = ..., no_max_tokens: _Optional[bool] = ...) -> None: ...

class ChoiceResult(_message.Message):
    __slots__ = ("index", "text", "finish_reason", "completion_tokens", "logprobs")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: _containers.RepeatedCompositeFieldContainer[_worker_pb2.TokenLogprob]
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., finish_reason: _Optional[str] = ..., completion_tokens: _Optional[int] = ..., logprobs: _Optional[_Iterable[_Union[_worker_pb2.TokenLogprob, _Mapping]]] = ...) -> None: ...

class StageResult(_message.Message):
    __slots__ = ("task", "variant", "node_name", "region", "seconds", "attempts", "output_bytes", "prompt_tokens", "completion_tokens")
    TASK_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    task: str
    variant: str
    node_name: str
    region: str
    seconds: float
    attempts: int
    output_bytes: int
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, task: _Optional[str] = ..., variant: _Optional[str] = ..., node_name: _Optional[str] = ..., region: _Optional[str] = ..., seconds: _Optional[float] = ..., attempts: _Optional[int] = ..., output_bytes: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("text", "done", "output_json", "stages", "request_id", "index", "logprobs", "choices")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    text: str
    done: bool
    output_json: str
    stages: _containers.RepeatedCompositeFieldContainer[StageResult]
    request_id: str
    index: int
    logprobs: _containers.RepeatedCompositeFieldContainer[_worker_pb2.TokenLogprob]
    choices: _containers.RepeatedCompositeFieldContainer[ChoiceResult]
    def __init__(self, text: _Optional[str] = ..., done: _Optional[bool] = ..., output_json: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageResult, _Mapping]]] = ..., request_id: _Optional[str] = ..., index: _Optional[int] = ..., logprobs: _Optional[_Iterable[_Union[_worker_pb2.TokenLogprob, _Mapping]]] = ..., choices: _Optional[_Iterable[_Union[ChoiceResult, _Mapping]]] = ...) -> None: ...

class ProfileRequest(_message.Message):
    __slots__ = ("workflow", "task", "variant", "node", "requests", "concurrency")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    task: str
    variant: str
    node: str
    requests: int
    concurrency: int
    def __init__(self, workflow: _Optional[str] = ..., task: _Optional[str] = ..., variant: _Optional[str] = ..., node: _Optional[str] = ..., requests: _Optional[int] = ..., concurrency: _Optional[int] = ...) -> None: ...

class ProfileResponse(_message.Message):
    __slots__ = ("variant", "hardware", "node_name", "requests_per_second", "tokens_per_second", "declared_rps", "requests")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    DECLARED_RPS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    variant: str
    hardware: str
    node_name: str
    requests_per_second: float
    tokens_per_second: float
    declared_rps: float
    requests: int
    def __init__(self, variant: _Optional[str] = ..., hardware: _Optional[str] = ..., node_name: _Optional[str] = ..., requests_per_second: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., declared_rps: _Optional[float] = ..., requests: _Optional[int] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("name", "kind", "data", "offset", "total_bytes", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    data: bytes
    offset: int
    total_bytes: int
    path: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class BlobInfo(_message.Message):
    __slots__ = ("name", "kind", "size_bytes", "display_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    size_bytes: int
    display_name: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., size_bytes: _Optional[int] = ..., display_name: _Optional[str] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("name", "offset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    name: str
    offset: int
    def __init__(self, name: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ApiKeyInfo(_message.Message):
    __slots__ = ("id", "tenant", "role", "created_unix", "revoked")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant: str
    role: str
    created_unix: float
    revoked: bool
    def __init__(self, id: _Optional[str] = ..., tenant: _Optional[str] = ..., role: _Optional[str] = ..., created_unix: _Optional[float] = ..., revoked: _Optional[bool] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("tenant", "role")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    role: str
    def __init__(self, tenant: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("info", "key")
    INFO_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    info: ApiKeyInfo
    key: str
    def __init__(self, info: _Optional[_Union[ApiKeyInfo, _Mapping]] = ..., key: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKeyInfo, _Mapping]]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("region", "workflow")
    REGION_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    region: str
    workflow: str
    def __init__(self, region: _Optional[str] = ..., workflow: _Optional[str] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_routing_pb2.EntryInfo]
    def __init__(self, entries: _Optional[_Iterable[_Union[_routing_pb2.EntryInfo, _Mapping]]] = ...) -> None: ...

class JoinTokenInfo(_message.Message):
    __slots__ = ("id", "tiers", "regions", "trusted", "expires_unix", "uses_left", "uses", "created_unix", "revoked")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    USES_LEFT_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    id: str
    tiers: _containers.RepeatedScalarFieldContainer[str]
    regions: _containers.RepeatedScalarFieldContainer[str]
    trusted: bool
    expires_unix: float
    uses_left: int
    uses: int
    created_unix: float
    revoked: bool
    def __init__(self, id: _Optional[str] = ..., tiers: _Optional[_Iterable[str]] = ..., regions: _Optional[_Iterable[str]] = ..., trusted: _Optional[bool] = ..., expires_unix: _Optional[float] = ..., uses_left: _Optional[int] = ..., uses: _Optional[int] = ..., created_unix: _Optional[float] = ..., revoked: _Optional[bool] = ...) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("tiers", "regions", "trusted", "ttl_seconds", "uses")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedScalarFieldContainer[str]
    regions: _containers.RepeatedScalarFieldContainer[str]
    trusted: bool
    ttl_seconds: float
    uses: int
    def __init__(self, tiers: _Optional[_Iterable[str]] = ..., regions: _Optional[_Iterable[str]] = ..., trusted: _Optional[bool] = ..., ttl_seconds: _Optional[float] = ..., uses: _Optional[int] = ...) -> None: ...

class CreateJoinTokenResponse(_message.Message):
    __slots__ = ("info", "token")
    INFO_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    info: JoinTokenInfo
    token: str
    def __init__(self, info: _Optional[_Union[JoinTokenInfo, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class ListJoinTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJoinTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[JoinTokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[JoinTokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeJoinTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class SetNodeTrustRequest(_message.Message):
    __slots__ = ("node", "trusted")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_FIELD_NUMBER: _ClassVar[int]
    node: str
    trusted: bool
    def __init__(self, node: _Optional[str] = ..., trusted: _Optional[bool] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...
