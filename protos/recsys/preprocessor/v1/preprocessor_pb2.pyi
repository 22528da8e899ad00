from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_MARKUP_REMOVED: _ClassVar[ChangeKind]
    CHANGE_KIND_CONTROL_CHARACTERS_REMOVED: _ClassVar[ChangeKind]
    CHANGE_KIND_UNICODE_NORMALISED: _ClassVar[ChangeKind]
    CHANGE_KIND_WHITESPACE_COLLAPSED: _ClassVar[ChangeKind]
    CHANGE_KIND_EMAIL_MASKED: _ClassVar[ChangeKind]
    CHANGE_KIND_PHONE_MASKED: _ClassVar[ChangeKind]
    CHANGE_KIND_TRUNCATED: _ClassVar[ChangeKind]
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_MARKUP_REMOVED: ChangeKind
CHANGE_KIND_CONTROL_CHARACTERS_REMOVED: ChangeKind
CHANGE_KIND_UNICODE_NORMALISED: ChangeKind
CHANGE_KIND_WHITESPACE_COLLAPSED: ChangeKind
CHANGE_KIND_EMAIL_MASKED: ChangeKind
CHANGE_KIND_PHONE_MASKED: ChangeKind
CHANGE_KIND_TRUNCATED: ChangeKind

class CleanedText(_message.Message):
    __slots__ = ("text", "changes", "token_count", "truncated")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    text: str
    changes: _containers.RepeatedScalarFieldContainer[ChangeKind]
    token_count: int
    truncated: bool
    def __init__(self, text: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[ChangeKind, str]]] = ..., token_count: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class CleanTextsRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class CleanTextsResponse(_message.Message):
    __slots__ = ("results", "max_tokens")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CleanedText]
    max_tokens: int
    def __init__(self, results: _Optional[_Iterable[_Union[CleanedText, _Mapping]]] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class ItemFields(_message.Message):
    __slots__ = ("item_id", "title", "description", "categories", "brand", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    BRAND_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    description: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    brand: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., brand: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BuildItemTextsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ItemFields]
    def __init__(self, items: _Optional[_Iterable[_Union[ItemFields, _Mapping]]] = ...) -> None: ...

class ItemText(_message.Message):
    __slots__ = ("item_id", "text")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: CleanedText
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[_Union[CleanedText, _Mapping]] = ...) -> None: ...

class BuildItemTextsResponse(_message.Message):
    __slots__ = ("items", "max_tokens")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ItemText]
    max_tokens: int
    def __init__(self, items: _Optional[_Iterable[_Union[ItemText, _Mapping]]] = ..., max_tokens: _Optional[int] = ...) -> None: ...
