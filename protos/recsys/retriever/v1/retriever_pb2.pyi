from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncoderState(_message.Message):
    __slots__ = ("serving", "has_staged", "staged", "staged_items")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    HAS_STAGED_FIELD_NUMBER: _ClassVar[int]
    STAGED_FIELD_NUMBER: _ClassVar[int]
    STAGED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    serving: str
    has_staged: bool
    staged: str
    staged_items: int
    def __init__(self, serving: _Optional[str] = ..., has_staged: _Optional[bool] = ..., staged: _Optional[str] = ..., staged_items: _Optional[int] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("catalog", "encoder_version", "limit", "page_token")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    encoder_version: str
    limit: int
    page_token: str
    def __init__(self, catalog: _Optional[str] = ..., encoder_version: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListItemsResponse(_message.Message):
    __slots__ = ("items", "texts", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    texts: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., texts: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StageEncoderRequest(_message.Message):
    __slots__ = ("catalog", "encoder_version")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    encoder_version: str
    def __init__(self, catalog: _Optional[str] = ..., encoder_version: _Optional[str] = ...) -> None: ...

class StageEncoderResponse(_message.Message):
    __slots__ = ("encoders",)
    ENCODERS_FIELD_NUMBER: _ClassVar[int]
    encoders: EncoderState
    def __init__(self, encoders: _Optional[_Union[EncoderState, _Mapping]] = ...) -> None: ...

class SwitchEncoderRequest(_message.Message):
    __slots__ = ("catalog", "encoder_version")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    encoder_version: str
    def __init__(self, catalog: _Optional[str] = ..., encoder_version: _Optional[str] = ...) -> None: ...

class SwitchEncoderResponse(_message.Message):
    __slots__ = ("encoders",)
    ENCODERS_FIELD_NUMBER: _ClassVar[int]
    encoders: EncoderState
    def __init__(self, encoders: _Optional[_Union[EncoderState, _Mapping]] = ...) -> None: ...

class DropStagedEncoderRequest(_message.Message):
    __slots__ = ("catalog", "encoder_version")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    encoder_version: str
    def __init__(self, catalog: _Optional[str] = ..., encoder_version: _Optional[str] = ...) -> None: ...

class DropStagedEncoderResponse(_message.Message):
    __slots__ = ("encoders",)
    ENCODERS_FIELD_NUMBER: _ClassVar[int]
    encoders: EncoderState
    def __init__(self, encoders: _Optional[_Union[EncoderState, _Mapping]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "vector", "payload")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    payload: _struct_pb2.Struct
    def __init__(self, item_id: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RangeCondition(_message.Message):
    __slots__ = ("field", "gte", "lte")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    field: str
    gte: float
    lte: float
    def __init__(self, field: _Optional[str] = ..., gte: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class KeywordCondition(_message.Message):
    __slots__ = ("field", "any_of")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    field: str
    any_of: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, field: _Optional[str] = ..., any_of: _Optional[_Iterable[str]] = ...) -> None: ...

class FlagCondition(_message.Message):
    __slots__ = ("field", "value")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    field: str
    value: bool
    def __init__(self, field: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("categories_any", "keywords", "ranges", "flags")
    CATEGORIES_ANY_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    categories_any: _containers.RepeatedScalarFieldContainer[str]
    keywords: _containers.RepeatedCompositeFieldContainer[KeywordCondition]
    ranges: _containers.RepeatedCompositeFieldContainer[RangeCondition]
    flags: _containers.RepeatedCompositeFieldContainer[FlagCondition]
    def __init__(self, categories_any: _Optional[_Iterable[str]] = ..., keywords: _Optional[_Iterable[_Union[KeywordCondition, _Mapping]]] = ..., ranges: _Optional[_Iterable[_Union[RangeCondition, _Mapping]]] = ..., flags: _Optional[_Iterable[_Union[FlagCondition, _Mapping]]] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "payload", "vector", "payload_json", "vector_f32")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    VECTOR_F32_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    payload: _struct_pb2.Struct
    vector: _containers.RepeatedScalarFieldContainer[float]
    payload_json: bytes
    vector_f32: bytes
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., vector: _Optional[_Iterable[float]] = ..., payload_json: _Optional[bytes] = ..., vector_f32: _Optional[bytes] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items", "catalog", "encoder_version", "texts", "staged")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    STAGED_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    catalog: str
    encoder_version: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    staged: bool
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., catalog: _Optional[str] = ..., encoder_version: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., staged: _Optional[bool] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("item_ids", "catalog")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    catalog: str
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., catalog: _Optional[str] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GetItemsRequest(_message.Message):
    __slots__ = ("item_ids", "with_vectors", "skip_missing", "catalog", "encoder_version")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    SKIP_MISSING_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    with_vectors: bool
    skip_missing: bool
    catalog: str
    encoder_version: str
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., with_vectors: _Optional[bool] = ..., skip_missing: _Optional[bool] = ..., catalog: _Optional[str] = ..., encoder_version: _Optional[str] = ...) -> None: ...

class GetItemsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class SearchQuery(_message.Message):
    __slots__ = ("vector", "limit", "filter", "exclude_ids", "offset", "with_vectors", "only_ids", "packed")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    ONLY_IDS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    limit: int
    filter: Filter
    exclude_ids: _containers.RepeatedScalarFieldContainer[str]
    offset: int
    with_vectors: bool
    only_ids: _containers.RepeatedScalarFieldContainer[str]
    packed: bool
    def __init__(self, vector: _Optional[_Iterable[float]] = ..., limit: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., exclude_ids: _Optional[_Iterable[str]] = ..., offset: _Optional[int] = ..., with_vectors: _Optional[bool] = ..., only_ids: _Optional[_Iterable[str]] = ..., packed: _Optional[bool] = ...) -> None: ...

class SearchItemsRequest(_message.Message):
    __slots__ = ("queries", "catalog", "encoder_version")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[SearchQuery]
    catalog: str
    encoder_version: str
    def __init__(self, queries: _Optional[_Iterable[_Union[SearchQuery, _Mapping]]] = ..., catalog: _Optional[str] = ..., encoder_version: _Optional[str] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ...) -> None: ...

class SearchItemsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ...) -> None: ...

class RecommendItemsRequest(_message.Message):
    __slots__ = ("positive_ids", "negative_ids", "limit", "filter", "exclude_ids", "with_vectors", "catalog")
    POSITIVE_IDS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_IDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    positive_ids: _containers.RepeatedScalarFieldContainer[str]
    negative_ids: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    filter: Filter
    exclude_ids: _containers.RepeatedScalarFieldContainer[str]
    with_vectors: bool
    catalog: str
    def __init__(self, positive_ids: _Optional[_Iterable[str]] = ..., negative_ids: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., exclude_ids: _Optional[_Iterable[str]] = ..., with_vectors: _Optional[bool] = ..., catalog: _Optional[str] = ...) -> None: ...

class RecommendItemsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ...) -> None: ...

class ListPopularItemsRequest(_message.Message):
    __slots__ = ("limit", "filter", "exclude_ids", "offset", "with_vectors", "catalog")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    limit: int
    filter: Filter
    exclude_ids: _containers.RepeatedScalarFieldContainer[str]
    offset: int
    with_vectors: bool
    catalog: str
    def __init__(self, limit: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., exclude_ids: _Optional[_Iterable[str]] = ..., offset: _Optional[int] = ..., with_vectors: _Optional[bool] = ..., catalog: _Optional[str] = ...) -> None: ...

class ListPopularItemsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ...) -> None: ...

class UserEvent(_message.Message):
    __slots__ = ("item_id", "event_type", "timestamp", "weight", "recommendation_id", "event_id")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    event_type: str
    timestamp: float
    weight: float
    recommendation_id: str
    event_id: str
    def __init__(self, item_id: _Optional[str] = ..., event_type: _Optional[str] = ..., timestamp: _Optional[float] = ..., weight: _Optional[float] = ..., recommendation_id: _Optional[str] = ..., event_id: _Optional[str] = ...) -> None: ...

class AppendUserEventsRequest(_message.Message):
    __slots__ = ("user_id", "events", "catalog")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    events: _containers.RepeatedCompositeFieldContainer[UserEvent]
    catalog: str
    def __init__(self, user_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[UserEvent, _Mapping]]] = ..., catalog: _Optional[str] = ...) -> None: ...

