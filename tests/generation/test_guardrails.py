"""Guardrails: each refusal reason, where it applies, and the counts by reason."""

from __future__ import annotations

import pytest

from feedcore.config import GuardrailConfig
from generation.guardrails import Guardrails, bundled_profanity, find_personal_data

RAILS = GuardrailConfig(
    blocked_words=("spoiler",),
    blocked_topics=("box office", "election"),
    surface_blocked_words={"kids": ("violent",)},
    creator_blocked_words={"studio-9": ("sequel",)},
)


def test_each_reason_is_found_and_counted():
    rails = Guardrails(RAILS)
    cases = {
        "Spoiler: the hero wins.": "blocked_word",
        "Its Box Office run was long.": "blocked_topic",
        "This film is the shit.": "profanity",
        "Mail me at fan.club@example.com for more.": "personal_data",
        "Call 555-123-4567 to book.": "personal_data",
        "Tickets at https://tickets.example/heat now.": "personal_data",
        "See more at moviefans.com today.": "personal_data",
        "User 4711 loved this one.": "personal_data",
        "Ask @moviebuff what they think.": "personal_data",
        "account:42 follows this list.": "personal_data",
    }
    for text, reason in cases.items():
        assert rails.check(text, "home", ()) == reason, text
    assert rails.rejections == {"blocked_word": 1, "blocked_topic": 1, "profanity": 1, "personal_data": 7}


def test_surface_and_creator_words_apply_only_there():
    rails = Guardrails(RAILS)
    assert rails.check("A violent thriller.", "home", ()) is None
    assert rails.check("A violent thriller.", "kids", ()) == "blocked_word"
    assert rails.check("The sequel is better.", "home", ("studio-1",)) is None
    assert rails.check("The sequel is better.", "home", ("studio-9",)) == "blocked_word"


def test_clean_posts_pass_and_words_match_whole():
    rails = Guardrails(RAILS)
    for text in ["Heat (1995) and Casino, two 1990s crime films.", "A classic from 1995-2001 reruns.",
                 "Scunthorpe United fans, this one is for you.", "Moby Dick, read aloud.", "Spoilers ahead? No."]:
        assert rails.check(text, "home", ()) is None, text
    assert rails.rejections == {}


def test_switches_turn_rules_off():
    off = Guardrails(GuardrailConfig(profanity=False, personal_data=False))
    assert off.check("The shit film at fan@example.com", "home", ()) is None


def test_the_bundled_list_is_loaded_and_personal_data_is_explained():
    words = bundled_profanity()
    assert "fuck" in words and "dick" not in words  # names and titles ("Moby Dick") stay out
    assert find_personal_data("write to a.b@c.org") == "e-mail address: a.b@c.org"
    assert find_personal_data("Toy Story 2 (1999) runs 92 minutes") is None


@pytest.mark.parametrize("phone", ["+44 20 7946 0958", "(555) 123 4567", "555.123.4567"])
def test_phone_numbers_in_common_formats(phone):
    assert find_personal_data(f"Ring {phone} now").startswith("phone number")
