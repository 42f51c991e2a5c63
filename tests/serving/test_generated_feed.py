"""Generated posts in the feed: ranked by the unified ranker like any item, placed by the blender,
served with their provenance, and never shifting a session's later pages."""

import dataclasses

import numpy as np
import pytest

from feedcore.config import BlendConfig
from feedcore.events import now_ms
from feedcore.text import embed_texts, load_text_encoder
from generation.interface import GeneratedPost
from serving.hydration import post_embeddings
from serving.pipeline import POST_CONTENT_TYPE, FeedPipeline, FeedRequest, PostCandidate


@pytest.fixture(scope="module")
def pipeline(trained_engine):
    return FeedPipeline.from_artifacts(trained_engine)


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder()


def _post(pipeline, encoder, user_id: str, text: str, sources: tuple[str, ...], created_ms: int) -> PostCandidate:
    post = GeneratedPost(post_id=f"gen:{user_id}:{abs(hash(text)) % 10**8}", user_id=user_id, text=text,
                         source_item_ids=sources, model_version="test-writer", prompt_version="v1",
                         method="model", created_ms=created_ms)
    return PostCandidate(post, embed_texts([text], encoder)[0])


def _top_titles(pipeline, user_id: str, k: int) -> list:
    page = pipeline.get_feed(FeedRequest(user_id=user_id, page_size=20))
    return [i for i in page.items if i.title][:k]


def test_a_ready_post_is_ranked_and_served_with_its_provenance(pipeline, encoder):
    top = _top_titles(pipeline, "1", 2)
    text = f"Because you like {top[0].title} and {top[1].title}, tonight is a double feature."
    post = _post(pipeline, encoder, "1", text, (top[0].item_id, top[1].item_id), now_ms() - 1000)
    blend = BlendConfig(type_shares={POST_CONTENT_TYPE: 0.1})  # room for generated posts: 1 slot in 10
    page = pipeline.get_feed(FeedRequest(user_id="1", page_size=10, posts=(post,), blend=blend))
    served = [i for i in page.items if i.content_type == POST_CONTENT_TYPE]
    assert len(served) == 1, [i.content_type for i in page.items]
    item = served[0]
    assert item.item_id == post.post.post_id and item.source == "generated" and item.post is post.post
    assert item.post.source_item_ids == (top[0].item_id, top[1].item_id)
    assert set(item.task_scores) == {"engage", "like"} and 0 < item.task_scores["engage"] < 1
    # the critic's measure is the feed's own score of the post
    assert pipeline.score_posts("1", [post.post.source_item_ids], post.text_embedding[None],
                                [post.post.created_ms])[0] == pytest.approx(item.score, rel=1e-5)


def test_the_ranker_scores_a_post_from_its_content(pipeline, encoder):
    """Two posts with different sources and text get different predictions (the model reads them)."""
    top = _top_titles(pipeline, "1", 4)
    a = _post(pipeline, encoder, "1", f"{top[0].title} and {top[1].title}: a pair worth an evening.",
              (top[0].item_id, top[1].item_id), now_ms())
    other = pipeline.get_feed(FeedRequest(user_id="400", page_size=30)).items
    b = _post(pipeline, encoder, "1", f"{other[-1].title} and {other[-2].title} for a quiet Sunday.",
              (other[-1].item_id, other[-2].item_id), now_ms())
    scores = pipeline.score_posts("1", [a.post.source_item_ids, b.post.source_item_ids],
                                  np.stack([a.text_embedding, b.text_embedding]))
    assert np.isfinite(scores).all() and scores[0] != pytest.approx(scores[1], abs=1e-6)
    embeddings = post_embeddings([a.post.source_item_ids, b.post.source_item_ids],
                                 np.stack([a.text_embedding, b.text_embedding]), pipeline.retrieval,
                                 pipeline.retrieval_spec)
    assert embeddings.shape == (2, pipeline.retrieval.args.embedding_dim)
    assert np.linalg.norm(embeddings, axis=1) == pytest.approx(1.0, abs=1e-4)  # the item space is cosine


def test_posts_written_after_a_session_started_never_shift_its_pages(pipeline, encoder):
    first = pipeline.get_feed(FeedRequest(user_id="7", page_size=5))
    top = _top_titles(pipeline, "7", 2)
    late = _post(pipeline, encoder, "7", f"New for you: {top[0].title} and {top[1].title}.",
                 (top[0].item_id, top[1].item_id), now_ms() + 60_000)
    blend = BlendConfig(type_shares={POST_CONTENT_TYPE: 0.5})
    second = pipeline.get_feed(FeedRequest(user_id="7", page_size=5, cursor=first.next_cursor, posts=(late,)))
    assert all(i.content_type != POST_CONTENT_TYPE for i in second.items)
    fresh = pipeline.get_feed(FeedRequest(user_id="7", page_size=5, posts=(dataclasses.replace(
        late, post=dataclasses.replace(late.post, created_ms=now_ms() - 1)),), blend=blend))
    assert any(i.content_type == POST_CONTENT_TYPE for i in fresh.items)


def test_a_post_the_user_has_seen_is_not_served_again(pipeline, encoder):
    from serving.pipeline import RecentlySeen

    top = _top_titles(pipeline, "3", 2)
    post = _post(pipeline, encoder, "3", f"{top[0].title} meets {top[1].title}.", (top[0].item_id, top[1].item_id),
                 now_ms() - 5000)
    seen = RecentlySeen()
    seen.add("3", post.post.post_id, now_ms() - 1000)
    blend = BlendConfig(type_shares={POST_CONTENT_TYPE: 0.5})
    page = pipeline.get_feed(FeedRequest(user_id="3", page_size=10, posts=(post,), recently_seen=seen, blend=blend))
    assert all(i.item_id != post.post.post_id for i in page.items)
