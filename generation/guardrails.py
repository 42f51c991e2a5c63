"""What no generated post may contain: blocked words and topics, profanity, personal data.

`Guardrails.check` returns the reason a text is refused (or None) and counts refusals by reason,
so the service can export them as metrics; each refusal is logged with its reason and the match.

Personal data is what a post about catalog items never needs: e-mail addresses, phone numbers
(7 or more digits, not a year range such as "1995-2001"), URLs and web addresses, and user ids in
the forms the feed uses or a model imitates ("@name", "account:42", "user 42", "user_id: 42").
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from importlib import resources

from feedcore.config import GuardrailConfig

logger = logging.getLogger(__name__)
REASONS = ("blocked_word", "blocked_topic", "profanity", "personal_data")

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"\b(?:https?://|www\.)\S+|\b[\w-]+\.(?:com|net|org|io|co|uk|de|fr|info|biz|ly|me|tv|app)\b(?:/\S*)?",
                  re.IGNORECASE)
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d ().-]{5,}\d(?![\w.])")
_YEAR_RANGE = re.compile(r"\(?\d{4}\)?\s*[-–]\s*\(?\d{4}\)?")
_USER_ID = re.compile(r"(?<![\w.@])@\w{2,}|\baccount:\S+|\buser(?:[ _-]?id)?\s*[:#]?\s*\d+\b", re.IGNORECASE)


def load_word_list(text: str) -> tuple[str, ...]:
    """Words and phrases of a word-list file: one a line, "#" comments and blank lines skipped.

    >>> load_word_list("# comment\\nfoo\\n\\nbar baz\\n")
    ('foo', 'bar baz')
    """
    return tuple(w for w in (line.split("#", 1)[0].strip().lower() for line in text.splitlines()) if w)


def bundled_profanity() -> tuple[str, ...]:
    """The short English profanity list shipped in `generation/data/profanity.txt`."""
    return load_word_list(resources.files("generation").joinpath("data/profanity.txt").read_text("utf-8"))


def _whole_words(words: Iterable[str]) -> re.Pattern | None:
    words = sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
    if not words:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)


def find_personal_data(text: str) -> str | None:
    """What kind of personal data `text` holds, with the match, or None.

    >>> find_personal_data("Write to ana@example.org")
    'e-mail address: ana@example.org'
    >>> find_personal_data("Heat (1995) and Casino, 1995-2001 favourites") is None
    True
    >>> find_personal_data("Call +1 (555) 123-4567 now")
    'phone number: +1 (555) 123-4567'
    """
    if m := _EMAIL.search(text):
        return f"e-mail address: {m.group()}"
    if m := _URL.search(text):
        return f"url: {m.group()}"
    for m in _PHONE.finditer(text):
        digits = sum(c.isdigit() for c in m.group())
        if digits >= 7 and not _YEAR_RANGE.fullmatch(m.group().strip()):
            return f"phone number: {m.group().strip()}"
    if m := _USER_ID.search(text):
        return f"user id: {m.group()}"
    return None


class Guardrails:
    """The content rules of `GuardrailConfig`, applied to every post before it is served.

    Args:
        config: blocked words (everywhere, per surface, per creator), blocked topics, and whether
            the bundled profanity list and the personal-data rules apply.

    Example:
        >>> from feedcore.config import GuardrailConfig
        >>> rails = Guardrails(GuardrailConfig(blocked_words=("spoiler",), blocked_topics=("box office",)))
        >>> rails.check("No spoiler here.", "home", ())
        'blocked_word'
        >>> rails.check("Its box office was huge.", "home", ())
        'blocked_topic'
        >>> rails.check("Two fine films.", "home", ()) is None
        True
        >>> rails.rejections["blocked_word"]
        1
    """

    def __init__(self, config: GuardrailConfig) -> None:
        self.config = config
        self._blocked = _whole_words(config.blocked_words)
        self._topics = _whole_words(config.blocked_topics)
        self._profanity = _whole_words(bundled_profanity()) if config.profanity else None
        self._surface = {k: _whole_words(v) for k, v in config.surface_blocked_words.items()}
        self._creator = {k: _whole_words(v) for k, v in config.creator_blocked_words.items()}
        self._lock = threading.Lock()
        self._rejections: Counter[str] = Counter()

    @property
    def rejections(self) -> Counter[str]:
        """A snapshot of the refusals so far, by reason."""
        with self._lock:
            return Counter(self._rejections)

    def check(self, text: str, surface: str = "home", creator_ids: Sequence[str] = ()) -> str | None:
        """Why `text` may not be served on `surface` beside the sources of `creator_ids` (None: it may).

        Args:
            text: the post.
            surface: where it would be shown ("home", ...).
            creator_ids: the creators of its source items.

        Returns:
            One of `REASONS`, or None.
        """
        reason, detail = self._find(text, surface, creator_ids)
        if reason is not None:
            with self._lock:
                self._rejections[reason] += 1
            logger.info("generated post refused by guardrails: %s (%s)", reason, detail)
        return reason

    def would_refuse(self, text: str, surface: str = "home", creator_ids: Sequence[str] = ()) -> str | None:
        """What `check` would answer, without counting or logging (for drafts, such as a stream's)."""
        return self._find(text, surface, creator_ids)[0]

    def _find(self, text: str, surface: str, creator_ids: Sequence[str]) -> tuple[str | None, str]:
        blocked = [self._blocked, self._surface.get(surface)] + [self._creator.get(c) for c in creator_ids]
        for pattern in blocked:
            if pattern is not None and (m := pattern.search(text)):
                return "blocked_word", m.group()
        if self._topics is not None and (m := self._topics.search(text)):
            return "blocked_topic", m.group()
        if self._profanity is not None and (m := self._profanity.search(text)):
            return "profanity", m.group()
        if self.config.personal_data and (found := find_personal_data(text)):
            return "personal_data", found
        return None, ""
