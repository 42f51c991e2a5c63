"""The generator interface: what every backend takes and the provenance it must return."""

import pytest

from generation import GeneratedPost, PostGenerator, PostRequest


def test_a_post_is_grounded_in_two_to_four_sources():
    assert PostRequest("u1", ("a", "b")).source_item_ids == ("a", "b")
    for sources in ((), ("a",), ("a", "b", "c", "d", "e")):
        with pytest.raises(ValueError, match="grounded in 2..4 source items"):
            PostRequest("u1", sources)


def test_a_generated_post_carries_its_provenance():
    post = GeneratedPost("p1", "u1", "Two films about heists.", ("a", "b"), "smollm2-135m", "digest-v1")
    assert (post.model_version, post.prompt_version) == ("smollm2-135m", "digest-v1")
    with pytest.raises(ValueError, match="must name the source items"):
        GeneratedPost("p1", "u1", "text", (), "m", "v")
    with pytest.raises(ValueError, match="must have text"):
        GeneratedPost("p1", "u1", "  ", ("a", "b"), "m", "v")


def test_the_backend_protocol_is_structural():
    class Echo:
        model_version = "echo"

        def generate(self, requests):
            return []

    assert isinstance(Echo(), PostGenerator)
    assert not isinstance(object(), PostGenerator)
