from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ItemVector(_message.Message):
    __slots__ = ("item_id", "vector", "vector_f32")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    VECTOR_F32_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    vector_f32: bytes
    def __init__(self, item_id: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., vector_f32: _Optional[bytes] = ...) -> None: ...

class ItemMatrix(_message.Message):
    __slots__ = ("item_ids", "vectors_f32")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_F32_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    vectors_f32: bytes
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., vectors_f32: _Optional[bytes] = ...) -> None: ...

class ScoringTask(_message.Message):
    __slots__ = ("user_id", "history", "candidates", "history_matrix", "candidate_matrix")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_MATRIX_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_MATRIX_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    history: _containers.RepeatedCompositeFieldContainer[ItemVector]
    candidates: _containers.RepeatedCompositeFieldContainer[ItemVector]
    history_matrix: ItemMatrix
    candidate_matrix: ItemMatrix
    def __init__(self, user_id: _Optional[str] = ..., history: _Optional[_Iterable[_Union[ItemVector, _Mapping]]] = ..., candidates: _Optional[_Iterable[_Union[ItemVector, _Mapping]]] = ..., history_matrix: _Optional[_Union[ItemMatrix, _Mapping]] = ..., candidate_matrix: _Optional[_Union[ItemMatrix, _Mapping]] = ...) -> None: ...

class ScoreCandidatesRequest(_message.Message):
    __slots__ = ("tasks", "catalog", "model_version", "encoder_version")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[ScoringTask]
    catalog: str
    model_version: str
    encoder_version: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[ScoringTask, _Mapping]]] = ..., catalog: _Optional[str] = ..., model_version: _Optional[str] = ..., encoder_version: _Optional[str] = ...) -> None: ...

class TaskScores(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, scores: _Optional[_Iterable[float]] = ...) -> None: ...

class ScoreCandidatesResponse(_message.Message):
    __slots__ = ("results", "model_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TaskScores]
    model_version: str
    def __init__(self, results: _Optional[_Iterable[_Union[TaskScores, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class SuggestCandidatesRequest(_message.Message):
    __slots__ = ("history_item_ids", "limit", "catalog", "model_version", "encoder_version")
    HISTORY_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    history_item_ids: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    catalog: str
    model_version: str
    encoder_version: str
    def __init__(self, history_item_ids: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ..., catalog: _Optional[str] = ..., model_version: _Optional[str] = ..., encoder_version: _Optional[str] = ...) -> None: ...

class SuggestCandidatesResponse(_message.Message):
    __slots__ = ("item_ids", "scores", "model_version")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("catalog", "model_version", "encoder_version")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    model_version: str
    encoder_version: str
    def __init__(self, catalog: _Optional[str] = ..., model_version: _Optional[str] = ..., encoder_version: _Optional[str] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("version", "created_at", "dataset", "dataset_hash", "embedding_model", "metrics", "known_items", "device", "available_versions", "encoder_version")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_HASH_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    created_at: str
    dataset: str
    dataset_hash: str
    embedding_model: str
    metrics: _containers.ScalarMap[str, float]
    known_items: int
    device: str
    available_versions: _containers.RepeatedScalarFieldContainer[str]
    encoder_version: str
    def __init__(self, version: _Optional[str] = ..., created_at: _Optional[str] = ..., dataset: _Optional[str] = ..., dataset_hash: _Optional[str] = ..., embedding_model: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., known_items: _Optional[int] = ..., device: _Optional[str] = ..., available_versions: _Optional[_Iterable[str]] = ..., encoder_version: _Optional[str] = ...) -> None: ...
