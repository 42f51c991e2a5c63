"""The plan a post is written from, and the check of every attribute claim a post makes.

A post is planned before it is written (`make_plan`): the sources chosen for the user, each with its
catalog facts (display title, year, genres or categories, creator where the data has one) and why
it was picked. The prompt (`generation.prompts` "v2") shows the model those facts only, and the
decoder lets it name only those titles (`generation.llm.TitleConstraint`).

`ClaimChecker.check` then finds every attribute claim in the text and checks it against the source
it is attached to:

- genre words ("a comedy", "romantic", "sci-fi", ...; `GENRE_WORDS`): the source's genres must hold
  that genre. For product catalogs, category words (any word of a category path in the catalog,
  `ClaimChecker.category_words`, but generic ones) must be in the source's category paths or title;
- years ("1999", "the 1990s"): the source's year (from its title) must match;
- people and makers ("by X", "directed by X", "from X"): X must be the source's creator (MovieLens
  has none, so any such claim about a film is false);
- what it is ("a book", "a novel", "an album", "a TV series", ...; `TYPE_WORDS`): never true of a
  film or a product;
- a genre word about the reader ("fans of comedy", "if you enjoy drama") is checked against the
  reader's interests instead;
- a negated claim ("not a horror film") is true when the source does not hold it.

A claim is attached to the nearest source title before it in its sentence, else the first one
after it in its sentence; in a sentence naming no title, to the last title named before ("It is a
comedy."), or to every source when the sentence speaks of them together ("these", "both", "all",
"they") or none was named yet; then it is true if any of them holds it.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from generation.interface import Kind, SourceItem
from generation.titles import display_title

_YEAR_IN_TITLE = re.compile(r"\((\d{4})(?:\s*[-–]\s*\d{0,4})?\)\s*$")

# surface form → MovieLens genre. Evaluative words ("thrilling", "funny") are opinions, not claims.
GENRE_WORDS: dict[str, str] = {
    "action": "Action", "action-packed": "Action",
    "adventure": "Adventure", "adventures": "Adventure",
    "animated": "Animation", "animation": "Animation", "cartoon": "Animation", "cartoons": "Animation",
    "children's": "Children", "kids": "Children", "kid-friendly": "Children", "family-friendly": "Children",
    "comedy": "Comedy", "comedies": "Comedy", "comedic": "Comedy", "rom-com": "Comedy",
    "crime": "Crime", "heist": "Crime", "gangster": "Crime",
    "documentary": "Documentary", "documentaries": "Documentary",
    "drama": "Drama", "dramas": "Drama", "dramatic": "Drama",
    "fantasy": "Fantasy", "fantasies": "Fantasy",
    "noir": "Film-Noir", "film-noir": "Film-Noir",
    "horror": "Horror", "scary": "Horror",
    "musical": "Musical", "musicals": "Musical",
    "mystery": "Mystery", "mysteries": "Mystery", "whodunit": "Mystery",
    "romance": "Romance", "romances": "Romance", "romantic": "Romance",
    "sci-fi": "Sci-Fi", "scifi": "Sci-Fi", "science-fiction": "Sci-Fi", "science fiction": "Sci-Fi",
    "thriller": "Thriller", "thrillers": "Thriller", "suspense": "Thriller", "suspenseful": "Thriller",
    "war": "War",
    "western": "Western", "westerns": "Western",
    "imax": "IMAX",
}
# What a source is not, in any catalog here (films and products).
TYPE_WORDS = frozenset("book books novel novels album albums song songs podcast podcasts sitcom "
                       "tv-show anime manga video-game".split())
_TYPE_PHRASES = {"tv show": "tv-show", "tv series": "tv-show", "video game": "video-game"}
# Category words no claim rests on (they describe every product of a catalog, or nothing).
GENERIC_CATEGORY_WORDS = frozenset(
    "products product supplies supply office school arts art crafts craft accessories accessory general other more "
    "all with your best easy happy made time back rest view world style super sweet quality premium personal "
    "direct group store sale shop project idea unknown generic brand company amazon america american visit "
    "standard basic clear black white silver round hand light form point number part page case stand system "
    "support design creative self tool tools equipment material materials kit kits gift gifts fun children "
    "childhood early education teaching adult girl perfect favorite heart technology love lovely".split())
MIN_CATEGORY_ITEMS = 30  # a category word counts as a claim when at least this many items' categories hold it
_STOP = frozenset("a an and are as at be but by do for from has have in is it its of on or the to with".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*[A-Za-z]|[A-Za-z]")
_YEAR = re.compile(r"\b(?:'|’)?((?:1\d|20)\d\d)(s)?\b")
_CENTURY = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)[- ]century\b", re.I)
_BY = re.compile(r"\b(?:directed by|written by|made by|starring|by)\s+(\"[^\"]+\"|[\w'’.-]+(?:[ \t]+[\w'’.-]+){0,4})")
# Words of a "made by ..." phrase that name no one ("made by the renowned brand" claims nothing).
_NO_MAKER = frozenset("the a an its their this that same renowned famous fabulous incredible particular well known "
                      "company brand maker makers team firm entrepreneur artist artists it who which made and of in "
                      "for with is are was".split())
_READER = re.compile(r"(?:fans? of|lovers? of|if you (?:like|love|enjoy)|who (?:like|love|enjoy)s?|"
                     r"you (?:like|love|enjoy)|your love of|your interest in|enjoys?)\s+(?:\w+\s+){0,2}$", re.I)
_NEGATED = re.compile(r"\b(?:not|never|isn't|aren't|no)\s+(?:(?:a|an|the)\s+)?(?:[\w-]+,?\s+){0,2}$", re.I)
_TOGETHER = re.compile(r"\b(?:these|those|both|all|they|them|each|every)\b", re.I)
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"”')]*|$)")


@dataclasses.dataclass(frozen=True)
class SourceFacts:
    """One source as the plan holds it: what a post may say of it."""

    item_id: str
    title: str  # as displayed (and as a post must write it)
    year: int | None
    genres: tuple[str, ...]  # genres (MovieLens) or category path parts (products)
    creator: str | None
    reason: str  # why it was picked, in words


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a post is written from: the sources with their facts, the reader's interests, the kind."""

    sources: tuple[SourceFacts, ...]
    interests: tuple[str, ...]
    kind: Kind


