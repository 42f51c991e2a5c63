"""`feed data prepare`: raw files → canonical Parquet tables and a split; and reading them back as
the inputs of every training job."""

from __future__ import annotations

import dataclasses
import logging

import polars as pl

from feedcore.config import EngineConfig
from feedcore.datasets import load_dataset
from feedcore.features import FeatureSpec, ItemFeatures, build_feature_spec, item_features
from feedcore.schemas import CanonicalDataset, dataset_fingerprint
from feedcore.splits import Split, make_split

logger = logging.getLogger(__name__)


def prepare_data(config: EngineConfig) -> tuple[CanonicalDataset, Split]:
    """Load the configured dataset, write its tables and split under the artifacts directory."""
    dataset = load_dataset(config.data.dataset, config.data.raw_root)
    split = make_split(dataset.events, config.data.split, config.data.history_events, dataset.users)
    dataset.write(config.prepared_dir)
    split.write(config.splits_dir, dataset_fingerprint(config.prepared_dir))
    logger.info("prepared %s: %s; split train/valid/test = %d/%d/%d", dataset.name, dataset.counts(),
                split.train.height, split.valid.height, split.test.height)
    return dataset, split


@dataclasses.dataclass(frozen=True)
class TrainingInputs:
    """What every training job starts from: the split, the feature vocabularies and item features
    (computed on training events only) and the fingerprint of the prepared data."""

    split: Split
    spec: FeatureSpec
    item_features: ItemFeatures
    data_fingerprint: str
    items: pl.DataFrame


def load_training_inputs(config: EngineConfig) -> TrainingInputs:
    """Read the prepared tables and split written by `prepare_data`."""
    data = CanonicalDataset.read(config.prepared_dir)
    fingerprint = dataset_fingerprint(config.prepared_dir)
    split = Split.read(config.splits_dir, fingerprint)
    spec = build_feature_spec(data.items, data.users, config.data.max_history)
    return TrainingInputs(split, spec, item_features(data.items, split.train, spec), fingerprint, data.items)
