"""What a client may send, and the INVALID_ARGUMENT it gets otherwise (the bounds documented in
protos/feed/v1/feed.proto).

Every id and string from a client is bounded: at most `MAX_ID_BYTES` of UTF-8 and no control
characters, so a log line, a cursor or an error message built from one stays short. A refusal
carries a google.rpc.BadRequest with one field violation per wrong field (grpcio-status), so a
client can show which field was wrong, and its message quotes at most `ECHO_CHARS` of the value.
"""

from __future__ import annotations

import re

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

MAX_ID_BYTES = 256
MAX_CURSOR_BYTES = 2048
MAX_OVERRIDES = 16
ECHO_CHARS = 40
# C0 and C1 controls and DEL: a NUL or newline in an id would forge log lines or split records.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def clip(value: object, limit: int = ECHO_CHARS) -> str:
    """`value` for an error message or a log line: its repr, cut to `limit` characters (saying how
    long it was), so echoing client input never makes a message or a line long."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text.encode('utf-8', 'surrogatepass'))} bytes)"


def id_problem(value: str, required: bool = False, limit: int = MAX_ID_BYTES) -> str | None:
    """Why `value` is not an acceptable id (None when it is): empty when required, longer than
    `limit` bytes of UTF-8, or holding a control character."""
    if not value:
        return "is required" if required else None
    if len(value) > limit or len(value.encode("utf-8", "surrogatepass")) > limit:
        return f"is {len(value.encode('utf-8', 'surrogatepass'))} bytes long, at most {limit} are allowed"
    if match := _CONTROL.search(value):
        return f"holds the control character U+{ord(match.group()):04X} at {match.start()}, which ids may not"
    return None


class Violations:
    """Field violations gathered while checking one request; `abort` refuses it with all of them."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, problem: str) -> None:
        self.items.append((f"{self.prefix}{field}", problem))

    def check_id(self, field: str, value: str, required: bool = False, limit: int = MAX_ID_BYTES) -> bool:
        problem = id_problem(value, required, limit)
        if problem is not None:
            self.add(field, problem)
        return problem is None

    def abort(self, context: grpc.ServicerContext, suffix: str = "") -> None:
        """INVALID_ARGUMENT naming every violation (when there are any)."""
        if self.items:
            abort_invalid(context, self.items, suffix)


def abort_invalid(context: grpc.ServicerContext, violations: list[tuple[str, str]], suffix: str = "") -> None:
    """End the call with INVALID_ARGUMENT: "<field> <problem>; ..." plus `suffix`, and a
    google.rpc.BadRequest listing each (field, problem)."""
    message = "; ".join(f"{field} {problem}" if field else problem for field, problem in violations) + suffix
    detail = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=field, description=problem)
        for field, problem in violations])
    context.abort_with_status(_status(code_pb2.INVALID_ARGUMENT, message, detail))


def overloaded_status(message: str, retry_after_s: float) -> grpc.Status:
    """RESOURCE_EXHAUSTED with a google.rpc.RetryInfo: when the client may try again."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(retry_after_s * 1e9))
    return _status(code_pb2.RESOURCE_EXHAUSTED, message, error_details_pb2.RetryInfo(retry_delay=delay))


def _status(code: int, message: str, detail) -> grpc.Status:
    status = status_pb2.Status(code=code, message=message)
    status.details.add().Pack(detail)
    return rpc_status.to_status(status)
