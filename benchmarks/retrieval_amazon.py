"""Amazon Arts × Office: retrieval per content type, and cold-start items retrieved from content alone.

    .venv/bin/python benchmarks/retrieval_amazon.py [--minutes 6]

Data: ../shared/data/amazon-arts-office (9,577 users, 38,396 items of two content types,
arts_product and office_product; 208,541 review events; real product titles).

Protocol: the source's own (C2DSR / URLLM), one held-out target per `target_line`. Each user has a
shared history and two targets, each predicted from the shared history alone: line 1's target
(Office for 9,162 users, Art for 415) and line 2's target (always Art). Users are split as the
source splits them: train users 0-7999 train on their whole sequence (history, then both targets);
validation users 9000-9576 and test users 8000-8999 contribute their shared history to training
(no target of theirs is ever trained on) and are scored on their two targets. Every target is
ranked against all 38,396 items, the user's history excluded (full ranking, no sampled
negatives); HR@10/50/200 and NDCG@10 overall (2,000 test targets) and per content type of the
target. No published figure on this release was retrieved, so the rows compare the variants
measured here with each other and with the most-popular baseline.

Cold start: 10% of the items that have events (seeded) are held out of training entirely: every
event on them is removed from the training data and from the histories the model reads at test
time, so their id embeddings are never trained and they take the item tower's content path
(content type, categories, title text). Test targets that are one of these items are scored
separately ("cold" rows): each must be found among all 38,396 items from its content alone, and
("cold_among_cold" rows) among the 3,441 cold items only, as a new-items shelf would serve them.

Training keeps the best validation epoch (NDCG@10 on the validation users' targets) within a
budget read on `--clock` (``cpu``: this process's CPU seconds / its threads, which holds on a
shared machine).

Popularity prior: each item's score gets beta * log1p(its training events) + gamma_t (t its
content type, gamma of Art fixed at 0). beta and gamma_office are chosen on the validation users
by grid search, maximizing the smallest ratio to the most-popular baseline over HR@10 and NDCG@10,
overall and per type (the target); test rows are scored once with them.

Within type (`--within-type`, the default): each target is also ranked among the items of its own
content type only (`evaluate_retrieval(item_groups=...)`), the C2DSR protocol's domain-specific
ranking and what the engine serves with a per-type quota (`[candidates] ann_type_shares`, one
faiss shard per type); the baseline is then the most popular items of that type, as the engine's
`popular` source serves them per type. Training validates (and keeps its best epoch) under this
protocol, and the per-type prior beta_t * log1p(events) is fitted per type on validation, as
above.

Fresh-items source (`retrieval.candidates.FreshSource`): items with no training event embedded
from content alone, in a pool of their own. A user's 50 candidates are the top 50 - q of the
model's scores plus the top q of the fresh pool, ordered by score; reported: cold-target HR@50
(the cold target among those 50) and the overall HR@10 / NDCG@10 of that ordered list, against
the list without the source. The fresh pool is searched with the user embedding (`fresh_query =
"user"`) or with the user's content profile (`"history"`: the mean content-only embedding of the
last FRESH_HISTORY items); the "cold among cold" row ranks the cold targets among the cold items
by that profile.

Served prior: `served_prior_recall@100` is the share of the exact top 100 per type (by score +
prior, as the rows rank) that the ann source returns as served (`AnnSource` with the prior, over a
per-type faiss index), with its milliseconds per call against the same source without the prior.

Variants (`--variants`): the SASRec user tower with the item tower's title text (all-MiniLM-L6-v2)
and without it (id + content type + categories), and the most-popular baseline.
Writes benchmarks/results/retrieval_amazon.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import resource
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from feedcore.config import CandidatesConfig, RetrievalConfig
from feedcore.datasets import load_dataset
from feedcore.features import build_feature_spec, item_features, latest_histories, pad_histories
from feedcore.io import atomic_path
from feedcore.metrics import full_ranking_metrics, metrics_from_ranks
from feedcore.splits import Split, target_line
from feedcore.text import item_text_embeddings
from retrieval.candidates import AnnSource, UserState, content_profile, fresh_items
from retrieval.embed import embed_items, embed_users
from retrieval.index import ItemIndex
from retrieval.ops import ranks_in_chunks
from retrieval.train import evaluate_retrieval, heldout_inputs, train_retrieval

OUT = Path(__file__).parent / "results" / "retrieval_amazon.json"
FRESH_HISTORY = 10  # the content profile's last items
TEXT_CACHE = Path("artifacts/benchmarks/amazon-arts-office-titles.npy")
BASE = RetrievalConfig(
    user_encoder="sasrec", embedding_dim=64, hidden_dim=128, num_blocks=2, num_heads=1, dropout=0.2,
    normalize=True, temperature=0.05, num_negatives=1024, in_batch_negatives=512, batch_size=128,
    learning_rate=2e-3, lr_schedule="cosine", epochs=30, bf16=True, id_dropout=0.25, seed=0, device="cpu",
    validate_every=1,
)


def rank_among(model, spec, history: pl.DataFrame, heldout: pl.DataFrame, pool: np.ndarray) -> dict[str, float]:
    """HR@K / NDCG@10 of held-out items ranked against the items of `pool` only."""
    histories = latest_histories(history, spec)
    users = heldout["user_id"].to_list()
    hist = pad_histories([histories.get(u, np.zeros(0, np.int64)) for u in users], spec.max_history)
    scores = embed_users(model, spec.users.encode(heldout["user_id"]), hist) @ embed_items(model, pool).T
    position = {int(item): j for j, item in enumerate(pool)}
    target = np.array([position[int(i)] for i in spec.items.encode(heldout["item_id"])])
    return full_ranking_metrics(scores, target, [np.zeros(0, np.int64)] * len(users), (10, 50, 200))


def fit_prior(users: np.ndarray, items: np.ndarray, counts: np.ndarray, type_of: np.ndarray, heldout, target,
              exclude, popular: dict[str, float], groups) -> tuple[float, float, list[dict]]:
    """(beta, gamma_office, grid) maximizing the smallest ratio to `popular` on held-out rows."""
    grid = []
    keys = ["hr@10", "ndcg@10"] + [f"{g}/{k}" for g in np.unique(groups) for k in ("hr@10", "ndcg@10")]
    office = (type_of == OFFICE_INDEX[0]).astype(np.float32)
    for beta in (0.0, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12):
        for gamma in (-0.1, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3):
            offset = beta * np.log1p(counts) + gamma * office
            ranks, _ = ranks_in_chunks(users, items, target, exclude, item_offset=offset)
            m = metrics_from_ranks(ranks, (10,), groups)
            worst = min(m[k] / max(popular[k], 1e-9) for k in keys)
            grid.append({"beta": beta, "gamma_office": gamma, "min_ratio_to_popular": worst, "ndcg@10": m["ndcg@10"]})
    best = max(grid, key=lambda g: (g["min_ratio_to_popular"], g["ndcg@10"]))
    return best["beta"], best["gamma_office"], grid


OFFICE_INDEX: list[int] = []  # the office_product content-type index (set in main)


def fit_type_prior(users: np.ndarray, items: np.ndarray, counts: np.ndarray, type_of: np.ndarray, target, exclude,
                   popular: dict[str, float], row_types: np.ndarray, names: dict[int, str]) -> tuple[np.ndarray, list]:
    """Within-type protocol: per content type t, the beta_t of `beta_t * log1p(events)` maximizing
    the smallest ratio to `popular` (the within-type most-popular baseline) over that type's HR@10
    and NDCG@10 on held-out rows. Returns the (N,) offset and the grid."""
    offset, grid = np.zeros(len(counts), np.float32), []
    for t, name in names.items():
        rows = np.flatnonzero(row_types == name)
        if not len(rows):
            continue
        tried = []
        for beta in (0.0, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.2, 0.4):
            ranks, _ = ranks_in_chunks(users[rows], items, target[rows], [exclude[i] for i in rows],
                                       item_offset=beta * np.log1p(counts), item_groups=type_of)
            m = metrics_from_ranks(ranks, (10,))
            worst = min(m[k] / max(popular[f"{name}/{k}"], 1e-9) for k in ("hr@10", "ndcg@10"))
            tried.append({"type": name, "beta": beta, "min_ratio_to_popular": worst, "ndcg@10": m["ndcg@10"]})
        best = max(tried, key=lambda g: (g["min_ratio_to_popular"], g["ndcg@10"]))
        offset[type_of == t] = best["beta"] * np.log1p(counts[type_of == t])
        grid += tried
    return offset, grid


def with_fresh(users, items, offset, fresh_pool, fresh_emb, target, exclude, quota: int, size: int = 50,
               queries=None):
    """Ordered candidate lists of `size`: the model's top size - quota plus the fresh pool's top
    `quota` (content-only embeddings) nearest to `queries` (default: the user embeddings), merged
    by the user embedding's score. Returns (B, size) item indices."""
    _, top = ranks_in_chunks(users, items, target, exclude, item_offset=offset, top_k=size)
    if quota == 0:
        return top
    queries = users if queries is None else queries
    _, fresh = ranks_in_chunks(queries, fresh_emb, np.zeros(len(users), np.int64), [np.zeros(0, np.int64)] * len(users),
                               item_offset=offset[fresh_pool] if queries is users else None, top_k=quota + size)
    out = np.empty_like(top)
    for r in range(len(users)):
        main = top[r, : size - quota]
        taken = set(main.tolist())
        extra = [i for i in fresh_pool[fresh[r]].tolist() if i not in taken][:quota]
        both = np.concatenate([main, np.array(extra, np.int64)])
        scores = np.concatenate([items[main] @ users[r], fresh_emb[np.searchsorted(fresh_pool, extra)] @ users[r]])
        scores += offset[both]
        out[r, : len(both)] = both[np.argsort(-scores, kind="stable")]
        out[r, len(both):] = 0
    return out


