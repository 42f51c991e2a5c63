"""The generator interface: what every backend takes and the provenance it must return."""

import pytest

from generation import GeneratedPost, LanguageModel, PostGenerator, PostRequest, SourceItem

HEAT = SourceItem("6", "Heat (1995)", "movie", ("Action", "Crime"), creator_id="mann")
CASINO = SourceItem("16", "Casino (1995)", "movie", ("Crime", "Drama"))


def test_a_post_is_grounded_in_two_to_four_sources():
    request = PostRequest("u1", (HEAT, CASINO), interests=("Crime",))
    assert request.source_item_ids == ("6", "16")
    assert request.creator_ids == ("mann",)
    for sources in ((), (HEAT,), (HEAT, CASINO, HEAT, CASINO, HEAT)):
        with pytest.raises(ValueError, match="grounded in 2..4 source items"):
            PostRequest("u1", sources)
    with pytest.raises(ValueError, match="kind must be one of"):
        PostRequest("u1", (HEAT, CASINO), kind="essay")


def test_a_generated_post_carries_its_provenance():
    post = GeneratedPost("p1", "u1", "Two films about heists.", ("a", "b"), "smollm2-135m", "v1/digest",
                         method="repaired", created_ms=1700000000000)
    assert (post.model_version, post.prompt_version, post.method) == ("smollm2-135m", "v1/digest", "repaired")
    with pytest.raises(ValueError, match="must name the source items"):
        GeneratedPost("p1", "u1", "text", (), "m", "v")
    with pytest.raises(ValueError, match="must have text"):
        GeneratedPost("p1", "u1", "  ", ("a", "b"), "m", "v")
    with pytest.raises(ValueError, match="method must be one of"):
        GeneratedPost("p1", "u1", "text", ("a", "b"), "m", "v", method="guessed")


def test_the_backend_protocols_are_structural():
    class Echo:
        model_version = "echo"

        def write(self, requests):
            return []

    assert isinstance(Echo(), PostGenerator)
    assert not isinstance(object(), PostGenerator)
    assert not isinstance(Echo(), LanguageModel)