def _brand(source: SourceItem) -> str | None:
    """A product's maker: the last words of its deepest category path that also open its title
    (the Amazon release ends each path with the brand: "... rotary cutters omnigrid")."""
    if source.creator_id:
        return source.creator_id
    if not source.categories or source.content_type == "movie":
        return None
    path, title = source.categories[-1].split(), source.title.lower().split()
    for n in (3, 2, 1):
        if len(path) > n and path[-n:] == title[:n] and len(" ".join(path[-n:])) >= 3:
            return " ".join(path[-n:]).title()
    return None


def source_facts(source: SourceItem, interests: Sequence[str] = (), reason: str | None = None) -> SourceFacts:
    """The catalog facts of one source (year from a MovieLens title, genres or the product's
    category below the top level, maker)."""
    year = _YEAR_IN_TITLE.search(source.title)
    categories = [c for c in source.categories if c and not c.startswith("(")]
    if source.content_type != "movie" and len(categories) >= 2:
        genres = (categories[1],)  # "sewing", "painting drawing art supplies", "office school supplies"
    else:
        genres = tuple(categories)
    if reason is None:
        shared = [i for i in interests if i in categories]
        reason = f"matches the reader's taste for {shared[0].lower()}" if shared else "ranked high for the reader"
    return SourceFacts(source.item_id, display_title(source.title), int(year.group(1)) if year else None,
                       genres, _brand(source), reason)


