"""Two-tower retrieval and the faiss item index."""

import numpy as np
import pytest
import torch

from evaluation.metrics import hit_rate_at_k, ndcg_at_k, rank_of_target
from feedcore.artifacts import load_checkpoint
from feedcore.errors import ArtifactError
from feedcore.features import history_events
from feedcore.splits import Split
from retrieval.index import ItemIndex
from retrieval.model import TwoTower, TwoTowerArgs, TwoTowerTrain
from retrieval.train import evaluate_retrieval


def _clustered(n=2000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, d))
    x = centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_two_tower_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = TwoTower(TwoTowerArgs(num_users=10, num_items=30, num_content_types=3, num_categories=5,
                                  embedding_dim=8, hidden_dim=16))
    trainer = TwoTowerTrain(model, temperature=0.1, log_q=torch.full((30,), -np.log(30.0)))
    opt = torch.optim.Adam(trainer.parameters(), lr=0.01)
    args = (torch.arange(1, 9), torch.randint(1, 30, (8, 5)), torch.arange(1, 9) * 3, torch.ones(8, dtype=torch.long),
            torch.randint(1, 5, (8,)), torch.arange(8))
    first = trainer(*args).item()
    for _ in range(50):
        loss = trainer(*args)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.5


def test_index_round_trip_returns_identical_results(tmp_path):
    x = _clustered()
    ids = [f"item{i}" for i in range(len(x))]
    index = ItemIndex.build(x, ids, "IVF16,Flat", search_params="nprobe=4", model_version="m1")
    before = index.search(x[:5], 10)
    index.save(tmp_path / "index")
    loaded = ItemIndex.load(tmp_path / "index")
    assert (loaded.factory, loaded.search_params, loaded.model_version) == ("IVF16,Flat", "nprobe=4", "m1")
    assert loaded.search(x[:5], 10) == before


@pytest.mark.parametrize("factory,params", [("IVF16,Flat", "nprobe=16"), ("HNSW16", "efSearch=256")])
def test_ann_matches_exact_search(factory, params):
    x = _clustered()
    ids = [str(i) for i in range(len(x))]
    exact = ItemIndex.build(x, ids, "Flat", model_version="m")
    ann = ItemIndex.build(x, ids, factory, search_params=params, model_version="m")
    queries = x[:50]
    _, want = exact.search(queries, 20)
    _, got = ann.search(queries, 20)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(want, got, strict=True)])
    assert recall > 0.95


def test_padding_never_reaches_callers_and_items_are_added_without_rebuild():
    x = _clustered(n=5)
    index = ItemIndex.build(x, list("abcde"), "Flat", model_version="m")
    scores, ids = index.search(x[:1], 10)
    assert len(ids[0]) == 5 and "-1" not in ids[0]
    index.add(x[:1] * -1, ["f"])
    assert len(index) == 6 and index.search(-x[:1], 1)[1] == [["f"]]


def test_bad_factory_and_missing_or_corrupt_index_are_reported(tmp_path):
    with pytest.raises(ValueError, match="invalid faiss index factory string 'IVFbogus'"):
        ItemIndex.build(_clustered(n=50), [str(i) for i in range(50)], "IVFbogus", model_version="m")
    with pytest.raises(ArtifactError, match="no item index found; run `feed index build`"):
        ItemIndex.load(tmp_path / "nothing")
    ItemIndex.build(_clustered(n=50), [str(i) for i in range(50)], "Flat", model_version="m").save(tmp_path / "i")
    (tmp_path / "i" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="corrupt item index"):
        ItemIndex.load(tmp_path / "i")


def test_trained_model_beats_popularity_and_embeds_cold_items(trained_engine):
    ckpt = load_checkpoint(trained_engine.retrieval_path, "retrieval")
    metrics = ckpt.extras["metrics"]
    split = Split.read(trained_engine.splits_dir)
    train = history_events(split.train, trained_engine.data.history_events)
    # The most-popular baseline under the same full-ranking protocol.
    popular = evaluate_retrieval(None, ckpt.feature_spec, None, train, split.valid)
    assert metrics["users"] == popular["users"] == 610
    assert metrics["hr@50"] > popular["hr@50"] > 0.05
    model = TwoTower.from_checkpoint(ckpt)
    # A never-seen item (id row 0) still gets a distinct embedding from its content features.
    with torch.no_grad():
        a = model.item_tower(torch.tensor([0]), torch.tensor([1]), torch.tensor([1]), torch.tensor([0]))
        b = model.item_tower(torch.tensor([0]), torch.tensor([1]), torch.tensor([7]), torch.tensor([0]))
    assert not torch.allclose(a, b)


def test_truncated_checkpoint_is_refused(tmp_path, trained_engine):
    data = trained_engine.retrieval_path.read_bytes()
    (tmp_path / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt or unreadable retrieval checkpoint"):
        load_checkpoint(tmp_path / "model.pt", "retrieval")
    with pytest.raises(ArtifactError, match="expected a ranker checkpoint"):
        load_checkpoint(trained_engine.retrieval_path, "ranker")


def test_full_ranking_metrics_on_a_known_case():
    scores = np.array([[0.0, 5.0, 3.0, 1.0], [0.0, 1.0, 2.0, 3.0]])
    ranks = rank_of_target(scores, np.array([2, 1]), [np.array([0, 1]), np.array([0])])
    # Row 0: item 1 excluded, so item 2 ranks first; row 1: items 3 and 2 beat item 1.
    assert ranks.tolist() == [0, 2]
    assert hit_rate_at_k(ranks, 1) == 0.5
    assert ndcg_at_k(ranks, 10) == (1.0 + 1.0 / np.log2(4)) / 2
