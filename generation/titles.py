"""How catalog titles and items are named to people and to the model: `display_title` (a title as a
person would write it) and `items_noun` (what to call a post's sources). Prompts, the plan of
claims and the grounding check all name items this one way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from generation.interface import SourceItem

MAX_TITLE_WORDS = 6  # longer titles are cut at their first separator
MAX_CASED_TITLE_WORDS = 12  # a cased title without separators is cut here (lower-cased ones at 6)
_SMALL_WORDS = frozenset("a an and at by for in of on or the to with".split())

_YEAR = re.compile(r"\s*\(\s*\d{4}(?:\s*[-–]\s*\d{0,4})?\s*\)\s*$")
_TRAILING_PARENS = re.compile(r"\s*\([^()]*\)\s*$")
_MOVED_ARTICLE = re.compile(r"^(?P<head>.+), (?P<article>The|A|An|Les|Le|La|L'|Il|Lo|Das|Der|Die|El|Los|Las|Un|Une)$")
_PRODUCT_SEPARATORS = re.compile(r"\s+[-–|]\s+|,\s+|\s+\(|\s+\[|:\s+")

_NOUNS = {"movie": "movies", "arts_product": "arts and crafts supplies", "office_product": "office products",
          "artist": "artists", "video": "videos", "product": "products"}


def display_title(title: str) -> str:
    """A catalog title as a person would write it.

    MovieLens titles lose their year and alternative titles and get their article back in front;
    titles longer than `MAX_TITLE_WORDS` words are cut at their first separator (keeping at least two
    words) and to `MAX_CASED_TITLE_WORDS` words (`MAX_TITLE_WORDS` for all-lower-case titles, which
    are also title-cased).

    Args:
        title: the catalog title.

    Examples:
        >>> display_title("Matrix, The (1999)")
        'The Matrix'
        >>> display_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)")
        'The City of Lost Children'
        >>> display_title("Auberge espagnole, L' (2002)")
        "L'Auberge espagnole"
        >>> display_title("Monsters, Inc. (2001)")
        'Monsters, Inc.'
        >>> display_title("Crayola Washable Markers, Broad Line, Classic Colors, 10 Count, Pack of 2")
        'Crayola Washable Markers'
        >>> display_title("sheaffer skrip fountain pen ink cartridges turquoise pack of five")
        'Sheaffer Skrip Fountain Pen Ink Cartridges'
        >>> display_title("Journey to the Center of the Earth")
        'Journey to the Center of the Earth'
    """
    # Double quotes inside a title (inches, nicknames) would end the quotes prompts and posts put around it.
    text = " ".join(re.sub(r"[\"“”″]", "'", title).split())
    if _YEAR.search(text):
        text = _YEAR.sub("", text)
        while _TRAILING_PARENS.search(text) and _TRAILING_PARENS.sub("", text):
            text = _TRAILING_PARENS.sub("", text)
        moved = _MOVED_ARTICLE.match(text)
        if moved:
            article = moved["article"]
            text = f"{article}{'' if article.endswith(chr(39)) else ' '}{moved['head']}"
        return text
    lower_cased = text == text.lower()
    if lower_cased:
        # Some catalogs (the Amazon release) store titles lower-cased and without punctuation:
        # title-case them, so they read as names and the grounding check can tell them from words.
        text = " ".join(w if i and w in _SMALL_WORDS else w[:1].upper() + w[1:] for i, w in enumerate(text.split()))
    if len(text.split()) > MAX_TITLE_WORDS:
        for match in _PRODUCT_SEPARATORS.finditer(text):
            head = text[: match.start()].strip()
            if len(head.split()) >= 2:
                text = head
                break
        words = text.split()[: MAX_TITLE_WORDS if lower_cased else MAX_CASED_TITLE_WORDS]
        while len(words) > 2 and words[-1].lower() in _SMALL_WORDS:
            words.pop()
        text = " ".join(words)
    return text


def items_noun(sources: Sequence[SourceItem]) -> str:
    """What to call the sources in a sentence: "movies", "office products", ... or "picks".

    >>> items_noun([SourceItem("1", "Heat (1995)", "movie"), SourceItem("2", "Alien (1979)", "movie")])
    'movies'
    """
    kinds = {s.content_type for s in sources}
    return _NOUNS.get(kinds.pop(), "picks") if len(kinds) == 1 else "picks"