def make_plan(sources: Sequence[SourceItem], interests: Sequence[str], kind: Kind) -> Plan:
    """The plan of one post: each source's facts and why it was picked ("because": the first source
    is the one the reader liked, the others follow from it)."""
    facts = []
    for k, s in enumerate(sources):
        reason = None
        if kind == "because":
            liked = display_title(sources[0].title)
            reason = "the reader liked it" if k == 0 else f"like {liked}, which the reader liked"
        facts.append(source_facts(s, interests, reason))
    return Plan(tuple(facts), tuple(i for i in interests if i and not i.startswith("("))[:3], kind)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One attribute claim found in a text, where it stands, what it is attached to, and its verdict."""

    start: int
    end: int
    text: str
    kind: str  # "genre" | "category" | "year" | "creator" | "type" | "reader"
    value: str  # the normalized claim ("Comedy", "1999", "book", ...)
    item_ids: tuple[str, ...]  # the sources it is attached to (empty: the reader)
    true: bool


def _norm(word: str) -> str:
    word = word.lower().replace("’", "'")
    for suffix, repl in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)] + repl
    return word


class ClaimChecker:
    """Finds attribute claims in a post and checks each against the source it is attached to.

    Args:
        catalog_categories: every item's categories (for product catalogs, their words are the
            category claims a post can make); MovieLens genres need none.

    Example:
        >>> from generation.grounding import Catalog
        >>> catalog = Catalog([("1", "Quiet Place, A (2018)", "movie"), ("2", "Alien (1979)", "movie")])
        >>> quiet = catalog.source("1", ("Drama", "Horror", "Thriller"))
        >>> alien = catalog.source("2", ("Horror", "Sci-Fi"))
        >>> checker = ClaimChecker([])
        >>> claims = checker.check('"A Quiet Place" is a comedy from 2018. "Alien" is scary.', [quiet, alien], catalog)
        >>> [(c.text, c.item_ids, c.true) for c in claims]
        [('comedy', ('1',), False), ('2018', ('1',), True), ('scary', ('2',), True)]
    """

    def __init__(self, catalog_categories: Iterable[Sequence[str]], min_items: int = MIN_CATEGORY_ITEMS) -> None:
        counts: Counter[str] = Counter()
        for categories in catalog_categories:
            counts.update({_norm(w) for c in categories or () for w in _WORD.findall(c) if len(w) > 3})
        genre_norms = {_norm(w) for w in GENRE_WORDS}
        words = {w for w, n in counts.items() if n >= min_items}
        generic = {_norm(w) for w in GENERIC_CATEGORY_WORDS}
        self.category_words = frozenset(words - generic - _STOP - genre_norms)

    @classmethod
    def from_words(cls, category_words: Iterable[str]) -> ClaimChecker:
        """A checker with a given category vocabulary (a catalog's `category_words`, saved)."""
        checker = cls([])
        checker.category_words = frozenset(category_words)
        return checker

    def check(self, text: str, sources: Sequence[SourceItem], catalog, interests: Sequence[str] = ()) -> list[Claim]:
        """Every claim in `text`, in order, with its verdict (see the module doc).

        Args:
            text: the post.
            sources: what it was written from.
            catalog: a `generation.grounding.Catalog` (finds the titles the claims attach to).
            interests: the reader's interests (for claims about the reader).
        """
        facts = {s.item_id: source_facts(s) for s in sources}
        by_id = {s.item_id: s for s in sources}
        mentions = [(m.start, m.end, [i for i in m.item_ids if i in facts]) for m in catalog.find_titles(text)]
        mentions = [(s, e, ids[:1]) for s, e, ids in mentions if ids]
        inside = [(s, e) for s, e, _ in mentions]
        sentences = [(m.start(), m.end()) for m in _SENTENCE.finditer(text)]
        claims: list[Claim] = []

        def attach(pos: int) -> tuple[str, ...]:
            sent = next(((s, e) for s, e in sentences if s <= pos < e), (0, len(text)))
            before = [ids for s, e, ids in mentions if sent[0] <= s and e <= pos]
            if before:
                return tuple(before[-1])
            after = [ids for s, e, ids in mentions if pos <= s < sent[1]]
            if after:
                return tuple(after[0])
            if _TOGETHER.search(text[sent[0]:sent[1]]):
                return tuple(facts)
            earlier = [ids for s, e, ids in mentions if e <= sent[0]]
            return tuple(earlier[-1]) if earlier else tuple(facts)

        def add(start: int, end: int, kind: str, value: str, test) -> None:
            if any(s <= start < e for s, e in inside):
                return
            ids = attach(start)
            holds = any(test(i) for i in ids)
            if _NEGATED.search(text[:start]):  # "not a horror film": true when the source is no horror film
                holds = not holds
            claims.append(Claim(start, end, text[start:end], kind, value, ids, holds))

        def source_words(item_id: str) -> set[str]:
            s = by_id[item_id]
            return {_norm(w) for part in (*s.categories, s.title) for w in _WORD.findall(part)}

        lowered = text.lower()
        for phrase, value in [(p, v) for p, v in GENRE_WORDS.items() if " " in p] + list(_TYPE_PHRASES.items()):
            for m in re.finditer(rf"\b{re.escape(phrase)}\b", lowered):
                if value in TYPE_WORDS:
                    add(m.start(), m.end(), "type", value, lambda i: False)
                else:
                    add(m.start(), m.end(), "genre", value, lambda i, v=value: v in facts[i].genres)
        taken = [(c.start, c.end) for c in claims]
        words = []
        for m in _WORD.finditer(text):
            whole = m.group().lower().replace("’", "'")
            if "-" in whole and whole not in GENRE_WORDS:  # "comedy-drama": a claim of each part
                at = m.start()
                for part in m.group().split("-"):
                    words.append((at, at + len(part), part))
                    at += len(part) + 1
            else:
                words.append((m.start(), m.end(), m.group()))
        for start, end, written in words:
            m = _Span(start, end, written)
            if any(s <= m.start() < e for s, e in taken) or not written:
                continue
            word = written.lower().replace("’", "'")
            if word in GENRE_WORDS:
                genre = GENRE_WORDS[word]
                if _READER.search(text[:m.start()]) and interests:
                    wanted = {i.lower() for i in interests}
                    if not any(s <= m.start() < e for s, e in inside):
                        claims.append(Claim(m.start(), m.end(), m.group(), "reader", genre, (),
                                            genre.lower() in wanted or word in wanted))
                    continue
                add(m.start(), m.end(), "genre", genre, lambda i, g=genre: g in facts[i].genres)
            elif word in TYPE_WORDS:
                add(m.start(), m.end(), "type", word, lambda i: False)
            elif any(s.content_type != "movie" for s in sources) and _norm(word) in self.category_words:
                norm = _norm(word)
                add(m.start(), m.end(), "category", norm, lambda i, w=norm: w in source_words(i))
        for m in _YEAR.finditer(text):
            year, decade = int(m.group(1)), bool(m.group(2))
            add(m.start(), m.end(), "year", m.group(1) + (m.group(2) or ""),
                lambda i, y=year, d=decade: facts[i].year is not None
                and (facts[i].year // 10 == y // 10 if d else facts[i].year == y))
        for m in _CENTURY.finditer(text):
            century = int(m.group(1))
            add(m.start(), m.end(), "year", m.group(),
                lambda i, c=century: facts[i].year is not None and (facts[i].year - 1) // 100 + 1 == c)
        for m in _BY.finditer(text):
            who = m.group(1) if m.group(1).startswith('"') else re.split(r"[.!?,;:](?:\s|$)", m.group(1))[0]
            said = {_norm(w) for w in _WORD.findall(who)}
            if who.startswith('"'):
                start = m.start(1)  # a title as the maker: no source is made by another's title
                claims.append(Claim(start, m.end(1), who, "creator", who, attach(m.start()), False))
                continue
            if not said - {_norm(w) for w in _NO_MAKER}:
                continue
            add(m.start(1), m.start(1) + len(who), "creator", who,
                lambda i, s=said: bool(facts[i].creator) and {_norm(w) for w in _WORD.findall(facts[i].creator)} <= s)
        return sorted(claims, key=lambda c: c.start)


@dataclasses.dataclass(frozen=True)
class _Span:
    begin: int
    finish: int
    written: str

    def start(self) -> int:
        return self.begin

    def end(self) -> int:
        return self.finish

    def group(self) -> str:
        return self.written


def drop_false_claims(text: str, claims: Sequence[Claim]) -> str:
    """`text` without the sentences holding a false claim ("" when none is left)."""
    false = [c for c in claims if not c.true]
    if not false:
        return text
    kept = [m.group().strip() for m in _SENTENCE.finditer(text)
            if m.group().strip() and not any(m.start() <= c.start < m.end() for c in false)]
    return " ".join(kept)


def evaluate_check(checker: ClaimChecker, posts: Sequence[dict]) -> dict:
    """The check's precision and recall at finding false claims, against claims labelled by hand.

    Args:
        checker: the check.
        posts: {"text", "interests", "sources": [SourceItem fields], "claims": [{"span": [start, end],
            "true": bool}, ...]} per post (`tests/generation/data/claims_labelled.json`).

    Returns:
        precision (flagged false claims that are false by hand), recall (false claims flagged),
        coverage (labelled claims the check finds at all) and the counts.

    A flagged claim and a labelled one are the same claim when their spans overlap.
    """
    from generation.grounding import Catalog

    tp = fp = fn = found = labelled = 0
    for post in posts:
        sources = [SourceItem(**{**s, "categories": tuple(s["categories"])}) for s in post["sources"]]
        catalog = Catalog((s.item_id, s.title, s.content_type) for s in sources)
        flagged = checker.check(post["text"], sources, catalog, post.get("interests", ()))
        labels = post["claims"]

        def overlaps(c: Claim, label: dict) -> bool:
            return c.start < label["span"][1] and label["span"][0] < c.end

        labelled += len(labels)
        found += sum(any(overlaps(c, label) for c in flagged) for label in labels)
        for label in labels:
            if not label["true"]:
                if any(overlaps(c, label) and not c.true for c in flagged):
                    tp += 1
                else:
                    fn += 1
        fp += sum(not c.true and not any(overlaps(c, label) and not label["true"] for label in labels)
                  for c in flagged)
    return {"posts": len(posts), "claims": labelled, "false_claims": tp + fn,
            "precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / (tp + fn) if tp + fn else 1.0,
            "coverage": found / labelled if labelled else 1.0, "true_positives": tp, "false_positives": fp,
            "false_negatives": fn}
