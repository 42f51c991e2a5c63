"""The item index: faiss, chosen by factory string, saved with its id map and the model version.

Built, added to and searched as separate steps. faiss ids are positions in `item_ids`, so new
items are appended without a rebuild; faiss's -1 padding (fewer than k results) never leaves here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import faiss
import numpy as np

from feedcore.errors import ArtifactError
from feedcore.io import atomic_path


@dataclasses.dataclass
class ItemIndex:
    """A faiss index over item embeddings (inner product), with its id map and provenance.

    Example:
        >>> idx = ItemIndex.build(np.eye(4, dtype="float32"), ["a", "b", "c", "d"], "Flat", model_version="m1")
        >>> idx.search(np.eye(4, dtype="float32")[:1], k=2)[1]
        [['a', 'b']]
    """

    index: faiss.Index
    item_ids: list[str]
    factory: str
    search_params: str
    model_version: str

    @staticmethod
    def check_settings(dim: int, factory: str, search_params: str) -> None:
        """Fail fast (before training) on a factory or search-parameter string faiss rejects."""
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ValueError(f"invalid faiss index factory string {factory!r}: {e}") from e
        if search_params:
            try:
                faiss.ParameterSpace().set_index_parameters(index, search_params)
            except RuntimeError as e:
                raise ValueError(f"invalid faiss search parameters {search_params!r} for {factory!r}: {e}") from e

    def to_gpus(self) -> bool:
        """Move the index onto all GPUs when faiss-gpu and a GPU are present; return whether it moved."""
        if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
            return False
        self.index = faiss.index_cpu_to_all_gpus(self.index)
        return True

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        item_ids: list[str],
        factory: str,
        *,
        search_params: str = "",
        model_version: str,
    ) -> ItemIndex:
        """Create (and train, for IVF/PQ) an index of `factory` type and add `embeddings`."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        try:
            index = faiss.index_factory(embeddings.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ValueError(f"invalid faiss index factory string {factory!r}: {e}") from e
        if not index.is_trained:
            index.train(embeddings)
        item_index = cls(index, [], factory, search_params, model_version)
        item_index.set_search_params(search_params)
        item_index.add(embeddings, item_ids)
        return item_index

    def set_search_params(self, params: str) -> None:
        """Apply a faiss ParameterSpace string such as ``nprobe=16`` or ``efSearch=128``."""
        if params:
            faiss.ParameterSpace().set_index_parameters(self.index, params)
        self.search_params = params

    def add(self, embeddings: np.ndarray, item_ids: list[str]) -> None:
        """Append items (no rebuild); their faiss ids continue the id map."""
        if len(embeddings) != len(item_ids):
            raise ValueError(f"{len(embeddings)} embeddings for {len(item_ids)} item ids")
        self.index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.item_ids.extend(item_ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[float]], list[list[str]]]:
        """Top-k (scores, item ids) per query, best first; padding (-1) is dropped."""
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        out_scores, out_ids = [], []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            keep = row_ids >= 0
            out_scores.append(row_scores[keep].tolist())
            out_ids.append([self.item_ids[i] for i in row_ids[keep]])
        return out_scores, out_ids

    def __len__(self) -> int:
        return self.index.ntotal

    def save(self, directory: str | Path) -> None:
        """Write index.faiss and meta.json into `directory` atomically."""
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            meta = {
                "factory": self.factory,
                "search_params": self.search_params,
                "model_version": self.model_version,
                "dim": self.index.d,
                "count": self.index.ntotal,
                "item_ids": self.item_ids,
            }
            (tmp / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: str | Path) -> ItemIndex:
        directory = Path(directory)
        meta_path, index_path = directory / "meta.json", directory / "index.faiss"
        if not meta_path.is_file() or not index_path.is_file():
            raise ArtifactError(f"{directory}: no item index found; run `feed index build` first")
        try:
            meta = json.loads(meta_path.read_text())
            index = faiss.read_index(str(index_path))
        except (RuntimeError, ValueError) as e:
            raise ArtifactError(f"{directory}: corrupt item index ({e}); rebuild with `feed index build`") from e
        if index.ntotal != meta["count"] or len(meta["item_ids"]) != meta["count"]:
            raise ArtifactError(f"{directory}: index holds {index.ntotal} vectors but meta.json lists "
                                f"{len(meta['item_ids'])} item ids; rebuild with `feed index build`")
        item_index = cls(index, meta["item_ids"], meta["factory"], "", meta["model_version"])
        item_index.set_search_params(meta["search_params"])
        return item_index
