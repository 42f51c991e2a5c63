"""Two-tower retrieval and the faiss item index."""

import numpy as np
import pytest
import torch

from feedcore.artifacts import load_checkpoint
from feedcore.config import RetrievalConfig
from feedcore.errors import ArtifactError
from feedcore.features import ItemFeatures, history_events
from feedcore.metrics import hit_rate_at_k, ndcg_at_k, rank_of_target
from feedcore.splits import Split
from retrieval.index import ItemIndex
from retrieval.model import TwoTower, TwoTowerArgs
from retrieval.train import SampledSoftmaxLoss, evaluate_retrieval


def _clustered(n=2000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, d))
    x = centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _tiny_model(user_encoder, n_items=30, max_len=6):
    feats = ItemFeatures(content_type=np.arange(n_items) % 3, category_offsets=np.arange(n_items + 1),
                         category_values=np.arange(n_items) % 4 + 1, popularity=np.zeros(n_items, np.float32))
    return TwoTower(TwoTowerArgs(num_users=10, num_items=n_items, num_content_types=3, num_categories=5,
                                 embedding_dim=16, hidden_dim=32, user_encoder=user_encoder, max_len=max_len,
                                 dropout=0.0), feats)


@pytest.mark.parametrize("user_encoder", ["mean", "sasrec", "hstu"])
@pytest.mark.parametrize("num_negatives", [0, 8])
def test_loss_decreases_on_a_fixed_batch(user_encoder, num_negatives):
    torch.manual_seed(0)
    model = _tiny_model(user_encoder)
    config = RetrievalConfig(num_negatives=num_negatives, in_batch_negatives=4, temperature=0.1)
    loss_fn = SampledSoftmaxLoss(model, config, torch.full((30,), 1 / 30))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    history, target = torch.randint(1, 30, (8, 6)), torch.randint(1, 30, (8,))
    losses = []
    for _ in range(60):
        loss = loss_fn(model.user_embeddings(torch.arange(8), history), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5


@pytest.mark.parametrize("user_encoder", ["sasrec", "hstu"])
def test_sequential_encoders_are_causal(user_encoder):
    torch.manual_seed(0)
    model = _tiny_model(user_encoder).eval()
    history = torch.tensor([[0, 0, 3, 4, 5, 6]])
    with torch.no_grad():
        out = model.sequence_outputs(history)
        changed_future = model.sequence_outputs(torch.tensor([[0, 0, 3, 4, 9, 9]]))
        user = model.user_embeddings(torch.tensor([0]), torch.tensor([[1, 2, 0, 0, 3, 4, 5, 6]]))
    # Positions up to t never see later items; the last position does.
    assert torch.allclose(out[0, :4], changed_future[0, :4], atol=1e-6)
    assert not torch.allclose(out[0, 5], changed_future[0, 5])
    # The user embedding is the last output over the most recent max_len items.
    assert torch.allclose(user[0], out[0, -1], atol=1e-6)


def _types(n):
    return ["movie" if i % 3 else "post" for i in range(n)]


def test_index_round_trip_returns_identical_results(tmp_path):
    x = _clustered()
    ids = [f"item{i}" for i in range(len(x))]
    index = ItemIndex.build(x, ids, _types(len(x)), "IVF16,Flat", search_params="nprobe=4", model_version="m1",
                            exact_below=100)
    assert {s.factory for s in index.shards.values()} == {"IVF16,Flat"}
    before = index.search(x[:5], 10), index.search(x[:5], 10, "post")
    index.save(tmp_path / "index")
    loaded = ItemIndex.load(tmp_path / "index")
    assert (loaded.factory, loaded.search_params, loaded.model_version) == ("IVF16,Flat", "nprobe=4", "m1")
    assert (loaded.search(x[:5], 10), loaded.search(x[:5], 10, "post")) == before


@pytest.mark.parametrize("factory,params", [("IVF16,Flat", "nprobe=16"), ("HNSW16", "efSearch=256")])
def test_ann_matches_exact_search(factory, params):
    x = _clustered()
    ids = [str(i) for i in range(len(x))]
    exact = ItemIndex.build(x, ids, ["item"] * len(x), "Flat", model_version="m")
    ann = ItemIndex.build(x, ids, ["item"] * len(x), factory, search_params=params, model_version="m",
                          exact_below=0)
    queries = x[:50]
    _, want = exact.search(queries, 20)
    _, got = ann.search(queries, 20)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(want, got, strict=True)])
    assert recall > 0.95


def test_search_by_content_type_matches_exact_search_filtered_to_that_type():
    x = _clustered()
    ids, types = [str(i) for i in range(len(x))], _types(len(x))
    index = ItemIndex.build(x, ids, types, "Flat", model_version="m")
    scores = x[:20] @ x.T  # (Q, N) exact inner products
    for content_type in ("movie", "post"):
        allowed = np.array([t == content_type for t in types])
        want = [[ids[j] for j in np.argsort(-np.where(allowed, row, -np.inf), kind="stable")[:15]] for row in scores]
        got_scores, got = index.search(x[:20], 15, content_type)
        assert [set(g) for g in got] == [set(w) for w in want]
        assert all(s == sorted(s, reverse=True) for s in got_scores)
    # Over all types, the merged shards give the exact global top k.
    want = [[ids[j] for j in np.argsort(-row, kind="stable")[:15]] for row in scores]
    assert [set(g) for g in index.search(x[:20], 15)[1]] == [set(w) for w in want]
    assert index.search(x[:2], 5, "no-such-type")[1] == [[], []]


