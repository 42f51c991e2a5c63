"""The grounding check: which items does a post name, and are they the ones it was written from?

A small model drifts and invents: it names other films, people and "facts". Before a post is
served, `Catalog.check` finds every catalog title named in its text and every title-like span
that is no catalog title, and `repair` removes the sentences that name anything but the sources.
`template_post` is the fallback that is grounded by construction.

Title matching (`Catalog.find_titles`) runs over normalized word tokens (lower case, accents and
apostrophes dropped, "&" read as "and") with a leftmost-longest lookup over every catalog title's
display form (and, for titles such as "Star Wars: Episode IV - A New Hope", the part before the
colon or dash). Because many titles are ordinary words ("Heat", "Up", "The Game"), a match counts
only when it reads as a title:

- a title written in double quotes always counts;
- a title with three or more content words (not stop words) counts in any case;
- otherwise every content word must be capitalized as written in the text, and a one-word title
  must not be the first word of a sentence ("Heat waves..." is not the film) unless its word has
  five or more letters, is in at most `DISTINCTIVE_TITLES` catalog titles and is no common
  sentence opener (`OPENERS`): "Jumanji is..." is the film;
- one- or two-letter titles, numbers and stop-word-only titles ("Up", "1984", "It") count only
  when quoted;
- a short title inside a longer quoted name is part of that name ("Home" in "Buzz Goes Home").

Title-like spans that match no catalog title are reported as unknown names: any quoted span that
starts with a capital, and any run of two or more capitalized words (joined by at most "of",
"the", "and", ...), not counting a sentence's first word, the words of the sources' titles and
categories, the reader's interests and a few generic words ("Movie", "Fans"). Real names the
sources do not carry ("Tom Hanks", "New York") are unknown names too: the post may state nothing
its sources do not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

import polars as pl

from generation.interface import Kind, SourceItem
from generation.titles import display_title, items_noun

STOPWORDS = frozenset(
    "a an and are as at be but by do for from has have he her his i if in is it its me my no not of on "
    "or our she so than that the their them then they this to us was we were what when who will with you your".split())
CONNECTORS = frozenset("of the and a an in on at to for de la le du del von van".split())
GENERIC = frozenset(
    "movie movies film films fan fans pick picks list watch watching night tonight weekend story stories "
    "classic classics favorite favorites favourite favourites product products supplies office arts crafts "
    "title titles series collection season genre genres set".split())
MIN_CASELESS_WORDS = 3  # titles with this many content words count however they are capitalized
DISTINCTIVE_TITLES = 3  # a word of 5+ letters in at most this many titles is a name, wherever it stands
# Words that open sentences of posts and are also (rare) one-word titles: never that title there.
OPENERS = frozenset("about after again always because before check enjoy enjoyed every experience explore "
                    "looking ready since start still there these those three watch whether while".split())
NGRAM = 4  # a post repeats itself when a word 4-gram (titles count as one word) occurs twice

_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|&")
_QUOTES_OPEN = "\"“«*"
_QUOTES_CLOSE = "\"”»*"
_TITLE_EDGES = "'’*[]()¡¿"
_NAME_QUOTES = re.compile(r"[\"“]([^\"“”\n]{1,200})[\"”]")
_SENTENCE_END = re.compile(r"[.!?…]+[\"”')\]]*(?=\s|$)|\n+")
_ALIAS_CUT = re.compile(r":\s|\s[-–]\s")
_FINISHED = re.compile(r"[.!?…][\"”')\]*]*$|[\U0001F300-\U0001FAFF\u2600-\u27BF]$")


def normalize_word(word: str) -> str:
    """Lower case, no accents, no apostrophes; "&" is "and".

    >>> [normalize_word(w) for w in ["Amélie", "Schindler's", "&"]]
    ['amelie', 'schindlers', 'and']
    """
    if word == "&":
        return "and"
    word = unicodedata.normalize("NFKD", word)
    return "".join(c for c in word if not unicodedata.combining(c) and c not in "'’").lower()


def title_key(title: str) -> tuple[str, ...]:
    """The normalized word tokens a title is looked up by.

    >>> title_key("Dumb & Dumber")
    ('dumb', 'and', 'dumber')
    """
    return tuple(normalize_word(m.group()) for m in _TOKEN.finditer(title))


@dataclasses.dataclass(frozen=True)
class _Token:
    norm: str
    start: int
    end: int
    capitalized: bool
    sentence_start: bool


def _tokens(text: str) -> list[_Token]:
    out = []
    for m in _TOKEN.finditer(text):
        before = text[: m.start()].rstrip(" \t\"“«*([-•")
        first = m.group()[0]
        out.append(_Token(normalize_word(m.group()), m.start(), m.end(), first.isupper() or first.isdigit(),
                          not before or before[-1] in ".!?…\n"))
    return out


def _quoted(text: str, start: int, end: int) -> bool:
    # Titles may begin or end with an apostrophe or a mark ("'night Mother", "Gone Fishin'").
    before, after = text[:start].rstrip("." + _TITLE_EDGES), text[end:].lstrip(".,!?" + _TITLE_EDGES)
    return before[-1:] != "" and before[-1] in _QUOTES_OPEN and after[:1] != "" and after[0] in _QUOTES_CLOSE


def _quoted_only(key: tuple[str, ...]) -> bool:
    content = [w for w in key if w not in STOPWORDS]
    return not content or (len(key) == 1 and (len(key[0]) < 3 or not key[0].isalpha()))


@dataclasses.dataclass(frozen=True)
class TitleMatch:
    """A catalog title named in a text: its character span and the items that carry that title."""

    start: int
    end: int
    item_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence of a checked text and what the check found in it."""

    start: int
    end: int
    names_source: bool
    names_foreign: bool
    repeated: bool


