from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedTextsRequest(_message.Message):
    __slots__ = ("texts", "packed", "encoder_version")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    packed: bool
    encoder_version: str
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., packed: _Optional[bool] = ..., encoder_version: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "token_count", "truncated")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    token_count: int
    truncated: bool
    def __init__(self, values: _Optional[_Iterable[float]] = ..., token_count: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class EmbedTextsResponse(_message.Message):
    __slots__ = ("embeddings", "model_id", "vectors_f32", "encoder_version")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VECTORS_F32_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    model_id: str
    vectors_f32: bytes
    encoder_version: str
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., model_id: _Optional[str] = ..., vectors_f32: _Optional[bytes] = ..., encoder_version: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_id", "dimension", "max_tokens", "device", "dtype", "pooling", "max_batch_size", "backend", "max_batch_tokens", "forward_batch_size", "encoder_version", "loaded_encoder_versions", "available_encoder_versions")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_ENCODER_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_ENCODER_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    dimension: int
    max_tokens: int
    device: str
    dtype: str
    pooling: str
    max_batch_size: int
    backend: str
    max_batch_tokens: int
    forward_batch_size: int
    encoder_version: str
    loaded_encoder_versions: _containers.RepeatedScalarFieldContainer[str]
    available_encoder_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_id: _Optional[str] = ..., dimension: _Optional[int] = ..., max_tokens: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., pooling: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., backend: _Optional[str] = ..., max_batch_tokens: _Optional[int] = ..., forward_batch_size: _Optional[int] = ..., encoder_version: _Optional[str] = ..., loaded_encoder_versions: _Optional[_Iterable[str]] = ..., available_encoder_versions: _Optional[_Iterable[str]] = ...) -> None: ...
