"""Operations: a failing ranker degrades to a fallback and shows in health; new models swap in live
under load without a failed request; artifacts that do not load keep the old ones serving."""

import dataclasses
import gc
import shutil
import threading
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.pipeline import FeedPipeline
from serving.reloader import ModelReloader
from serving.server import SERVICE_NAME, create_server


def _health(channel, service):
    try:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=10).status
    except grpc.RpcError as e:
        return e.code()


class _Broken(torch.nn.Module):
    task_names = ["engage", "like"]

    def forward(self, dense, sparse):
        raise RuntimeError("injected ranker failure")


@pytest.fixture
def engine_copy(trained_engine, tmp_path):
    """The trained artifacts in a private directory, so a test may overwrite them."""
    shutil.copytree(trained_engine.artifacts_dir, tmp_path / "a")
    return dataclasses.replace(trained_engine, artifacts_dir=str(tmp_path / "a"))


def test_a_failing_ranker_degrades_to_the_candidate_order_and_reports_it(engine_copy):
    pipeline = FeedPipeline.from_artifacts(engine_copy)
    running = create_server(engine_copy.serving, pipeline)
    running.server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            ranker = pipeline.ranker
            pipeline.ranker = _Broken()
            response = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="1", page_size=10), timeout=30)
            assert len(response.items) == 10 and all(not i.task_scores for i in response.items)
            assert response.items[0].source == "ann"  # the candidate sources' own order
            assert _health(channel, f"{SERVICE_NAME}/ranker") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert _health(channel, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING  # still serving
            pipeline.ranker = ranker
            response = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="1", page_size=10), timeout=30)
            assert all(i.task_scores for i in response.items)
            assert _health(channel, f"{SERVICE_NAME}/ranker") == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.server.stop(0).wait()


def test_new_models_swap_in_under_load_without_a_failed_request(engine_copy):
    from ranker.train import train_ranker_job

    running = create_server(engine_copy.serving, FeedPipeline.from_artifacts(engine_copy))
    running.server.start()
    reloader = ModelReloader(engine_copy, running.servicer, interval_s=0.2)
    reloader.start()
    errors, versions, stop = [], set(), threading.Event()

    def client(c: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            while not stop.is_set():
                try:
                    r = stub.GetFeed(feed_pb2.GetFeedRequest(user_id=str(1 + c), page_size=10), timeout=30)
                    assert len(r.items) == 10
                    versions.add(r.model_version)
                except Exception as e:  # noqa: BLE001 (any failure counts)
                    errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(3)]
    try:
        for t in threads:
            t.start()
        old = running.servicer.pipeline.model_version
        frozen = gc.get_freeze_count()
        retrained = dataclasses.replace(engine_copy, ranker=dataclasses.replace(engine_copy.ranker, seed=7))
        train_ranker_job(retrained, progress=False)  # a new ranker checkpoint lands while clients run
        deadline = time.time() + 60
        while running.servicer.pipeline.model_version == old:
            assert time.time() < deadline, "the new model was not swapped in"
            time.sleep(0.1)
        time.sleep(0.5)  # traffic on the new model
        new = running.servicer.pipeline.model_version
        assert gc.get_freeze_count() > frozen  # the new pipeline's objects are out of the collector's scans
        # A broken checkpoint: the new model keeps serving and health reports the failed reload.
        engine_copy.ranker_path.write_bytes(b"not a checkpoint")
        deadline = time.time() + 30
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            while _health(channel, f"{SERVICE_NAME}/reload") != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.time() < deadline, "the failed reload was not reported"
                time.sleep(0.1)
        assert running.servicer.pipeline.model_version == new
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        reloader.stop()
        running.server.stop(0).wait()
    assert not errors, errors[:3]
    assert old in versions and new in versions and reloader.reloads == 1


