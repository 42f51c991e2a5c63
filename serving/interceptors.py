"""What every call goes through before and after its handler, as gRPC server interceptors.

Outermost first (`server_interceptors`):

- `RequestLog`: gives the call a request id (the ``x-request-id`` response metadata; GetFeed's
  response carries it too) and writes one short log line when it ends: method, status code, time,
  and what the handler noted (`note`), each value cut short, whatever the input.
- `Metrics`: ``feed_requests_total{method, code}`` and ``feed_request_seconds{method}``.
- `Decode`: a body that is not the method's message gets INVALID_ARGUMENT (grpcio's default is
  INTERNAL "Exception deserializing request!" with a traceback in the log).
- `Authenticate`: the write methods need one of the configured API keys in ``x-api-key``.
- `Admission`: a call the server cannot start soon gets RESOURCE_EXHAUSTED at once, with a
  google.rpc.RetryInfo, instead of waiting in a queue: once `max_workers` calls are in progress,
  or `feed_concurrency + max_queued_feeds` GetFeeds. The decision is made as the call arrives (in
  gRPC's polling thread, before any worker thread is taken); the pool keeps `SPARE_THREADS`
  threads beyond `max_workers` to answer refusals, so a refusal never waits behind admitted calls.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hmac
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator

import grpc

from feedcore.config import ServingConfig
from serving.metrics import ServiceMetrics
from serving.validation import abort_invalid, clip, overloaded_status

logger = logging.getLogger(__name__)
API_KEY_HEADER = "x-api-key"
REQUEST_ID_HEADER = "x-request-id"
SPARE_THREADS = 4  # worker threads beyond max_workers, which only refusals use
_LOG_VALUE_CHARS = 64


@dataclasses.dataclass
class CallInfo:
    request_id: str
    method: str
    notes: dict[str, object] = dataclasses.field(default_factory=dict)


_CALL: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("feed_call", default=None)


def request_id() -> str:
    """The request id of the call this thread is serving (empty outside a call)."""
    call = _CALL.get()
    return call.request_id if call is not None else ""


def note(**fields: object) -> None:
    """Add `fields` to the call's log line (values are cut short there)."""
    call = _CALL.get()
    if call is not None:
        call.notes.update(fields)


def server_interceptors(config: ServingConfig, metrics: ServiceMetrics,
                        write_methods: Iterable[str], feed_method: str) -> list[grpc.ServerInterceptor]:
    """The interceptors of a feed server, outermost first."""
    return [RequestLog(), Metrics(metrics), Decode(), Authenticate(config.api_keys, write_methods),
            Admission(config, feed_method)]


# -- building handlers -------------------------------------------------------------------------

def _behavior(handler: grpc.RpcMethodHandler) -> Callable:
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


def _rebuild(handler: grpc.RpcMethodHandler, behavior: Callable,
             request_deserializer: Callable | None = None) -> grpc.RpcMethodHandler:
    """`handler` with another behaviour (and request deserializer), through grpc's public factories."""
    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    return make[handler.request_streaming, handler.response_streaming](
        behavior, request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer)


def _around(handler: grpc.RpcMethodHandler,
            scope: Callable[[grpc.ServicerContext], contextlib.AbstractContextManager]) -> grpc.RpcMethodHandler:
    """`handler` run inside `scope(context)`: around the whole stream for a streaming response."""
    behavior = _behavior(handler)
    if handler.response_streaming:
        def streaming(request, context):
            with scope(context):
                yield from behavior(request, context)
        return _rebuild(handler, streaming)

    def unary(request, context):
        with scope(context):
            return behavior(request, context)
    return _rebuild(handler, unary)


def _refusal(handler: grpc.RpcMethodHandler, refuse: Callable[[grpc.ServicerContext], None]) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind that reads nothing and ends the call with `refuse(context)`."""
    if handler.response_streaming:
        def streaming(_request, context):
            refuse(context)
            yield from ()
        return _rebuild(handler, streaming)
    return _rebuild(handler, lambda _request, context: refuse(context))


def _short_method(full: str) -> str:
    return full.rsplit("/", 1)[-1]


def _code(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


# -- the interceptors --------------------------------------------------------------------------

class RequestLog(grpc.ServerInterceptor):
    """A request id per call, and one log line per call, short whatever the input."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = _short_method(handler_call_details.method)

        @contextlib.contextmanager
        def logged(context: grpc.ServicerContext):
            call = CallInfo(uuid.uuid4().hex, method)
            token = _CALL.set(call)
            start, failed = time.perf_counter(), False
            try:
                context.send_initial_metadata(((REQUEST_ID_HEADER, call.request_id),))
            except ValueError:  # already sent
                pass
            try:
                yield call
            except BaseException:
                failed = True
                raise
            finally:
                _CALL.reset(token)
                code = _code(context, failed)
                notes = " ".join(f"{k}={clip(v, _LOG_VALUE_CHARS) if isinstance(v, str) else v}"
                                 for k, v in call.notes.items())
                details = f" details={clip(context.details() or '', 120)}" if code != grpc.StatusCode.OK else ""
                level = logging.ERROR if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) else logging.INFO
                logger.log(level, "request_id=%s method=%s code=%s ms=%.1f %s%s", call.request_id, method, code.name,
                           1000 * (time.perf_counter() - start), notes, details)

        return _around(handler, logged)


