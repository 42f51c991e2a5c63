"""The item index: faiss, one shard per content type, chosen by factory string, saved with its id
maps and the model version.

Each content type has its own faiss index, so a search restricted to a content type (a per-type
quota of the candidate layer) scans only that type's vectors instead of post-filtering a list over
the whole catalogue; a search over all types merges the shards' top k. Built, added to and searched
as separate steps. faiss ids are positions in a shard's id map, so new items are appended without a
rebuild; faiss's -1 padding (fewer than k results) never leaves here.

A shard with fewer than `exact_below` vectors is exact (``Flat``): an exact scan of a few
thousand vectors takes well under a millisecond, and IVF / PQ cannot be trained on so few points.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from feedcore.errors import ArtifactError
from feedcore.io import atomic_path

logger = logging.getLogger(__name__)
EXACT = "Flat"
GPU_MAX_K = 2048  # faiss-gpu's largest k (and nprobe): a GPU search asks for no more, whatever the caller wants


@dataclasses.dataclass
class Shard:
    """One content type's faiss index and its id map (faiss id i is `item_ids[i]`)."""

    index: faiss.Index
    item_ids: list[str]
    factory: str
    _id_array: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """The item ids (object array) at faiss ids `positions`: one vectorized lookup per search."""
        if self._id_array is None or len(self._id_array) != len(self.item_ids):  # built lazily, again after `add`
            self._id_array = np.asarray(self.item_ids, dtype=object)
        return self._id_array[positions]


