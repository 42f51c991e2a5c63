"""Dataset loaders: raw files of a public dataset → a validated CanonicalDataset.

Each loader is a function ``load_x(root) -> CanonicalDataset`` in the module for its source;
`DATASETS` names them and where their raw files live by default.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from feedcore.errors import DataError
from feedcore.schemas import CanonicalDataset


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """A named raw dataset: which loader reads it and its default folder (relative to the repo root)."""

    loader: str  # "module:function" under feedcore.datasets
    default_root: str
    description: str


SHARED = "../shared/data"
DATASETS: dict[str, DatasetSource] = {
    "ml-latest-small": DatasetSource("movielens:load_ml_latest_small", "data/ml-latest-small",
                                     "MovieLens latest-small (bundled demo default): movies, ratings, tags"),
    "ml-100k": DatasetSource("movielens:load_ml_100k", f"{SHARED}/movielens/ml-100k",
                             "MovieLens 100k with demographics"),
    "ml-1m": DatasetSource("movielens:load_ml_1m", f"{SHARED}/movielens/ml-1m",
                           "ML-1M in the SASRec ordering, with titles, genres and demographics"),
    "amazon-arts-office": DatasetSource("amazon:load_amazon_arts_office", f"{SHARED}/amazon-arts-office",
                                        "Amazon Arts × Office: two content types, same users, real titles"),
    "ciao": DatasetSource("ciao:load_ciao", f"{SHARED}/ciao", "Ciao reviews: 28 categories, ratings, helpfulness"),
    "ciao-trust": DatasetSource("ciao:load_ciao_trust", f"{SHARED}/ciao-trust",
                                "Ciao with a trust graph: accounts to follow as items"),
    "lastfm-2k": DatasetSource("lastfm:load_lastfm_2k", f"{SHARED}/lastfm-2k",
                               "HetRec LastFM: artist play counts and a friend graph (accounts as items)"),
    "tmall": DatasetSource("multibehavior:load_tmall", f"{SHARED}/tmall-multibehavior",
                           "Tmall view / cart / buy"),
    "retailrocket": DatasetSource("multibehavior:load_retailrocket", f"{SHARED}/retailrocket-multibehavior",
                                  "RetailRocket view / cart / buy with timestamps"),
    "canonical": DatasetSource("canonical:load_canonical", "data/my-dataset",
                               "your own items/events (users, edges) Parquet tables in the canonical layout"),
    "kuairand": DatasetSource("kuairand:load_kuairand", f"{SHARED}/kuairand-pure-features",
                              "KuaiRand-Pure: official log schema plus user and video feature tables"),
}


def load_dataset(name: str, root: str | Path | None = None) -> CanonicalDataset:
    """Load dataset `name` from `root` (its default folder when None) into canonical form."""
    if name not in DATASETS:
        raise DataError("<dataset config>", "unknown dataset", column="name", value=name,
                        expected=f"one of {sorted(DATASETS)}")
    source = DATASETS[name]
    module_name, function = source.loader.split(":")
    module = importlib.import_module(f"feedcore.datasets.{module_name}")
    return getattr(module, function)(Path(root) if root is not None else Path(source.default_root))