class Metrics(grpc.ServerInterceptor):
    """Every call timed and counted under the status code it ends with."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = _short_method(handler_call_details.method)

        @contextlib.contextmanager
        def observed(context: grpc.ServicerContext):
            start, failed = time.perf_counter(), False
            try:
                yield
            except BaseException:
                failed = True
                raise
            finally:
                self.metrics.latency.labels(method).observe(time.perf_counter() - start)
                self.metrics.requests.labels(method, _code(context, failed).name).inc()

        return _around(handler, observed)


class _Unparsable:
    """What `Decode`'s deserializer returns for bytes that are not the message."""

    def __init__(self, error: Exception, size: int) -> None:
        self.error, self.size = error, size


class Decode(grpc.ServerInterceptor):
    """A request body that does not parse gets INVALID_ARGUMENT, not grpcio's INTERNAL."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse, behavior = handler.request_deserializer, _behavior(handler)
        name = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        message = name.full_name if name is not None else "request message"

        def deserialize(data: bytes):
            try:
                return parse(data)
            except Exception as e:  # noqa: BLE001 (any failure to parse is the client's)
                return _Unparsable(e, len(data))

        def refuse(context: grpc.ServicerContext, bad: _Unparsable, index: int | None) -> None:
            where = f"message {index} of the stream" if index is not None else "the request body"
            abort_invalid(context, [("", f"{where} ({bad.size} bytes) is not a valid {message}: "
                                         f"{clip(str(bad.error), 80)}")])

        if handler.request_streaming:
            def checked(requests: Iterator, context: grpc.ServicerContext):
                for index, request in enumerate(requests):
                    if isinstance(request, _Unparsable):
                        refuse(context, request, index)
                    yield request

            def streaming_request(requests, context):
                return behavior(checked(requests, context), context)
            return _rebuild(handler, streaming_request, deserialize)

        def unary_request(request, context):
            if isinstance(request, _Unparsable):
                refuse(context, request, None)
            return behavior(request, context)
        return _rebuild(handler, unary_request, deserialize)


class Authenticate(grpc.ServerInterceptor):
    """The write methods need one of `api_keys` in the ``x-api-key`` metadata (UNAUTHENTICATED)."""

    def __init__(self, api_keys: Iterable[str], methods: Iterable[str]) -> None:
        self.api_keys, self.methods = tuple(api_keys), frozenset(methods)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method not in self.methods:
            return handler
        problem = self._problem(dict(handler_call_details.invocation_metadata or ()).get(API_KEY_HEADER, ""))
        if problem is None:
            return handler
        return _refusal(handler, lambda context: context.abort(grpc.StatusCode.UNAUTHENTICATED, problem))

    def _problem(self, key: str | bytes) -> str | None:
        method = ", ".join(sorted(_short_method(m) for m in self.methods))
        if not self.api_keys:
            return "writes are disabled: the server has no API keys configured (serving.api_keys)"
        if not key:
            return f"{method} needs an API key in the '{API_KEY_HEADER}' call metadata"
        key = key if isinstance(key, str) else key.decode("utf-8", "replace")
        if not any(hmac.compare_digest(key.encode(), k.encode()) for k in self.api_keys):
            return f"the API key in '{API_KEY_HEADER}' is not valid"
        return None


class _Ticket:
    """One admitted call's place; released once (when its handler ends, or when grpc drops a
    call whose handler never ran: a client that left while it waited)."""

    def __init__(self, admission: Admission, feed: bool) -> None:
        self.admission, self.feed, self._released = admission, feed, False

    def release(self) -> None:
        with self.admission.lock:
            if self._released:
                return
            self._released = True
            self.admission.in_flight -= 1
            self.admission.feeds -= self.feed


class Admission(grpc.ServerInterceptor):
    """RESOURCE_EXHAUSTED at once, with a retry hint, for a call beyond the bounds (module doc)."""

    def __init__(self, config: ServingConfig, feed_method: str) -> None:
        self.max_in_flight = config.max_workers
        self.max_feeds = (config.feed_concurrency + config.max_queued_feeds
                          if config.feed_concurrency > 0 and config.max_queued_feeds >= 0 else None)
        self.concurrency = max(1, config.feed_concurrency)
        self.feed_method = feed_method
        self.lock = threading.Lock()
        self.in_flight = self.feeds = 0
        self.feed_seconds = 0.05  # a moving average of GetFeed's time in the server (its retry hint)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        feed = handler_call_details.method == self.feed_method
        with self.lock:
            if self.in_flight >= self.max_in_flight:
                refusal = f"the server is at its limit of {self.max_in_flight} calls in progress"
            elif feed and self.max_feeds is not None and self.feeds >= self.max_feeds:
                refusal = f"{self.feeds - self.concurrency} feed requests are already waiting"
            else:
                refusal = None
                self.in_flight += 1
                self.feeds += feed
        if refusal is not None:
            retry_s = max(0.05, min(5.0, self.feed_seconds * (self.max_feeds or 1) / self.concurrency))
            status = overloaded_status(f"overloaded: {refusal}; retry in {retry_s * 1000:.0f} ms", retry_s)
            return _refusal(handler, lambda context: context.abort_with_status(status))
        ticket = _Ticket(self, feed)

        @contextlib.contextmanager
        def admitted(_context: grpc.ServicerContext):
            start = time.perf_counter()
            try:
                yield
            finally:
                if feed:
                    self.feed_seconds = 0.9 * self.feed_seconds + 0.1 * (time.perf_counter() - start)
                ticket.release()

        wrapped = _around(handler, admitted)
        weakref.finalize(_behavior(wrapped), ticket.release)  # a call whose handler never ran
        return wrapped
