"""`feed data prepare`: raw files → canonical Parquet tables and a train / valid / test split."""

from __future__ import annotations

import logging

from feedcore.config import EngineConfig
from feedcore.datasets import load_dataset
from feedcore.schemas import CanonicalDataset
from feedcore.splits import Split, make_split

logger = logging.getLogger(__name__)


def prepare_data(config: EngineConfig) -> tuple[CanonicalDataset, Split]:
    """Load the configured dataset, write its tables and split under the artifacts directory."""
    dataset = load_dataset(config.data.dataset, config.data.raw_root)
    split = make_split(dataset.events, config.data.split, config.data.history_events)
    dataset.write(config.prepared_dir)
    split.write(config.splits_dir)
    logger.info("prepared %s: %s; split train/valid/test = %d/%d/%d", dataset.name, dataset.counts(),
                split.train.height, split.valid.height, split.test.height)
    return dataset, split
