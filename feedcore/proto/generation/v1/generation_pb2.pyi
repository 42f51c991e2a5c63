from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Source(_message.Message):
    __slots__ = ("item_id", "title", "content_type", "categories", "creator_id")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    CREATOR_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    content_type: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    creator_id: str
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., content_type: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., creator_id: _Optional[str] = ...) -> None: ...

class PostRequest(_message.Message):
    __slots__ = ("user_id", "sources", "surface", "interests", "kind")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    INTERESTS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    sources: _containers.RepeatedCompositeFieldContainer[Source]
    surface: str
    interests: _containers.RepeatedScalarFieldContainer[str]
    kind: str
    def __init__(self, user_id: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[Source, _Mapping]]] = ..., surface: _Optional[str] = ..., interests: _Optional[_Iterable[str]] = ..., kind: _Optional[str] = ...) -> None: ...

class Post(_message.Message):
    __slots__ = ("post_id", "user_id", "text", "source_item_ids", "model_version", "prompt_version", "method", "created_ms", "kind", "score")
    POST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    post_id: str
    user_id: str
    text: str
    source_item_ids: _containers.RepeatedScalarFieldContainer[str]
    model_version: str
    prompt_version: str
    method: str
    created_ms: int
    kind: str
    score: float
    def __init__(self, post_id: _Optional[str] = ..., user_id: _Optional[str] = ..., text: _Optional[str] = ..., source_item_ids: _Optional[_Iterable[str]] = ..., model_version: _Optional[str] = ..., prompt_version: _Optional[str] = ..., method: _Optional[str] = ..., created_ms: _Optional[int] = ..., kind: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class WritePostsRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[PostRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[PostRequest, _Mapping]]] = ...) -> None: ...

class WritePostsResponse(_message.Message):
    __slots__ = ("posts", "model_version")
    POSTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    posts: _containers.RepeatedCompositeFieldContainer[Post]
    model_version: str
    def __init__(self, posts: _Optional[_Iterable[_Union[Post, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class StreamPostRequest(_message.Message):
    __slots__ = ("request", "max_new_tokens")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request: PostRequest
    max_new_tokens: int
    def __init__(self, request: _Optional[_Union[PostRequest, _Mapping]] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class PostChunk(_message.Message):
    __slots__ = ("text", "post")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    POST_FIELD_NUMBER: _ClassVar[int]
    text: str
    post: Post
    def __init__(self, text: _Optional[str] = ..., post: _Optional[_Union[Post, _Mapping]] = ...) -> None: ...
