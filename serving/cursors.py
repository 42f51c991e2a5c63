"""Page cursors: where the next page of a session starts (`encode_cursor` / `decode_cursor`), signed
with an HMAC-SHA256 under the server's key (`CursorSigner`).

A client passes `next_cursor` back unchanged; one it altered or made up fails the signature and
gets INVALID_ARGUMENT before any of it is parsed, so no crafted cursor (a huge number, deep
nesting, another user's offset) reaches the pipeline's decoder. `feed serve` keeps one key for
all its processes and across restarts (`load_cursor_key`), so a cursor stays good on any of them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
from pathlib import Path

from serving.validation import MAX_CURSOR_BYTES

logger = logging.getLogger(__name__)
_MAC_BYTES = 16  # 128 bits: a forgery is one guess in 2^128


class CursorError(ValueError):
    """A cursor this service did not issue (or issued for another user or model)."""


def encode_cursor(user_id: str, offset: int, version: str, started_ms: int = 0) -> str:
    raw = json.dumps({"u": user_id, "o": offset, "v": version, "t": started_ms}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str, user_id: str, version: str) -> tuple[int, int]:
    """The offset in the ranked feed a cursor points to, and when its session's first page was
    served (ms; 0 for the first page, which starts a session)."""
    if not cursor:
        return 0, 0
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        offset, owner, issued_by, started = int(data["o"]), data["u"], data["v"], int(data.get("t", 0))
    except (binascii.Error, ValueError, KeyError, TypeError) as e:
        raise CursorError("cursor is malformed: pass back the next_cursor of the previous page") from e
    if owner != user_id or offset < 0:
        raise CursorError(f"cursor was issued for another user, not {user_id!r}")
    if issued_by != version:
        raise CursorError("cursor was issued by an earlier model version: start again without a cursor")
    return offset, started


class CursorSigner:
    """Signs the pipeline's cursors (`sign`) and checks a client's (`open`).

    Args:
        key: the HMAC key (any length; 32 random bytes is plenty).
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("a cursor key must not be empty")
        self._key = key

    def sign(self, cursor: str) -> str:
        """`cursor` with its signature ("<cursor>.<mac>"); empty stays empty (no more pages)."""
        if not cursor:
            return ""
        return f"{cursor}.{self._mac(cursor)}"

    def open(self, signed: str) -> str:
        """The pipeline's cursor inside `signed`; CursorError unless this server signed it."""
        if not signed:
            return ""
        if len(signed) > MAX_CURSOR_BYTES:
            raise CursorError(f"cursor is {len(signed)} characters long, at most {MAX_CURSOR_BYTES}: pass back the "
                              "next_cursor of the previous page unchanged")
        cursor, _, mac = signed.rpartition(".")  # mac as bytes: compare_digest refuses non-ASCII str
        if not cursor or not hmac.compare_digest(mac.encode("utf-8", "surrogatepass"), self._mac(cursor).encode()):
            raise CursorError("cursor is malformed or was altered: pass back the next_cursor of the previous "
                              "page unchanged")
        return cursor

    def _mac(self, cursor: str) -> str:
        digest = hmac.new(self._key, cursor.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:_MAC_BYTES]).decode().rstrip("=")


def load_cursor_key(configured: str, path: Path) -> bytes:
    """The configured key, else the one kept in `path` (written there once, atomically, by the
    first server process to need it; every later one, restarts included, reads the same), else,
    when `path` cannot be written, a key of this process alone (with a warning)."""
    if configured:
        return configured.encode()
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    except (OSError, ValueError, binascii.Error) as e:
        logger.warning("cursor key %s unreadable (%s): using a key of this process alone", path, e)
        return os.urandom(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails when another process got there first: then its key is the key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as e:
        logger.warning("cannot keep a cursor key in %s (%s): cursors are valid on this process only until it "
                       "stops; set [serving] cursor_key", path, e)
        return os.urandom(32)