def served_prior_recall(model, spec, users, items, offset, type_of, names: dict[int, str],
                        quota: int) -> dict[str, float]:
    """The ann source as served (`AnnSource` with the prior, over a per-type faiss Flat index of
    the same item embeddings, `quota` per type): per content type, the share of the exact top
    `quota` by score + prior that it returns, and its milliseconds per call against the same
    source without the prior. Seen items are not excluded (in both lists alike)."""
    ids = list(spec.items.values)
    index = ItemIndex.build(items[1:], ids, [spec.content_types.decode(int(t)) for t in type_of[1:]], "Flat",
                            model_version="benchmark")
    shares = {name: 1.0 for name in names.values()}
    plain, with_prior = AnnSource(model, index, spec, shares), AnnSource(model, index, spec, shares, offset)
    none, zeros = [np.zeros(0, np.int64)] * len(users), np.zeros(len(users), np.int64)
    cols = {name: np.flatnonzero(type_of[1:] == t) + 1 for t, name in names.items()}  # row 0: unknown
    exact = {name: ranks_in_chunks(users, items[c], zeros, none, item_offset=offset[c], top_k=quota)[1]
             for name, c in cols.items()}
    ids_of = {name: np.array(ids, dtype=object)[c - 1] for name, c in cols.items()}
    found, seconds = {name: [] for name in names.values()}, {"plain": 0.0, "prior": 0.0}
    for r in range(len(users)):
        user = UserState("", np.array([1]), frozenset(), embedding=users[r])
        start = time.perf_counter()
        plain.candidates(user, quota * len(names), set())
        seconds["plain"] += time.perf_counter() - start
        start = time.perf_counter()
        got = {i for i, _, _ in with_prior.candidates(user, quota * len(names), set())}
        seconds["prior"] += time.perf_counter() - start
        for name in names.values():
            found[name].append(len(got & set(ids_of[name][exact[name][r]])) / quota)
    return {**{f"{name}/served_prior_recall@{quota}": float(np.mean(v)) for name, v in found.items()},
            "served_ms_per_call_without_prior": 1000 * seconds["plain"] / len(users),
            "served_ms_per_call_with_prior": 1000 * seconds["prior"] / len(users)}


