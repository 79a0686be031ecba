from atoll.proto.v1 import control_pb2 as _control_pb2
from atoll.proto.v1 import routing_pb2 as _routing_pb2
from atoll.proto.v1 import worker_pb2 as _worker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeEntryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("workflow", "task", "replica_id", "outputs", "input", "stream", "max_tokens", "temperature", "request_id", "tenant", "sampling", "messages", "prompt_token_ids")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    task: str
    replica_id: str
    outputs: _containers.ScalarMap[str, str]
    input: str
    stream: bool
    max_tokens: int
    temperature: float
    request_id: str
    tenant: str
    sampling: _control_pb2.SinkSampling
    messages: _containers.RepeatedCompositeFieldContainer[_worker_pb2.ChatMessage]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, workflow: _Optional[str] = ..., task: _Optional[str] = ..., replica_id: _Optional[str] = ..., outputs: _Optional[_Mapping[str, str]] = ..., input: _Optional[str] = ..., stream: _Optional[bool] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., sampling: _Optional[_Union[_control_pb2.SinkSampling, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[_worker_pb2.ChatMessage, _Mapping]]] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...