class UserProfile(_message.Message):
    __slots__ = ("user_id", "vector", "events", "shown_counts", "encoder_version")
    class ShownCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SHOWN_COUNTS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    events: _containers.RepeatedCompositeFieldContainer[UserEvent]
    shown_counts: _containers.ScalarMap[str, int]
    encoder_version: str
    def __init__(self, user_id: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., events: _Optional[_Iterable[_Union[UserEvent, _Mapping]]] = ..., shown_counts: _Optional[_Mapping[str, int]] = ..., encoder_version: _Optional[str] = ...) -> None: ...

class AppendUserEventsResponse(_message.Message):
    __slots__ = ("profile", "unknown_recommendation_ids")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_RECOMMENDATION_IDS_FIELD_NUMBER: _ClassVar[int]
    profile: UserProfile
    unknown_recommendation_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, profile: _Optional[_Union[UserProfile, _Mapping]] = ..., unknown_recommendation_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetUserProfileRequest(_message.Message):
    __slots__ = ("user_id", "catalog")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    catalog: str
    def __init__(self, user_id: _Optional[str] = ..., catalog: _Optional[str] = ...) -> None: ...

class GetUserProfileResponse(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: UserProfile
    def __init__(self, profile: _Optional[_Union[UserProfile, _Mapping]] = ...) -> None: ...

class DeleteUserRequest(_message.Message):
    __slots__ = ("user_id", "catalog")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    catalog: str
    def __init__(self, user_id: _Optional[str] = ..., catalog: _Optional[str] = ...) -> None: ...

class DeleteUserResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCollectionInfoRequest(_message.Message):
    __slots__ = ("catalog",)
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    def __init__(self, catalog: _Optional[str] = ...) -> None: ...

class PayloadField(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class GetCollectionInfoResponse(_message.Message):
    __slots__ = ("backend", "items", "users", "indexed_vectors", "dimension", "distance", "payload_fields", "index_ready", "encoders")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    INDEXED_VECTORS_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELDS_FIELD_NUMBER: _ClassVar[int]
    INDEX_READY_FIELD_NUMBER: _ClassVar[int]
    ENCODERS_FIELD_NUMBER: _ClassVar[int]
    backend: str
    items: int
    users: int
    indexed_vectors: int
    dimension: int
    distance: str
    payload_fields: _containers.RepeatedCompositeFieldContainer[PayloadField]
    index_ready: bool
    encoders: EncoderState
    def __init__(self, backend: _Optional[str] = ..., items: _Optional[int] = ..., users: _Optional[int] = ..., indexed_vectors: _Optional[int] = ..., dimension: _Optional[int] = ..., distance: _Optional[str] = ..., payload_fields: _Optional[_Iterable[_Union[PayloadField, _Mapping]]] = ..., index_ready: _Optional[bool] = ..., encoders: _Optional[_Union[EncoderState, _Mapping]] = ...) -> None: ...

class Impression(_message.Message):
    __slots__ = ("recommendation_id", "page", "user_id", "item_ids", "experiment", "arm", "timestamp", "engaged_item_ids", "converted_item_ids")
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ENGAGED_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CONVERTED_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    recommendation_id: str
    page: int
    user_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    experiment: str
    arm: str
    timestamp: float
    engaged_item_ids: _containers.RepeatedScalarFieldContainer[str]
    converted_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, recommendation_id: _Optional[str] = ..., page: _Optional[int] = ..., user_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ..., timestamp: _Optional[float] = ..., engaged_item_ids: _Optional[_Iterable[str]] = ..., converted_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RecordImpressionRequest(_message.Message):
    __slots__ = ("catalog", "impression")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    IMPRESSION_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    impression: Impression
    def __init__(self, catalog: _Optional[str] = ..., impression: _Optional[_Union[Impression, _Mapping]] = ...) -> None: ...

class RecordImpressionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecordImpressionsRequest(_message.Message):
    __slots__ = ("catalog", "impressions")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    impressions: _containers.RepeatedCompositeFieldContainer[Impression]
    def __init__(self, catalog: _Optional[str] = ..., impressions: _Optional[_Iterable[_Union[Impression, _Mapping]]] = ...) -> None: ...

class RecordImpressionsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetImpressionsRequest(_message.Message):
    __slots__ = ("catalog", "recommendation_id")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    recommendation_id: str
    def __init__(self, catalog: _Optional[str] = ..., recommendation_id: _Optional[str] = ...) -> None: ...

class GetImpressionsResponse(_message.Message):
    __slots__ = ("impressions",)
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    impressions: _containers.RepeatedCompositeFieldContainer[Impression]
    def __init__(self, impressions: _Optional[_Iterable[_Union[Impression, _Mapping]]] = ...) -> None: ...

class ListImpressionsRequest(_message.Message):
    __slots__ = ("catalog", "experiment", "limit", "page_token")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    experiment: str
    limit: int
    page_token: str
    def __init__(self, catalog: _Optional[str] = ..., experiment: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListImpressionsResponse(_message.Message):
    __slots__ = ("impressions", "next_page_token")
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    impressions: _containers.RepeatedCompositeFieldContainer[Impression]
    next_page_token: str
    def __init__(self, impressions: _Optional[_Iterable[_Union[Impression, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