def test_the_generation_service_picks_up_a_retrained_critic_and_keeps_it_over_a_bad_file(engine_copy):
    """Best-of-N's value follows `feed train critic` live: the ranker's proxy while no critic is
    trained, the learned critic once one lands (compared with that model's own values), and the last
    good critic when the next file does not load."""
    import numpy as np

    from feedcore.text import load_text_encoder
    from generation.engagement import EngagementModel
    from generation.interface import SourceItem
    from serving.generated_posts import TextEmbeddings
    from serving.generation_service import ServedModels

    served = ServedModels(FeedPipeline.from_artifacts(engine_copy), TextEmbeddings(load_text_encoder()),
                          critic_path=engine_copy.critic_path)
    reloader = ModelReloader(engine_copy, served, watch=(engine_copy.critic_path,))
    texts = ["A quiet comedy for a rainy night.", "Two westerns, one long weekend."]
    sources = [SourceItem("1", "Toy Story (1995)", "movie", ("Comedy",))]
    assert served.learned is None
    assert np.allclose(served.critic_value("1", texts, sources), served.value("1", texts, sources))
    rng = np.random.default_rng(0)
    model = EngagementModel(rng.normal(size=2 * 384 + 1).astype(np.float32), -1.0, 50, 10)
    model.save(engine_copy.critic_path)
    assert reloader.check_once()
    assert served.learned is not None and served.learned.impressions == 50
    want = model.value_fn(served.text_embeddings)("1", texts, sources)
    assert np.allclose(served.critic_value("1", texts, sources), want)
    assert not np.allclose(want, served.value("1", texts, sources))
    engine_copy.critic_path.write_bytes(b"not a critic")
    assert reloader.check_once()  # the pipeline still loads; the critic that does not stays out
    assert np.allclose(served.critic_value("1", texts, sources), want)


def test_rpcs_beyond_the_concurrency_limit_are_refused_at_once(trained_engine, tmp_path):
    """Under overload a request gets RESOURCE_EXHAUSTED instead of waiting in a queue."""
    from serving.event_log import EventLog

    config = dataclasses.replace(trained_engine.serving, max_concurrent_rpcs=1, api_keys=("k",))
    log = EventLog(tmp_path / "log")
    running = create_server(config, FeedPipeline.from_artifacts(trained_engine), log)
    running.server.start()
    release = threading.Event()

    def held_open():  # a LogEvents stream that holds the only slot until released
        release.wait(30)
        yield feed_pb2.Event(user_id="1", item_id="1", event="click")

    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            pending = stub.LogEvents.future(held_open(), metadata=[("x-api-key", "k")], timeout=60)
            time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as e:
                stub.GetFeed(feed_pb2.GetFeedRequest(user_id="1", page_size=5), timeout=30)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            assert pending.result().accepted == 1
            assert len(stub.GetFeed(feed_pb2.GetFeedRequest(user_id="1", page_size=5), timeout=30).items) == 5
    finally:
        release.set()
        running.server.stop(0).wait()
        log.close()


def test_feeds_wait_for_a_pipeline_slot_and_give_up_at_their_deadline(trained_engine):
    """`feed_concurrency = 1`: a second GetFeed waits while one runs, and a request whose deadline
    passes while it waits gets DEADLINE_EXCEEDED without running the pipeline."""
    config = dataclasses.replace(trained_engine.serving, feed_concurrency=1)
    pipeline = FeedPipeline.from_artifacts(trained_engine)
    entered, release, ran = threading.Event(), threading.Event(), []
    real = pipeline.get_feed

    def held(request):  # the real pipeline, held open until released
        ran.append(request.user_id)
        entered.set()
        release.wait(30)
        return real(request)

    pipeline.get_feed = held
    running = create_server(config, pipeline)
    running.server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            first = stub.GetFeed.future(feed_pb2.GetFeedRequest(user_id="1", page_size=5), timeout=60)
            assert entered.wait(30)
            with pytest.raises(grpc.RpcError) as e:
                stub.GetFeed(feed_pb2.GetFeedRequest(user_id="2", page_size=5), timeout=1)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # The server's copy of the deadline ends a little after the client's: let it give up too.
            gave_up = {"method": "GetFeed", "code": "DEADLINE_EXCEEDED"}
            deadline = time.monotonic() + 30
            while not running.metrics.registry.get_sample_value("feed_requests_total", gave_up):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            release.set()
            assert len(first.result().items) == 5
            assert len(stub.GetFeed(feed_pb2.GetFeedRequest(user_id="3", page_size=5), timeout=30).items) == 5
            assert ran == ["1", "3"]  # the request that gave up never ran
    finally:
        release.set()
        running.server.stop(0).wait()


def test_grpc_workers_search_and_rank_with_the_configured_threads(trained_engine):
    """OpenMP thread counts are per thread: the workers get `torch_threads`, not one per core."""
    import faiss

    pipeline = FeedPipeline.from_artifacts(trained_engine)
    threads, real = [], pipeline.get_feed

    def recording(request):
        threads.append((faiss.omp_get_max_threads(), torch.get_num_threads()))
        return real(request)

    pipeline.get_feed = recording
    running = create_server(dataclasses.replace(trained_engine.serving, torch_threads=1), pipeline)
    running.server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            assert len(stub.GetFeed(feed_pb2.GetFeedRequest(user_id="1", page_size=5), timeout=30).items) == 5
    finally:
        running.server.stop(0).wait()
    assert threads == [(1, 1)]