@dataclasses.dataclass
class ItemIndex:
    """Inner-product search over item embeddings, one faiss shard per content type.

    Example:
        >>> idx = ItemIndex.build(np.eye(4, dtype="float32"), ["a", "b", "c", "d"], ["x", "x", "y", "y"],
        ...                       "Flat", model_version="m1")
        >>> idx.search(np.eye(4, dtype="float32")[:1], k=2)[1], idx.search(np.eye(4)[:1], 1, "y")[1]
        ([['a', 'b']], [['c']])
    """

    shards: dict[str, Shard]
    factory: str
    search_params: str
    model_version: str
    exact_below: int = 10_000
    on_gpu: bool = False  # some shards searched on GPUs (`to_gpus`): k is capped at GPU_MAX_K

    @staticmethod
    def check_settings(dim: int, factory: str, search_params: str) -> None:
        """Fail fast (before training) on a factory or search-parameter string faiss rejects."""
        index = _new_index(dim, factory)
        if search_params:
            try:
                faiss.ParameterSpace().set_index_parameters(index, search_params)
            except RuntimeError as e:
                raise ValueError(f"invalid faiss search parameters {search_params!r} for {factory!r}: {e}") from e

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        item_ids: Sequence[str],
        content_types: Sequence[str],
        factory: str,
        *,
        search_params: str = "",
        model_version: str,
        exact_below: int = 10_000,
    ) -> ItemIndex:
        """Create (and train, for IVF / PQ) one index per content type and add `embeddings` (N, D)."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if not len(embeddings) == len(item_ids) == len(content_types):
            raise ValueError(f"{len(embeddings)} embeddings, {len(item_ids)} item ids and "
                             f"{len(content_types)} content types: expected one of each per item")
        _new_index(embeddings.shape[1], factory)  # a bad factory string fails even when every shard is exact
        types = np.asarray(content_types, dtype=object)
        ids = np.asarray(item_ids, dtype=object)
        shards = {}
        for content_type in sorted(set(content_types)):
            rows = types == content_type
            shard_factory = factory if rows.sum() >= exact_below else EXACT
            index = _new_index(embeddings.shape[1], shard_factory)
            if not index.is_trained:
                index.train(embeddings[rows])
            shards[content_type] = Shard(index, [], shard_factory)
        item_index = cls(shards, factory, "", model_version, exact_below)
        item_index.set_search_params(search_params)
        item_index.add(embeddings, ids.tolist(), types.tolist())
        return item_index

    def set_search_params(self, params: str) -> None:
        """Apply a faiss ParameterSpace string such as ``nprobe=16`` or ``efSearch=128`` to the
        approximate shards (exact shards have nothing to tune)."""
        for shard in self.shards.values():
            if params and shard.factory != EXACT:
                faiss.ParameterSpace().set_index_parameters(shard.index, params)
        self.search_params = params

    def add(self, embeddings: np.ndarray, item_ids: Sequence[str], content_types: Sequence[str]) -> None:
        """Append items (no rebuild); their faiss ids continue their shard's id map. A content type
        new to the index gets a new exact shard."""
        if not len(embeddings) == len(item_ids) == len(content_types):
            raise ValueError(f"{len(embeddings)} embeddings, {len(item_ids)} item ids and "
                             f"{len(content_types)} content types: expected one of each per item")
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        types = np.asarray(content_types, dtype=object)
        for content_type in dict.fromkeys(content_types):
            rows = np.flatnonzero(types == content_type)
            if content_type not in self.shards:
                self.shards[content_type] = Shard(_new_index(embeddings.shape[1], EXACT), [], EXACT)
            shard = self.shards[content_type]
            shard.index.add(embeddings[rows])
            shard.item_ids.extend(item_ids[i] for i in rows)

    def search(
        self, queries: np.ndarray, k: int, content_type: str | None = None
    ) -> tuple[list[list[float]], list[list[str]]]:
        """Top-k (scores, item ids) per query, best first, over one content type's shard or (None)
        all of them; padding (-1) is dropped, an unknown content type finds nothing."""
        scores, ids, _ = self.search_with_types(queries, k, content_type)
        return scores, ids

    def search_with_types(
        self, queries: np.ndarray, k: int, content_type: str | None = None
    ) -> tuple[list[list[float]], list[list[str]], list[list[str]]]:
        """`search`, with each result's content type (its shard's) as a third list. On GPUs at most
        GPU_MAX_K results per query (a caller asking for more, say k plus the seen items to drop,
        gets fewer instead of a faiss error)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.on_gpu:
            k = min(k, GPU_MAX_K)
        shards = [(t, s) for t, s in self.shards.items() if content_type in (None, t) and s.index.ntotal]
        if not shards:
            return [[] for _ in queries], [[] for _ in queries], [[] for _ in queries]
        results = [shard.index.search(queries, k) for _, shard in shards]
        scores = np.concatenate([r[0] for r in results], axis=1)  # (Q, k * shards)
        local = np.concatenate([r[1] for r in results], axis=1)  # (Q, k * shards), -1: padding
        owner = np.repeat(np.arange(len(shards)), k)  # (k * shards,)
        names = np.array([t for t, _ in shards], dtype=object)
        scores = np.where(local >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, k)
        out_scores, out_ids, out_types = [], [], []
        for q, row in enumerate(order):
            row = row[local[q, row] >= 0]
            out_scores.append(scores[q, row].tolist())
            ids = np.empty(len(row), dtype=object)
            for s, (_, shard) in enumerate(shards):
                mine = owner[row] == s
                ids[mine] = shard.ids_at(local[q, row[mine]])
            out_ids.append(ids.tolist())
            out_types.append(names[owner[row]].tolist())
        return out_scores, out_ids, out_types

    def to_gpus(self) -> bool:
        """Move every shard faiss can clone onto all GPUs when faiss-gpu and a GPU are present;
        return whether any moved. An HNSW shard (faiss has no GPU HNSW) or any other that cannot be
        cloned stays on the CPU, with a log line, instead of failing the start."""
        if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
            return False
        for content_type, shard in self.shards.items():
            if "HNSW" in shard.factory:
                logger.info("index shard %r (%s) stays on the CPU: faiss cannot clone HNSW to a GPU",
                            content_type, shard.factory)
                continue
            try:
                shard.index = faiss.index_cpu_to_all_gpus(shard.index)
            except RuntimeError as e:
                logger.info("index shard %r (%s) stays on the CPU: %s", content_type, shard.factory, e)
                continue
            self.on_gpu = True
        return self.on_gpu

    @property
    def content_types(self) -> list[str]:
        return list(self.shards)

    def __len__(self) -> int:
        return sum(shard.index.ntotal for shard in self.shards.values())

    def save(self, directory: str | Path) -> None:
        """Write one shard-<i>.faiss per content type and meta.json into `directory` atomically
        (from CPU shards: save before `to_gpus`)."""
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            shards = []
            for i, (content_type, shard) in enumerate(self.shards.items()):
                index = shard.index
                faiss.write_index(index, str(tmp / f"shard-{i}.faiss"))
                shards.append({"content_type": content_type, "file": f"shard-{i}.faiss", "factory": shard.factory,
                               "count": index.ntotal, "item_ids": shard.item_ids})
            meta = {"factory": self.factory, "search_params": self.search_params, "model_version": self.model_version,
                    "exact_below": self.exact_below, "dim": self._dim(), "count": len(self), "shards": shards}
            (tmp / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: str | Path) -> ItemIndex:
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise ArtifactError(f"{directory}: no item index found; run `feed index build` first")
        try:
            meta = json.loads(meta_path.read_text())
            shards = {}
            for s in meta["shards"]:
                path = directory / s["file"]
                if not path.is_file():
                    raise ArtifactError(f"{path}: shard of content type {s['content_type']!r} is missing; "
                                        "rebuild with `feed index build`")
                index = faiss.read_index(str(path))
                if index.ntotal != s["count"] or len(s["item_ids"]) != s["count"]:
                    raise ArtifactError(f"{path}: holds {index.ntotal} vectors but meta.json lists "
                                        f"{len(s['item_ids'])} item ids; rebuild with `feed index build`")
                shards[s["content_type"]] = Shard(index, s["item_ids"], s["factory"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{directory}: corrupt item index ({e!r}); rebuild with `feed index build`") from e
        item_index = cls(shards, meta["factory"], "", meta["model_version"], meta["exact_below"])
        item_index.set_search_params(meta["search_params"])
        return item_index

    def _dim(self) -> int:
        return next(iter(self.shards.values())).index.d if self.shards else 0


def _new_index(dim: int, factory: str) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"invalid faiss index factory string {factory!r}: {e}") from e
