"""Title embeddings from the packaged all-MiniLM-L6-v2, offline."""

import numpy as np
import polars as pl
import pytest

from feedcore.features import Vocabulary
from feedcore.text import TEXT_DIM, embed_texts, item_text_embeddings, load_text_encoder


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder()


def test_similar_titles_are_closer_than_unrelated_ones(encoder):
    emb = embed_texts(["Toy Story 2 (1999)", "Toy Story (1995)", "The Godfather (1972)", None, "  "], encoder)
    assert emb.shape == (5, TEXT_DIM)
    assert np.allclose(np.linalg.norm(emb[:3], axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
    assert not emb[3].any() and not emb[4].any()  # no text: a zero row


def test_item_embeddings_follow_the_vocabulary_and_are_cached(tmp_path, encoder):
    from feedcore.features import FeatureSpec

    items = pl.DataFrame({"item_id": ["b", "a", "c"], "title": ["Heat (1995)", "Alien (1979)", None]})
    vocab = Vocabulary.from_series(items["item_id"])
    spec = FeatureSpec(users=Vocabulary(()), items=vocab, content_types=Vocabulary(()),
                       categories=Vocabulary(()), max_history=5)
    out = item_text_embeddings(items, spec, tmp_path / "t.npy")
    assert out.shape == (4, TEXT_DIM)
    assert np.allclose(out[vocab.encode_one("a")], embed_texts(["Alien (1979)"], encoder)[0], atol=1e-5)
    assert not out[0].any() and not out[vocab.encode_one("c")].any()
    assert (tmp_path / "t.npy").is_file()
    assert np.array_equal(item_text_embeddings(items, spec, tmp_path / "t.npy"), out)