def list_metrics(lists: np.ndarray, target: np.ndarray, groups) -> dict[str, float]:
    """HR@10, NDCG@10 (first 10 of each list) and HR@50 (whole list) of ordered candidate lists."""
    hit = lists == target[:, None]
    ranks = np.where(hit.any(1), hit.argmax(1), lists.shape[1] + 1000)
    return metrics_from_ranks(ranks, (10, 50), groups)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="../shared/data/amazon-arts-office")
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget per model")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    parser.add_argument("--cold-fraction", type=float, default=0.1)
    parser.add_argument("--variants", nargs="+", default=["text", "no-text"], choices=["text", "no-text"])
    parser.add_argument("--fresh-quota", type=int, default=5, help="fresh items among 50 candidates")
    parser.add_argument("--within-type", action=argparse.BooleanOptionalAction, default=True,
                        help="validate (and so keep the epoch) within type, and add the within-type rows")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)

    ds = load_dataset("amazon-arts-office", args.root)
    spec = build_feature_spec(ds.items, ds.users, max_history=50)
    rng = np.random.default_rng(0)
    with_events = np.array(sorted(set(ds.events["item_id"].to_list())))
    cold = set(rng.choice(with_events, int(args.cold_fraction * len(with_events)), replace=False).tolist())
    warm = pl.col("item_id").is_in(list(cold)).not_()
    split = target_line(ds.events, ds.users)
    split = Split(split.train.filter(warm), split.valid, split.test)  # cold items never reach training
    feats = item_features(ds.items, split.train, spec)
    assert not (feats.popularity[spec.items.encode(pl.Series(list(cold)))] > 0).any()
    text = item_text_embeddings(ds.items, spec, TEXT_CACHE) if "text" in args.variants else None
    test_cold = split.test.filter(~warm)
    history = split.train  # the shared histories of validation and test users, cold items removed
    OFFICE_INDEX[:] = [spec.content_types.encode_one("office_product")]
    counts = np.bincount(spec.items.encode(history["item_id"]), minlength=len(spec.items)).astype(np.float32)
    fresh_pool = fresh_items(spec, history, 0)
    cold_rows = np.isin(split.test["item_id"].to_numpy(), np.array(sorted(cold)))
    groups = split.test["content_type"].to_numpy()
    valid_groups = split.valid["content_type"].to_numpy()

    cold_index = spec.items.encode(pl.Series(sorted(cold)))

    def evaluate(model, offset=None) -> dict[str, float]:
        out = evaluate_retrieval(model, spec, history, split.test, item_offset=offset)
        out.update({f"cold/{k}": v for k, v in evaluate_retrieval(model, spec, history, test_cold,
                                                                    item_offset=offset).items() if "/" not in k})
        if model is not None:  # the same cold targets ranked among the cold items only (a new-items shelf)
            out.update({f"cold_among_cold/{k}": v for k, v in rank_among(model, spec, history, test_cold,
                                                                          cold_index).items()})
        return out

    popular_valid = evaluate_retrieval(None, spec, history, split.valid)
    rows = [{"model": "most popular", **evaluate(None)}]
    type_of = feats.content_type
    type_names = {spec.content_types.encode_one(n): n for n in ("arts_product", "office_product")}
    popular_valid_within = evaluate_retrieval(None, spec, history, split.valid, item_groups=type_of)
    if args.within_type:
        rows.append({"model": "most popular within type", "protocol": "within type",
                     **evaluate_retrieval(None, spec, history, split.test, item_groups=type_of)})
    variants = {"text": ("sasrec + title text", True), "no-text": ("sasrec, id + type + categories", False)}
    for key in args.variants:
        name, use_text = variants[key]
        config = dataclasses.replace(BASE, text_features=use_text, max_train_minutes=args.minutes,
                                     budget_clock=args.clock, validate_within_type=args.within_type)
        start = time.perf_counter()
        model, valid_metrics = train_retrieval(config, spec, feats, split, text=text if use_text else None,
                                               progress=False)
        trained = {"valid_ndcg@10": valid_metrics["ndcg@10"], "train_minutes": valid_metrics["train_seconds"] / 60,
                   "epochs": valid_metrics["epochs"], "best_epoch": valid_metrics["best_epoch"],
                   "wall_minutes_incl_eval": (time.perf_counter() - start) / 60, "config": dataclasses.asdict(config)}
        rows.append({"model": name, **evaluate(model), **trained})
        vu, item_emb, vt, vx = heldout_inputs(model, spec, history, split.valid)
        if args.within_type:  # each target among its own type's items: a per-type quota's shard
            rows.append({"model": name, "protocol": "within type",
                         **evaluate_retrieval(model, spec, history, split.test, item_groups=type_of), **trained})
            within, within_grid = fit_type_prior(vu, item_emb, counts, type_of, vt, vx, popular_valid_within,
                                                 valid_groups, type_names)
            rows.append({"model": f"{name} + per-type popularity prior", "protocol": "within type",
                         **evaluate_retrieval(model, spec, history, split.test, item_offset=within,
                                              item_groups=type_of),
                         "prior": {"grid": within_grid}, **trained,
                         **served_prior_recall(model, spec, heldout_inputs(model, spec, history, split.test)[0],
                                               item_emb, within, type_of, type_names,
                                               CandidatesConfig().ann // len(type_names))})
        # The popularity prior, fitted on the validation users.
        beta, gamma, grid = fit_prior(vu, item_emb, counts, type_of, split.valid, vt, vx, popular_valid, valid_groups)
        offset = (beta * np.log1p(counts) + gamma * (type_of == OFFICE_INDEX[0])).astype(np.float32)
        rows.append({"model": f"{name} + popularity prior (beta {beta}, gamma_office {gamma})",
                     **evaluate(model, offset), "prior": {"beta": beta, "gamma_office": gamma, "grid": grid}, **trained})
        # The fresh-items source: q of 50 candidates from the content-only pool.
        tu, _, tt, tx = heldout_inputs(model, spec, history, split.test)
        fresh_emb = embed_items(model, fresh_pool, content_only=True)
        # Its query: the user embedding, or the user's content profile (`content_profile`: the mean
        # content-only embedding of the last FRESH_HISTORY items, item-to-item in content space).
        histories = latest_histories(history, spec)
        profiles = np.stack([content_profile(model, histories.get(u, np.zeros(0, np.int64)), FRESH_HISTORY)
                             for u in split.test["user_id"].to_list()])
        cold_pool = spec.items.encode(pl.Series(sorted(cold)))
        at = {int(item): j for j, item in enumerate(cold_pool)}
        cold_target = np.array([at[int(i)] for i in tt[cold_rows]])
        shelf, _ = ranks_in_chunks(profiles[cold_rows], embed_items(model, cold_pool, content_only=True), cold_target,
                                   [np.zeros(0, np.int64)] * len(cold_target))
        rows.append({"model": f"{name}, content profile (last {FRESH_HISTORY} items)", "protocol": "cold among cold",
                     **{f"cold_among_cold/{k}": v for k, v in metrics_from_ranks(shelf, (10, 50, 200)).items()}})
        for quota, query in ((0, "user"), (args.fresh_quota, "user"), (args.fresh_quota, "history")):
            lists = with_fresh(tu, item_emb, offset, fresh_pool, fresh_emb, tt, tx, quota,
                               queries=profiles if query == "history" else None)
            m = list_metrics(lists, tt, groups)
            cold_m = list_metrics(lists[cold_rows], tt[cold_rows], None)
            rows.append({"model": f"{name} + prior, 50 candidates, fresh quota {quota}"
                                  + (f", fresh query {query}" if quota else ""),
                         "hr@10": m["hr@10"], "ndcg@10": m["ndcg@10"], "hr@50": m["hr@50"],
                         **{k: v for k, v in m.items() if "/" in k},
                         "cold/hr@50": cold_m["hr@50"], "cold/hr@10": cold_m["hr@10"], "fresh_pool": len(fresh_pool)})
        logging.info("%s done: %s", name, rows[-3:])
    report = {"benchmark": "retrieval_amazon", "protocol": __doc__.strip(), "machine": platform.machine(),
              "threads": torch.get_num_threads(), "clock": args.clock, "cold_items": len(cold),
              "cold_test_targets": test_cold.height, "test_targets": split.test.height, "results": rows,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    keys = ["hr@10", "ndcg@10", "arts_product/hr@10", "arts_product/ndcg@10", "office_product/hr@10",
            "office_product/ndcg@10", "cold/hr@50", "cold/hr@200"]
    print(f"{'model':<60} " + " ".join(f"{k:>12.12}" for k in keys))
    for r in rows:
        print(f"{r['model'] + (' [within type]' if r.get('protocol') else ''):<60.60} " + " ".join(f"{r.get(k, float('nan')):12.4f}" for k in keys))
    print(f"{len(cold)} cold items, {test_cold.height} test targets that are cold items; wrote {args.out}")


if __name__ == "__main__":
    main()