@dataclasses.dataclass(frozen=True)
class GroundingResult:
    """What `Catalog.check` found in one text.

    `ok` says the text may be served as written: it names at least one source, nothing else, does
    not repeat itself, fits `max_chars`, ends with a finished sentence and is real text.
    """

    text: str
    named_source_ids: tuple[str, ...]
    foreign_item_ids: tuple[str, ...]  # catalog items named that are not sources
    unknown_names: tuple[str, ...]  # title-like spans that are no catalog title
    repeats: bool
    over_length: bool
    unfinished: bool
    garbage: bool
    sentences: tuple[Sentence, ...]
    max_chars: int

    @property
    def foreign_names(self) -> tuple[str, ...]:
        return self.foreign_item_ids + self.unknown_names

    @property
    def reason(self) -> str | None:
        """Why the text may not be served as written (None when it may)."""
        if self.garbage:
            return "garbage"
        if self.foreign_item_ids:
            return "foreign_item"
        if self.unknown_names:
            return "invented_name"
        if self.repeats:
            return "repeats"
        if self.over_length:
            return "over_length"
        if self.unfinished:
            return "unfinished"
        if not self.named_source_ids:
            return "no_source"
        return None

    @property
    def ok(self) -> bool:
        return self.reason is None


class Catalog:
    """Every catalog title, indexed for finding the ones a text names.

    Args:
        items: (item_id, title, content_type) for every catalog item; untitled items are skipped.

    Example:
        >>> catalog = Catalog([("1", "Matrix, The (1999)", "movie"), ("2", "Heat (1995)", "movie"),
        ...                    ("3", "Alien (1979)", "movie"), ("4", "In the Heat of the Night (1967)", "movie"),
        ...                    ("5", "White Heat (1949)", "movie"), ("6", "The Heat (2013)", "movie")])
        >>> [m.item_ids for m in catalog.find_titles("The Matrix and Alien. Heat waves aside, see Heat.")]
        [('1',), ('3',), ('2',)]
    """

    def __init__(self, items: Iterable[tuple[str, str | None, str]]) -> None:
        keys: dict[tuple[str, ...], list[str]] = {}
        self.titles: dict[str, str] = {}  # display titles
        self._stored: dict[str, str] = {}
        self.content_types: dict[str, str] = {}
        for item_id, title, content_type in items:
            if not title:
                continue
            shown = display_title(title)
            self.titles[item_id], self._stored[item_id], self.content_types[item_id] = shown, title, content_type
            forms = {title_key(shown)}
            alias = _ALIAS_CUT.split(shown, maxsplit=1)[0]
            if alias != shown and len(title_key(alias)) >= 2:
                forms.add(title_key(alias))
            for key in forms:
                if key:
                    keys.setdefault(key, []).append(item_id)
        self._keys = {k: tuple(v) for k, v in keys.items()}
        self.categories: list[Sequence[str]] = []  # every item's categories, when known (`from_items`)
        titles_with: Counter[str] = Counter()
        for shown in self.titles.values():
            titles_with.update(set(title_key(shown)))
        # Words in few titles ("Jumanji") are names even as a sentence's first word ("Heat" is not).
        self._distinctive = {w for w, n in titles_with.items() if n <= DISTINCTIVE_TITLES}
        self._longest: dict[str, int] = {}
        for key in self._keys:
            self._longest[key[0]] = max(self._longest.get(key[0], 0), len(key))

    @classmethod
    def from_items(cls, items: pl.DataFrame) -> Catalog:
        """From a canonical items table (item_id, title, content_type)."""
        catalog = cls(zip(items["item_id"].cast(pl.String).to_list(), items["title"].to_list(),
                          items["content_type"].to_list(), strict=True))
        if "categories" in items.columns:
            catalog.categories = [c for c in items["categories"].to_list() if c]
        return catalog

    def __len__(self) -> int:
        return len(self.titles)

    def source(self, item_id: str, categories: Sequence[str] = (), creator_id: str | None = None) -> SourceItem:
        """The `SourceItem` of a catalog item, with its title as stored."""
        return SourceItem(item_id, self._stored[item_id], self.content_types[item_id], tuple(categories), creator_id)

    def find_titles(self, text: str) -> list[TitleMatch]:
        """Every catalog title named in `text`, leftmost-longest, under the rules in the module doc."""
        tokens = _tokens(text)
        quotes = _quote_spans(text)
        matches, i = [], 0
        while i < len(tokens):
            for length in range(min(self._longest.get(tokens[i].norm, 0), len(tokens) - i), 0, -1):
                key = tuple(t.norm for t in tokens[i:i + length])
                ids = self._keys.get(key)
                if ids and self._reads_as_title(text, tokens[i:i + length], key, quotes):
                    matches.append(TitleMatch(tokens[i].start, tokens[i + length - 1].end, ids))
                    i += length
                    break
            else:
                i += 1
        return matches

    def _reads_as_title(self, text: str, span: list[_Token], key: tuple[str, ...], quotes: list[tuple[int, int]]) -> bool:
        if _quoted(text, span[0].start, span[-1].end):
            return True
        if _quoted_only(key):
            return False
        content = [t for t in span if t.norm not in STOPWORDS]
        if len(content) >= MIN_CASELESS_WORDS:
            return True
        if any(s <= span[0].start and span[-1].end <= e for s, e in quotes):
            return False  # a short title inside a longer quoted name ("Home" in "Buzz Goes Home")
        if not all(t.capitalized for t in content):
            return False
        if len(span) > 1 or not span[0].sentence_start:
            return True
        word = span[0].norm
        return word in self._distinctive and len(word) >= 5 and word not in OPENERS

    def check(self, text: str, sources: Sequence[SourceItem], interests: Sequence[str] = (),
              max_chars: int = 400) -> GroundingResult:
        """Check one text against its sources.

        Args:
            text: the post as written.
            sources: the items it was written from.
            interests: the reader's interests (their words are not names).
            max_chars: the longest post served.

        Example:
            >>> catalog = Catalog([("1", "Matrix, The (1999)", "movie"), ("2", "Alien (1979)", "movie")])
            >>> matrix = catalog.source("1")
            >>> catalog.check("Watch The Matrix tonight.", [matrix]).ok
            True
            >>> r = catalog.check("Watch The Matrix. Then Alien, with Sigourney Weaver.", [matrix])
            >>> r.reason, r.foreign_item_ids, r.unknown_names
            ('foreign_item', ('2',), ('Sigourney Weaver',))
        """
        source_ids = {s.item_id for s in sources}
        matches = self.find_titles(text)
        tokens = _tokens(text)
        sentences = _sentence_spans(text, matches)

        def sentence_of(pos: int) -> int:
            return next(k for k, (s, e) in enumerate(sentences) if pos < e or k == len(sentences) - 1)

        named, foreign = [], []
        source_sentences, foreign_sentences = set(), set()
        for m in matches:
            hit = [i for i in m.item_ids if i in source_ids]
            if hit:
                named.extend(i for i in hit if i not in named)
                source_sentences.add(sentence_of(m.start))
            else:
                foreign.extend(i for i in m.item_ids[:1] if i not in foreign)
                foreign_sentences.add(sentence_of(m.start))

        unknown = []
        for start, end in _unknown_name_spans(text, tokens, matches, sources, interests):
            unknown.append(text[start:end])
            foreign_sentences.add(sentence_of(start))

        repeated_sentences = _repeated_sentences(text, tokens, matches, sentences)
        letters = sum(c.isalpha() for c in text)
        visible = sum(not c.isspace() for c in text)
        garbage = (len(tokens) < 3 or letters < 0.6 * max(visible, 1) or "<|" in text)
        stripped = text.strip()
        return GroundingResult(
            text=text,
            named_source_ids=tuple(named),
            foreign_item_ids=tuple(foreign),
            unknown_names=tuple(dict.fromkeys(unknown)),
            repeats=bool(repeated_sentences),
            over_length=len(stripped) > max_chars,
            unfinished=bool(stripped) and not _FINISHED.search(stripped),
            garbage=garbage,
            sentences=tuple(Sentence(s, e, k in source_sentences, k in foreign_sentences, k in repeated_sentences)
                            for k, (s, e) in enumerate(sentences)),
            max_chars=max_chars,
        )