def test_small_shards_are_exact_and_padding_never_reaches_callers():
    x = _clustered(n=5)
    index = ItemIndex.build(x, list("abcde"), ["t"] * 5, "IVF1024,PQ8", model_version="m")
    assert index.shards["t"].factory == "Flat"  # 5 vectors cannot train 1,024 lists
    scores, ids = index.search(x[:1], 10)
    assert len(ids[0]) == 5 and "-1" not in ids[0]


def test_items_are_added_without_rebuild_including_a_new_content_type():
    x = _clustered()
    index = ItemIndex.build(x, [str(i) for i in range(len(x))], _types(len(x)), "IVF16,Flat",
                            search_params="nprobe=16", model_version="m", exact_below=100)
    trained = index.shards["movie"].index
    index.add(-x[:2], ["new-movie", "generated-1"], ["movie", "generated"])
    assert index.shards["movie"].index is trained and len(index) == len(x) + 2
    assert index.search(-x[:1], 1)[1] == [["new-movie"]]
    assert index.search(-x[1:2], 1, "generated")[1] == [["generated-1"]]


def test_bad_factory_and_missing_or_corrupt_index_are_reported(tmp_path):
    x, ids, types = _clustered(n=50), [str(i) for i in range(50)], ["t"] * 50
    with pytest.raises(ValueError, match="invalid faiss index factory string 'IVFbogus'"):
        ItemIndex.build(x, ids, types, "IVFbogus", model_version="m")
    with pytest.raises(ValueError, match="50 embeddings, 50 item ids and 3 content types"):
        ItemIndex.build(x, ids, types[:3], "Flat", model_version="m")
    with pytest.raises(ArtifactError, match="no item index found; run `feed index build`"):
        ItemIndex.load(tmp_path / "nothing")
    ItemIndex.build(x, ids, types, "Flat", model_version="m").save(tmp_path / "i")
    (tmp_path / "i" / "shard-0.faiss").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="corrupt item index"):
        ItemIndex.load(tmp_path / "i")
    (tmp_path / "i" / "shard-0.faiss").unlink()
    with pytest.raises(ArtifactError, match="shard of content type 't' is missing"):
        ItemIndex.load(tmp_path / "i")


def test_trained_model_beats_popularity_and_embeds_cold_items(trained_engine):
    ckpt = load_checkpoint(trained_engine.retrieval_path, "retrieval")
    metrics = ckpt.extras["metrics"]
    split = Split.read(trained_engine.splits_dir)
    train = history_events(split.train, trained_engine.data.history_events)
    # The most-popular baseline under the same full-ranking protocol.
    popular = evaluate_retrieval(None, ckpt.feature_spec, train, split.valid)
    assert metrics["users"] == popular["users"] == 610
    assert metrics["hr@50"] > popular["hr@50"] > 0.05
    model = TwoTower.from_checkpoint(ckpt)
    # Movies nobody rated in training share the untrained id row 0 and are told apart by content.
    unseen = np.flatnonzero(ckpt.extras["item_features"]["popularity"].numpy() == 0)[1:]
    assert len(unseen) > 20 and (model.id_row[torch.from_numpy(unseen)] == 0).all()
    with torch.no_grad():
        emb = model.item_embeddings(torch.from_numpy(unseen[:50]))
    assert len({tuple(np.round(e, 4)) for e in emb.numpy()}) > 5  # not one shared vector


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


def test_metrics_per_content_type():
    from feedcore.metrics import full_ranking_metrics

    scores = np.array([[0.0, 3.0, 2.0, 1.0]] * 3)
    metrics = full_ranking_metrics(scores, np.array([1, 2, 3]), [np.array([0])] * 3, ks=(1, 2),
                                   groups=np.array(["movie", "movie", "post"]))
    assert metrics["hr@1"] == pytest.approx(1 / 3) and metrics["movie/hr@2"] == 1.0
    assert metrics["post/hr@2"] == 0.0 and metrics["post/users"] == 1.0


def test_content_embeddings_of_a_new_item_match_an_untrained_catalogue_item():
    """An item outside the vocabulary (a generated post) embeds exactly as a catalogue item that
    has no trained id row and the same content."""
    torch.manual_seed(0)
    model = _tiny_model("mean").eval()  # popularity 0 everywhere: every item uses the unknown id row
    items = torch.tensor([4, 7])
    with torch.no_grad():
        expected = model.item_embeddings(items)
        got = model.content_embeddings(model.content_type[items], model.category_values[items],
                                       torch.tensor([0, 1]))
        other = model.content_embeddings(model.content_type[items], model.category_values[items.flip(0)],
                                         torch.tensor([0, 1]))
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(other, expected)  # the content is what it is embedded from
