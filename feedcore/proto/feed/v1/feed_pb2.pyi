from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetFeedRequest(_message.Message):
    __slots__ = ("user_id", "surface", "page_size", "cursor", "experiment_overrides")
    class ExperimentOverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    surface: str
    page_size: int
    cursor: str
    experiment_overrides: _containers.ScalarMap[str, str]
    def __init__(self, user_id: _Optional[str] = ..., surface: _Optional[str] = ..., page_size: _Optional[int] = ..., cursor: _Optional[str] = ..., experiment_overrides: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FeedItem(_message.Message):
    __slots__ = ("item_id", "content_type", "score", "task_scores", "source", "explanation", "position", "title", "propensity", "provenance", "text")
    class TaskScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TASK_SCORES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    content_type: str
    score: float
    task_scores: _containers.ScalarMap[str, float]
    source: str
    explanation: str
    position: int
    title: str
    propensity: float
    provenance: Provenance
    text: str
    def __init__(self, item_id: _Optional[str] = ..., content_type: _Optional[str] = ..., score: _Optional[float] = ..., task_scores: _Optional[_Mapping[str, float]] = ..., source: _Optional[str] = ..., explanation: _Optional[str] = ..., position: _Optional[int] = ..., title: _Optional[str] = ..., propensity: _Optional[float] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("source_item_ids", "model_version", "prompt_version", "method")
    SOURCE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    source_item_ids: _containers.RepeatedScalarFieldContainer[str]
    model_version: str
    prompt_version: str
    method: str
    def __init__(self, source_item_ids: _Optional[_Iterable[str]] = ..., model_version: _Optional[str] = ..., prompt_version: _Optional[str] = ..., method: _Optional[str] = ...) -> None: ...

class StreamPostRequest(_message.Message):
    __slots__ = ("user_id", "surface", "max_new_tokens")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    surface: str
    max_new_tokens: int
    def __init__(self, user_id: _Optional[str] = ..., surface: _Optional[str] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class PostChunk(_message.Message):
    __slots__ = ("text", "done", "post_id", "post_text", "provenance")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    POST_ID_FIELD_NUMBER: _ClassVar[int]
    POST_TEXT_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    text: str
    done: bool
    post_id: str
    post_text: str
    provenance: Provenance
    def __init__(self, text: _Optional[str] = ..., done: _Optional[bool] = ..., post_id: _Optional[str] = ..., post_text: _Optional[str] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ...) -> None: ...

class GetFeedResponse(_message.Message):
    __slots__ = ("items", "next_cursor", "request_id", "experiment_arm", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ARM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[FeedItem]
    next_cursor: str
    request_id: str
    experiment_arm: str
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[FeedItem, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., request_id: _Optional[str] = ..., experiment_arm: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("user_id", "item_id", "content_type", "event", "value", "ts_ms", "request_id", "position", "surface", "experiment_arm", "source", "propensity", "event_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ARM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    content_type: str
    event: str
    value: float
    ts_ms: int
    request_id: str
    position: int
    surface: str
    experiment_arm: str
    source: str
    propensity: float
    event_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., content_type: _Optional[str] = ..., event: _Optional[str] = ..., value: _Optional[float] = ..., ts_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., position: _Optional[int] = ..., surface: _Optional[str] = ..., experiment_arm: _Optional[str] = ..., source: _Optional[str] = ..., propensity: _Optional[float] = ..., event_id: _Optional[str] = ...) -> None: ...

class LogEventsResponse(_message.Message):
    __slots__ = ("accepted", "by_event", "last_seq", "duplicates")
    class ByEventEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    BY_EVENT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    by_event: _containers.ScalarMap[str, int]
    last_seq: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., by_event: _Optional[_Mapping[str, int]] = ..., last_seq: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...