def _sentence_spans(text: str, matches: list[TitleMatch]) -> list[tuple[int, int]]:
    """Sentence (start, end) character spans; a full stop inside a title ("Monsters, Inc.") is no end."""
    inside = [(m.start, m.end) for m in matches]
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if any(s <= m.start() < e + 1 for s, e in inside) and m.end() < len(text) and text[m.end():m.end() + 2].strip()[:1].islower():
            continue
        if text[start:m.end()].strip():
            spans.append((start, m.end()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans or [(0, len(text))]


def _quote_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the text inside each pair of double quotes, without edge punctuation."""
    spans = []
    for m in _NAME_QUOTES.finditer(text):
        inner = m.group(1).strip(" .,!?" + _TITLE_EDGES)
        if inner:
            start = m.start(1) + m.group(1).index(inner)
            spans.append((start, start + len(inner)))
    return spans


def _unknown_name_spans(text: str, tokens: list[_Token], matches: list[TitleMatch],
                        sources: Sequence[SourceItem], interests: Sequence[str]) -> list[tuple[int, int]]:
    """Title-like spans (quoted, or runs of capitalized words) that no catalog title covers."""
    covered = [(m.start, m.end) for m in matches]

    def is_covered(start: int, end: int) -> bool:
        return any(s <= start and end <= e for s, e in covered)

    known = set(GENERIC) | STOPWORDS
    for s in sources:
        known.update(title_key(display_title(s.title)))
        for c in s.categories:
            known.update(title_key(c))
    for interest in interests:
        known.update(title_key(interest))

    spans = [(s, e) for s, e in _quote_spans(text) if text[s].isupper() and not is_covered(s, e)]

    run: list[_Token] = []

    def flush() -> None:
        while run and run[-1].norm in CONNECTORS and not run[-1].capitalized:
            run.pop()
        names = [t for t in run if t.capitalized and not t.sentence_start and t.norm not in known
                 and not t.norm.isdigit()]
        if len(names) >= 2 and not any(s <= run[0].start < e for s, e in spans):
            spans.append((run[0].start, run[-1].end))
        run.clear()

    for i, t in enumerate(tokens):
        joined = i > 0 and re.fullmatch(r"[ \t'’-]*", text[tokens[i - 1].end:t.start]) is not None
        if is_covered(t.start, t.end) or not joined and run:
            flush()
        if is_covered(t.start, t.end):
            continue
        if t.capitalized and (t.norm.isalpha() or run):
            run.append(t)
        elif run and t.norm in CONNECTORS:
            run.append(t)
        else:
            flush()
    flush()
    return spans


def _repeated_sentences(text: str, tokens: list[_Token], matches: list[TitleMatch],
                        sentences: list[tuple[int, int]]) -> set[int]:
    """Sentences that repeat an earlier one, or an earlier word 4-gram (a title counts as one word)."""
    words: list[tuple[str, int]] = []  # (word, sentence index)
    k, m = 0, 0
    for t in tokens:
        while k < len(sentences) - 1 and t.start >= sentences[k][1]:
            k += 1
        while m < len(matches) and matches[m].end <= t.start:
            m += 1
        if m < len(matches) and matches[m].start <= t.start < matches[m].end:
            if t.start == matches[m].start:
                words.append((f"<{matches[m].item_ids[0]}>", k))
            continue
        words.append((t.norm, k))
    repeated: set[int] = set()
    seen_sentences: set[tuple[str, ...]] = set()
    for k in range(len(sentences)):
        sentence = tuple(w for w, j in words if j == k)
        if sentence and sentence in seen_sentences:
            repeated.add(k)
        seen_sentences.add(sentence)
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - NGRAM + 1):
        gram = tuple(w for w, _ in words[i:i + NGRAM])
        if gram in seen:
            repeated.add(words[i + NGRAM - 1][1])
        seen.add(gram)
    return repeated


def repair(result: GroundingResult) -> str:
    """The text of a checked post without the sentences that make it fail, or "" if none is left.

    Drops sentences naming foreign items or unknown names and sentences that repeat, then an
    unfinished last sentence, then sentences past `max_chars`. Re-check the repaired text: it may
    no longer name a source.

    Example:
        >>> catalog = Catalog([("1", "Matrix, The (1999)", "movie"), ("2", "Alien (1979)", "movie")])
        >>> r = catalog.check("The Matrix is sharp. See Alien next. The Matrix is sharp. It is", [catalog.source("1")])
        >>> repair(r)
        'The Matrix is sharp.'
    """
    kept = [s for s in result.sentences if not (s.names_foreign or s.repeated)]
    pieces = [result.text[s.start:s.end].strip() for s in kept]
    if pieces and not _FINISHED.search(pieces[-1]):
        pieces.pop()
    out = ""
    for piece in pieces:
        candidate = f"{out} {piece}".strip()
        if len(candidate) > result.max_chars:
            break
        out = candidate
    return out


def _quote(title: str) -> str:
    return '"' + display_title(title).replace('"', "'") + '"'


def _join(titles: Sequence[str]) -> str:
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]


_COUNTS = {2: "Two", 3: "Three", 4: "Four"}
TEMPLATES: dict[str, tuple[str, ...]] = {
    "digest": (
        "Picked for you: {all}.{interest_line}",
        "{count} {noun} worth your time: {all}.{interest_line}",
        "Your short list this week: {all}. Start with {first}.",
        "In the mood for {interests}? Try {all}.",
    ),
    "because": (
        "Because you liked {first}: {rest} {are} next on your list.",
        "Enjoyed {first}? You may also like {rest}.",
        "More for fans of {first}: {rest}.",
    ),
    "caption": (
        "Your next picks: {all}.",
        "A short list for you: {all}.",
        "{count} {noun}, one evening: {all}.",
    ),
}


def template_post(sources: Sequence[SourceItem], interests: Sequence[str], kind: Kind, user_id: str,
                  seed: int = 0) -> str:
    """A deterministic post about exactly `sources`, the fallback when the model's posts fail.

    Every title is quoted as displayed, so the grounding check finds each of them; the template is
    picked by a seeded hash of the user, so fallbacks do not all read the same.

    Args:
        sources: 2-4 items ("because": the first is the one liked).
        interests: the reader's interests (lower-cased in the text).
        kind: "digest", "because" or "caption".
        user_id: whom it is for (picks the template).
        seed: changes the pick for every user.

    Example:
        >>> items = [SourceItem("1", "Matrix, The (1999)", "movie"), SourceItem("2", "Alien (1979)", "movie")]
        >>> template_post(items, ["Sci-Fi"], "because", user_id="7")
        'Enjoyed "The Matrix"? You may also like "Alien".'
    """
    interest_words = [i.lower() for i in interests if i and not i.startswith("(")][:2]
    choices = [t for t in TEMPLATES[kind] if "{interests}" not in t or interest_words]
    digest = hashlib.sha1(f"{seed}:{user_id}:{kind}".encode()).digest()
    template = choices[int.from_bytes(digest[:4], "big") % len(choices)]
    titles = [_quote(s.title) for s in sources]
    return template.format(
        all=_join(titles), first=titles[0], rest=_join(titles[1:]), count=_COUNTS[len(titles)],
        noun=items_noun(sources), are="is" if len(titles) == 2 else "are", interests=_join(interest_words) if interest_words else "",
        interest_line=f" Each one suits a fan of {_join(interest_words)}." if interest_words else "")
