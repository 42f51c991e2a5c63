"""The generative module in the running service, on the real language model (short posts) behind a
real generation service: StreamPost streams a grounded post token by token, the post joins the
user's next feed with its provenance, events logged against it are accepted, GetFeed never waits
for generation, and the background writer's feed calls wait for GetFeed's slots."""

import dataclasses

import grpc
import pytest

from feedcore.config import BlendConfig
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from generation.service import create_generation_server
from serving.event_log import EventLog
from serving.generated_posts import make_generated_posts
from serving.generation_service import make_post_writer
from serving.pipeline import FeedPipeline
from serving.server import create_server

KEY = "test-key"


@pytest.fixture(scope="module")
def engine(trained_engine, llm_cache_dir, tmp_path_factory):
    return dataclasses.replace(
        trained_engine,
        generation=dataclasses.replace(trained_engine.generation, enabled=True, cache_dir=str(llm_cache_dir),
                                       max_new_tokens=24, num_candidates=1, max_tries=1, warm_users=0,
                                       store=str(tmp_path_factory.mktemp("store") / "posts.sqlite")),
        serving=dataclasses.replace(trained_engine.serving, api_keys=(KEY,), metrics_port=0,
                                    blend=BlendConfig(type_shares={"generated": 0.2})),
    )


@pytest.fixture(scope="module")
def generation(engine, tmp_path_factory):
    """The generation service (`feed serve-generation`'s server) on a Unix socket, and its served models."""
    writer, served = make_post_writer(engine)
    service = create_generation_server(writer, f"unix://{tmp_path_factory.mktemp('gen')}/gen.sock")
    service.server.start()
    yield service, served
    service.server.stop(0).wait()


@pytest.fixture(scope="module")
def running(engine, generation, tmp_path_factory):
    pipeline = FeedPipeline.from_artifacts(engine)
    log = EventLog(tmp_path_factory.mktemp("log"))
    running = create_server(engine.serving, pipeline, log)
    running.servicer.posts = make_generated_posts(engine, generation[0].address, lambda: running.servicer.pipeline,
                                                  running.servicer.gated_feed, running.metrics)
    running.server.start()
    yield running
    running.server.stop(0).wait()
    running.servicer.posts.stop()
    log.close()
    running.metrics.stop_http()


@pytest.fixture(scope="module")
def stub(running):
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield feed_pb2_grpc.FeedServiceStub(channel)


def test_stream_post_streams_a_grounded_post_that_joins_the_next_feed(stub, running):
    chunks = list(stub.StreamPost(feed_pb2.StreamPostRequest(user_id="1", max_new_tokens=16), timeout=180))
    pieces, final = chunks[:-1], chunks[-1]
    assert pieces and all(not c.done and c.text for c in pieces)  # sentence by sentence (issue 20)
    assert final.done and final.post_id.startswith("gen:") and final.post_text
    assert "".join(c.text for c in pieces) == final.post_text  # what was streamed is what is served
    provenance = final.provenance
    assert 2 <= len(provenance.source_item_ids) <= 4 and provenance.method in {"model", "repaired", "template"}
    assert provenance.model_version.startswith("smollm2") and provenance.prompt_version
    pipeline = running.servicer.pipeline
    assert all(i in pipeline.catalog for i in provenance.source_item_ids)
    # the sources are the user's own top-ranked items
    top = [i.item_id for i in pipeline.get_feed(pipeline_request("1")).items]
    assert set(provenance.source_item_ids) <= set(top)

    feed = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="1", page_size=10), timeout=30)
    generated = [i for i in feed.items if i.content_type == "generated"]
    assert [i.item_id for i in generated] == [final.post_id]
    item = generated[0]
    assert item.text == final.post_text and item.source == "generated"
    assert list(item.provenance.source_item_ids) == list(provenance.source_item_ids)
    assert set(item.task_scores) == {"engage", "like"}

    # the app reports what it showed: the post's content type is resolved by the server
    ack = stub.LogEvents(iter([feed_pb2.Event(user_id="1", item_id=item.item_id, event="click",
                                              request_id=feed.request_id, position=item.position)]),
                         metadata=[("x-api-key", KEY)], timeout=30)
    assert ack.accepted == 1


def pipeline_request(user_id):
    from serving.generated_posts import PLAN_DEPTH
    from serving.pipeline import FeedRequest

    return FeedRequest(user_id=user_id, page_size=PLAN_DEPTH)


def test_get_feed_never_waits_for_generation_and_queues_the_user(stub, running):
    worker = running.servicer.posts.worker
    feed = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="5", page_size=10), timeout=30)
    assert len(feed.items) == 10 and all(i.content_type != "generated" for i in feed.items)
    assert worker.wait_idle(timeout=240)  # the request queued a post for user 5, written in the background
    assert running.servicer.posts.store.ready("5")
    later = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="5", page_size=10), timeout=30)
    assert any(i.content_type == "generated" for i in later.items)


def test_stream_post_refuses_bad_requests(stub):
    with pytest.raises(grpc.RpcError) as e:
        list(stub.StreamPost(feed_pb2.StreamPostRequest(user_id=""), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        list(stub.StreamPost(feed_pb2.StreamPostRequest(user_id="1", max_new_tokens=10_000), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_new_tokens must be 0..24" in e.value.details()


def test_the_background_writer_waits_for_getfeed_s_slots(running):
    """Planning a post is a feed call: with every `feed_concurrency` slot held by GetFeeds, it waits."""
    import threading

    slots, posts = running.servicer._feed_slots, running.servicer.posts
    held = 0
    while slots.acquire(blocking=False):  # what GetFeeds in progress hold
        held += 1
    assert held == running.servicer.config.feed_concurrency > 0
    planned = threading.Event()
    thread = threading.Thread(target=lambda: (posts.plan("1"), planned.set()), daemon=True)
    try:
        thread.start()
        assert not planned.wait(2.0)  # no slot: it waits
        slots.release()
        held -= 1
        assert planned.wait(60)  # a slot: it plans
    finally:
        for _ in range(held):
            slots.release()
        thread.join(60)


def test_posts_are_checked_against_the_catalogue_serving_now(generation):
    """A hot reload that brings new items (`ModelReloader` swaps the service's pipeline): posts are
    grounded in the new catalogue from then on."""
    import copy

    _, served = generation
    old = served.pipeline
    reloaded = copy.copy(old)  # the served pipeline with one more titled item, as a reload would bring
    reloaded.catalog = {**old.catalog, "new-item": ("movie", "Lighthouse Keepers of Orkney (2026)")}
    assert not served.writer.catalog.find_titles("We watched Lighthouse Keepers of Orkney.")
    served.pipeline = reloaded
    try:
        found = served.writer.catalog.find_titles("We watched Lighthouse Keepers of Orkney.")
        assert [m.item_ids for m in found] == [("new-item",)]
    finally:
        served.pipeline = old
    assert not served.writer.catalog.find_titles("We watched Lighthouse Keepers of Orkney.")
