"""`feed index build`: the trained item tower embeds every catalogue item into a faiss index."""

from __future__ import annotations

import logging

import numpy as np

from feedcore.artifacts import load_checkpoint
from feedcore.config import EngineConfig
from retrieval.embed import embed_items
from retrieval.index import ItemIndex
from retrieval.model import TwoTower

logger = logging.getLogger(__name__)


def build_index_job(config: EngineConfig) -> ItemIndex:
    ckpt = load_checkpoint(config.retrieval_path, "retrieval")
    model = TwoTower.from_checkpoint(ckpt)
    items = np.arange(1, len(ckpt.feature_spec.items))  # row 0 is "unknown", never a candidate
    embeddings = embed_items(model, items)
    spec = ckpt.feature_spec
    content_types = [spec.content_types.decode(int(t)) for t in model.content_type[items].tolist()]
    index = ItemIndex.build(embeddings, list(spec.items.values), content_types, config.retrieval.index_factory,
                            search_params=config.retrieval.index_search_params, model_version=ckpt.version)
    index.save(config.index_dir)
    logger.info("indexed %d items with %s (model %s)", len(index), index.factory, ckpt.version)
    return index
