"""Hydration of candidates outside the item vocabulary (generated posts): content from the caller."""

import numpy as np
import pytest
import torch

from feedcore.config import TaskConfig
from feedcore.features import ItemFeatures, NewItems
from ranker.batching import ranker_inputs
from ranker.model import MultiTaskRanker, RankerArgs


def _features() -> ItemFeatures:
    # items 1..4; categories: 1 → [1], 2 → [2, 3], 3 → [], 4 → [3]
    return ItemFeatures(content_type=np.array([0, 1, 1, 2, 2]), category_offsets=np.array([0, 0, 1, 3, 3, 4]),
                        category_values=np.array([1, 2, 3, 3]), popularity=np.array([0, 1, 2, 3, 4], np.float32))


def test_new_items_inherit_their_sources_categories_and_keep_the_unknown_id():
    feats = _features()
    new = NewItems.from_source_items(np.array([1, 3]), [np.array([1, 2]), np.array([4, 2])], feats,
                                     text=np.ones((2, 4), np.float32), created_at=np.array([10.0, 20.0]))
    assert new.category_lengths.tolist() == [3, 2]
    assert new.category_values.tolist() == [1, 2, 3, 2, 3]  # sorted unions: [1, 2, 3], [2, 3]
    assert new.content_type.tolist() == [1, 1]  # their sources' most common type, a trained row

    item = np.array([2, 0, 4, 0])
    batch = ranker_inputs(np.array([1, 1, 1, 1]), item, np.array([[0, 1]] * 4), feats, new_items=new)
    kjt = batch.sparse.to_dict()
    assert kjt["item_id"].values().tolist() == [2, 0, 4, 0]  # new rows keep id 0
    assert kjt["content_type"].values().tolist() == [1, 1, 2, 1]  # new rows: their sources' type
    assert kjt["category"].lengths().tolist() == [2, 3, 1, 2]
    assert kjt["category"].values().tolist() == [2, 3, 1, 2, 3, 3, 2, 3]
    assert batch.dense[:, 0].tolist() == [2.0, 0.0, 4.0, 0.0]  # popularity: none for new items

    content = feats.content(item, new)
    assert np.isnan(content.created_at[[0, 2]]).all() and content.created_at[[1, 3]].tolist() == [10.0, 20.0]


def test_a_new_item_scores_from_its_content():
    torch.manual_seed(0)
    args = RankerArgs(num_users=3, num_items=5, num_content_types=3, num_categories=4, embedding_dim=8,
                      dense_hidden=(8,), cross_layers=1, over_hidden=(8,), tasks=(TaskConfig("click"),))
    model = MultiTaskRanker(args).eval()
    feats = _features()
    hist = np.array([[0, 1]] * 2)
    with torch.no_grad():
        scores = [model(*_dense_sparse(ranker_inputs(np.array([1, 1]), np.array([0, 0]), hist, feats,
                                                     new_items=NewItems.from_source_items(
                                                         np.array([0, 1]), [np.array(s)] * 2, feats))))["click"]
                  for s in ([1], [2])]
    # Same id (0), other inherited categories: other scores.
    assert not torch.allclose(scores[0], scores[1])


def _dense_sparse(batch):
    return batch.dense, batch.sparse


def test_new_items_refuse_rows_of_vocabulary_items_and_mismatched_lengths():
    feats = _features()
    new = NewItems.from_source_items(np.array([0]), [np.array([1])], feats)
    with pytest.raises(ValueError, match="item index 0"):
        ranker_inputs(np.array([1]), np.array([3]), np.array([[0, 1]]), feats, new_items=new)
    with pytest.raises(ValueError, match="content types"):
        NewItems(np.array([0, 1]), np.array([0]), np.array([0, 0]), np.zeros(0, np.int64))
