"""The item index's GPU rules, checked on CPU faiss (`make gpu-check` runs them on a real GPU): a
search on GPUs never asks faiss for more than GPU_MAX_K results, and an HNSW shard (which faiss
cannot clone to a GPU) stays on the CPU with a log line instead of failing the start. The GPU
itself is simulated by faiss's own calls being swapped; the searches are real CPU faiss."""

from __future__ import annotations

import logging

import faiss
import numpy as np

from retrieval.index import GPU_MAX_K, ItemIndex


class _AskedK:
    """A faiss index that records the k of each search (as faiss-gpu, which refuses k > 2048)."""

    def __init__(self, index) -> None:
        self.index, self.ntotal, self.asked = index, index.ntotal, []

    def search(self, queries, k):
        self.asked.append(k)
        assert k <= GPU_MAX_K, f"faiss-gpu: k {k} > {GPU_MAX_K}"
        return self.index.search(queries, k)


def _index(n: int = 3000, factory: str = "Flat") -> tuple[ItemIndex, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    return ItemIndex.build(vectors, [str(i) for i in range(n)], ["movie"] * n, factory, model_version="m",
                           exact_below=10), vectors


def test_a_gpu_search_asks_for_at_most_gpu_max_k():
    index, vectors = _index()
    reference = index.search(vectors[:2], 2500)  # on CPU: all 2,500
    assert len(reference[1][0]) == 2500
    shard = index.shards["movie"]
    shard.index = _AskedK(shard.index)
    index.on_gpu = True
    scores, ids = index.search(vectors[:2], 2500)
    assert shard.index.asked == [GPU_MAX_K]
    assert ids[0] == reference[1][0][:GPU_MAX_K] and np.allclose(scores[0], reference[0][0][:GPU_MAX_K])


def test_an_hnsw_shard_stays_on_the_cpu(monkeypatch, caplog):
    index, vectors = _index(factory="HNSW16")
    flat = ItemIndex.build(vectors[:5], list("abcde"), ["book"] * 5, "Flat", model_version="m")
    index.shards["book"] = flat.shards["book"]
    cloned = []

    def index_cpu_to_all_gpus(cpu_index):  # what faiss-gpu does: HNSW has no GPU implementation
        if isinstance(cpu_index, faiss.IndexHNSW):
            raise RuntimeError("Error in GpuClonerOptions: This index type is not implemented on GPU")
        cloned.append(cpu_index)
        return cpu_index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", index_cpu_to_all_gpus, raising=False)
    with caplog.at_level(logging.INFO, logger="retrieval.index"):
        assert index.to_gpus()
    assert cloned == [flat.shards["book"].index] and isinstance(index.shards["movie"].index, faiss.IndexHNSW)
    assert "index shard 'movie' (HNSW16) stays on the CPU" in caplog.text
    assert index.search(vectors[:1], 3, "movie")[1][0]  # still searched, on the CPU
