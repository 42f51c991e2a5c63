"""Prompts for short grounded posts (titles as people write them: `generation.titles`).

The prompts are short on purpose: a 135M-parameter model follows a few plain lines better than a
long instruction. Each lists the source titles (quoted, with their categories, so the model has
facts to use instead of inventing them) and asks it to name only those titles.

Prompt sets are versioned (`PROMPTS`); the version is recorded in every post's provenance.
"""

from __future__ import annotations

from collections.abc import Sequence

from generation.claims import make_plan
from generation.interface import KINDS, ChatMessage, Kind, SourceItem
from generation.titles import display_title, items_noun

PROMPT_VERSION = "v2"  # the config default: the plan (generation.claims.make_plan); "v1" before issue 20


def _listing(sources: Sequence[SourceItem]) -> str:
    lines = []
    for s in sources:
        categories = ", ".join(c for c in s.categories[:3] if c and not c.startswith("("))
        lines.append(f'- "{display_title(s.title)}"' + (f" ({categories})" if categories else ""))
    return "\n".join(lines)


def _v1(sources: Sequence[SourceItem], interests: Sequence[str], kind: Kind) -> list[ChatMessage]:
    noun = items_noun(sources)
    system = (f"You write short, friendly posts for a feed of {noun}. Name only the titles you are given, "
              "written exactly as given. Do not invent names or facts.")
    likes = f"The reader enjoys {', '.join(interests[:3])}.\n" if interests else ""
    if kind == "digest":
        user = (f"{likes}Titles:\n{_listing(sources)}\n"
                f"Write two short sentences recommending these {noun} to the reader.")
    elif kind == "because":
        liked, rest = sources[0], sources[1:]
        user = (f'The reader liked "{display_title(liked.title)}".\n{likes}Titles:\n{_listing(rest)}\n'
                f"Write two short sentences telling the reader why they may like these {noun} too.")
    else:
        user = (f"{likes}Titles:\n{_listing(sources)}\n"
                f"Write one short, catchy caption for this list of {noun}.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def fact_sentence(fact, noun: str) -> str:
    """One source's catalog facts as a sentence the model may copy from (its only facts).

    >>> from generation.claims import SourceFacts
    >>> fact_sentence(SourceFacts("1", "The Matrix", 1999, ("Action", "Sci-Fi"), None, ""), "movies")
    '"The Matrix" is a 1999 action and sci-fi movie.'
    """
    genres = [g.lower() for g in fact.genres[:3]]
    if noun == "movies":
        what = " ".join(x for x in (str(fact.year) if fact.year else "", _and(genres) if genres else "", "movie") if x)
        return f'"{fact.title}" is a{"n" if what[0] in "aeiou8" else ""} {what}.'
    parts = [f'"{fact.title}" is in {_and(genres)}' if genres else f'"{fact.title}" is a product']
    if fact.creator:
        parts.append(f"made by {fact.creator}")
    return ", ".join(parts) + "."


# Openings of the answer, filled from the plan (the model writes what follows): they vary with the
# candidate, so a user's candidates differ, and every post names a source from its first words.
OPENINGS: dict[str, tuple[str, ...]] = {
    "digest": ('"{first}"', 'If you enjoy {interest}, "{first}"', 'Try "{first}"', 'Start with "{first}"'),
    "because": ('Since you liked "{first}",', 'You enjoyed "{first}", so', 'Loved "{first}"? Then'),
    "caption": ('"{first}"', 'Tonight: "{first}"', 'For a fan of {interest}: "{first}"'),
}


def _v2(sources: Sequence[SourceItem], interests: Sequence[str], kind: Kind, variant: int = 0) -> list[ChatMessage]:
    """The plan as a prompt: each source's catalog facts (title, year, genres or categories, maker)
    as one sentence, the titles the completion may name (`generation.llm.TITLES_KEY`: the decoder
    writes them in quotes, exactly, and nothing else that looks like a name), and the answer's
    opening (`OPENINGS`, picked by `variant`), which names the first source."""
    plan = make_plan(sources, interests, kind)
    noun = items_noun(sources)
    system = "You write short, friendly posts for a feed. Write titles in double quotes. Use only the facts given."
    likes = f"The reader enjoys {_and([i.lower() for i in plan.interests])}. " if plan.interests else ""
    facts = " ".join(fact_sentence(f, noun) for f in plan.sources)
    if kind == "because":
        ask = f'They liked "{plan.sources[0].title}". Tell them in two short sentences why they may like the others.'
    elif kind == "caption":
        ask = f"Write one short, catchy sentence about these {noun}."
    else:
        ask = f"Recommend these {noun} in two short sentences."
    openings = [o for o in OPENINGS[kind] if "{interest}" not in o or plan.interests]
    opening = openings[variant % len(openings)].format(
        first=plan.sources[0].title, interest=plan.interests[0].lower() if plan.interests else "")
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"{likes}{facts}\n{ask}", "titles": [f.title for f in plan.sources],
             "sentences": 1 if kind == "caption" else 2},
            {"role": "assistant", "content": opening}]


PROMPTS = {"v1": _v1, "v2": _v2}


def build_prompt(sources: Sequence[SourceItem], interests: Sequence[str], kind: Kind,
                 version: str = PROMPT_VERSION, variant: int = 0) -> list[ChatMessage]:
    """The chat messages asking the model for one post of `kind` about `sources`.

    Args:
        sources: the 2-4 items the post is grounded in ("because": the first is the one liked).
        interests: the reader's interests in words (at most three are used).
        kind: "digest", "because" or "caption".
        version: the prompt set (`PROMPTS`).
        variant: which opening ("v2": candidates of one user get different ones; "v1" has none).

    Returns:
        [system message, user message], and for "v2" the answer's opening (an assistant message
        the model continues; the post is that opening and the completion, `answer_opening`).

    Example:
        >>> items = [SourceItem("1", "Matrix, The (1999)", "movie", ("Action", "Sci-Fi")),
        ...          SourceItem("2", "Alien (1979)", "movie", ("Horror", "Sci-Fi"))]
        >>> prompt = build_prompt(items, ["Sci-Fi"], "digest")
        >>> print(prompt[1]["content"])
        The reader enjoys sci-fi. "The Matrix" is a 1999 action and sci-fi movie. "Alien" is a 1979 horror and sci-fi movie.
        Recommend these movies in two short sentences.
        >>> prompt[1]["titles"], prompt[2]
        (['The Matrix', 'Alien'], {'role': 'assistant', 'content': '"The Matrix"'})
        >>> print(build_prompt(items, ["Sci-Fi"], "digest", "v1")[1]["content"])
        The reader enjoys Sci-Fi.
        Titles:
        - "The Matrix" (Action, Sci-Fi)
        - "Alien" (Horror, Sci-Fi)
        Write two short sentences recommending these movies to the reader.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if version not in PROMPTS:
        raise ValueError(f"unknown prompt version {version!r}: one of {sorted(PROMPTS)}")
    if version == "v1":
        return _v1(sources, interests, kind)
    return PROMPTS[version](sources, interests, kind, variant)


def answer_opening(prompt) -> str:
    """The start of the answer a prompt already gives (its last message, when the assistant's), or ""."""
    if isinstance(prompt, str) or not prompt or prompt[-1].get("role") != "assistant":
        return ""
    return prompt[-1]["content"]
