"""Offline comparison of two trained engines on the same held-out data (`feed eval compare A B`).

A and B are engine configs whose artifacts are trained (two model versions, or two configs); the
held-out data comes from a third config's prepared dataset and split (`--dataset`, default A's).
Both engines must have been trained on exactly that prepared data (same data fingerprint), so the
held-out events are unseen by both and their vocabularies agree.

Metrics, overall and per content type of the held-out item:

- retrieval, full ranking (`feedcore.metrics`): HR@K and NDCG@K of each held-out item among
  the whole catalogue, the user's history removed;
- ranker, per binary task, on the held-out events plus sampled negatives (one sample, the same
  for A and B): AUC, GAUC (per-user AUC weighted by the user's examples), and calibration: ECE over
  10 bins and the ratio of mean prediction to observed rate (1 = calibrated on average).

Uncertainty: a **paired bootstrap over users** (`evaluation.stats.bootstrap_weights`): each
resample draws users with replacement and recomputes every metric of A and of B on the same
resample, so the interval of B − A accounts for the two models being scored on the same users;
the p-value is the two-sided bootstrap p of B − A = 0.

Multiple comparisons: a comparison tests dozens of (metric, content type) pairs, so one is declared
**primary** (`CompareConfig.primary`, `feed eval compare --primary`; by default NDCG at the first
cut-off over all users) and read at alpha. Every other is exploratory and gated by it: tested only
when the primary delta is significant, then with Benjamini–Hochberg (a false discovery rate of
alpha); otherwise shown as "not tested". Equal models then get a "significant" delta somewhere in
the report about alpha of the time (the primary's rate), where each family at its own level still
gave ~2 alpha (benchmarks/stats_audit.py). "Significant" reads the corrected p, and the report
says which is which.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl

from evaluation.report import fmt, table
from evaluation.stats import benjamini_hochberg, bootstrap_p_value, bootstrap_weights, percentile_ci
from feedcore.metrics import (
    calibration_bins,
    expected_calibration_error,
    group_aucs,
    ndcg_gains,
    rank_of_target,
    weighted_auc,
)


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """How to compare: which held-out part, cut-offs, bootstrap size, negatives per positive."""

    split: str = "test"  # "valid" (history: train) or "test" (history: train + valid)
    ks: tuple[int, ...] = (10, 50)
    resamples: int = 500
    alpha: float = 0.05
    negatives_per_positive: int = 2
    calibration_bins: int = 10
    seed: int = 0
    primary: str = ""  # the metric (over all users) the comparison is decided on; "": ndcg@<first k>

    def __post_init__(self) -> None:
        if self.split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {self.split!r}")

    @property
    def primary_metric(self) -> str:
        return self.primary or f"ndcg@{self.ks[0]}"


@dataclasses.dataclass(frozen=True)
class HeldOutScores:
    """One model's scores on the held-out data, row-aligned between A and B.

    `ranks`: (U,) full-ranking rank of each held-out row (`row_user` gives its user, `row_group`
    its content type). `predictions`: task name -> (E,) probability per ranker example.
    """

    name: str
    ranks: np.ndarray
    predictions: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The held-out rows both models are scored on, and who they belong to."""

    row_user: np.ndarray  # (U,) user index of each retrieval row
    row_group: np.ndarray  # (U,) content type of each row's held-out item
    example_user: np.ndarray  # (E,) user index of each ranker example
    example_group: np.ndarray  # (E,) content type of each example's item
    labels: dict[str, np.ndarray]  # task -> (E,) 0/1 labels (NaN: not labelled for that task)
    users: int


@dataclasses.dataclass(frozen=True)
class MetricDelta:
    """One metric of A and B with the paired bootstrap interval of B − A.

    `role` is "primary" or "exploratory"; `corrected_p` is the p-value `significant` reads: the
    bootstrap p for the primary metric, Benjamini–Hochberg-adjusted over the others when the
    primary is significant. `tested` is False for an exploratory delta whose gate (the primary) was
    closed: never significant, `corrected_p` NaN.
    """

    metric: str
    group: str  # "all" or a content type
    a: float
    b: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    a_ci: tuple[float, float]
    b_ci: tuple[float, float]
    role: str = "exploratory"
    corrected_p: float = float("nan")
    tested: bool = True

    def significant(self, alpha: float = 0.05) -> bool:
        return bool(self.tested and self.corrected_p < alpha)


@dataclasses.dataclass(frozen=True)
class OfflineComparison:
    a: str
    b: str
    dataset: str
    config: CompareConfig
    rows: int
    examples: int
    deltas: tuple[MetricDelta, ...]
    calibration: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]  # model -> task -> bins


def _resampled(values: np.ndarray, units: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R,) weighted means of per-row `values` under user resample `weights` (R, users)."""
    w = weights[:, units]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ values) / w.sum(axis=1)


def compare_scores(held: HeldOut, a: HeldOutScores, b: HeldOutScores, config: CompareConfig,
                   dataset: str = "") -> OfflineComparison:
    """Every metric of A and B, overall and per content type, with paired bootstrap intervals."""
    boot = bootstrap_weights(held.users, config.resamples, np.random.default_rng(config.seed))  # (R, users)
    ones = np.ones((1, held.users))
    deltas: list[MetricDelta] = []

    def add(metric: str, group: str, values_a: np.ndarray, values_b: np.ndarray, fn) -> None:
        """fn(per-row values, weights (R', users)) -> (R',) metric values under each weighting."""
        point_a, point_b = float(fn(values_a, ones)[0]), float(fn(values_b, ones)[0])
        sa, sb = fn(values_a, boot), fn(values_b, boot)
        d = sb - sa
        low, high = percentile_ci(d, config.alpha)
        deltas.append(MetricDelta(metric, group, point_a, point_b, point_b - point_a, low, high,
                                  bootstrap_p_value(d), percentile_ci(sa, config.alpha),
                                  percentile_ci(sb, config.alpha)))

    groups = ["all"] + (sorted(set(held.row_group.tolist())) if len(set(held.row_group.tolist())) > 1 else [])
    for group in groups:
        rows = np.ones(len(held.row_user), bool) if group == "all" else held.row_group == group
        users = held.row_user[rows]
        for k in config.ks:
            add(f"hr@{k}", group, a.ranks[rows], b.ranks[rows],
                lambda r, w, u=users, k=k: _resampled((r < k).astype(np.float64), u, w))
            add(f"ndcg@{k}", group, a.ranks[rows], b.ranks[rows],
                lambda r, w, u=users, k=k: _resampled(ndcg_gains(r, k), u, w))

    calibration: dict[str, dict] = {a.name: {}, b.name: {}}
    example_groups = ["all"] + (sorted(set(held.example_group.tolist()))
                                if len(set(held.example_group.tolist())) > 1 else [])
    bins = config.calibration_bins
    for task, labels in held.labels.items():
        if task not in a.predictions or task not in b.predictions:
            continue
        labelled = ~np.isnan(labels)
        for s in (a, b):
            calibration[s.name][task] = calibration_bins(labels[labelled], s.predictions[task][labelled], bins)
        for group in example_groups:
            rows = labelled & (np.ones(len(labels), bool) if group == "all" else held.example_group == group)
            if not rows.any():
                continue
            y, u = labels[rows], held.example_user[rows]
            pa, pb = a.predictions[task][rows], b.predictions[task][rows]
            add(f"{task}/auc", group, pa, pb, lambda p, w, y=y, u=u: weighted_auc(y, p, w[:, u]))
            add(f"{task}/gauc", group, pa, pb, lambda p, w, y=y, u=u: _gauc_resampled(u, y, p, w))
            add(f"{task}/ece", group, pa, pb, lambda p, w, y=y, u=u: np.array(
                [expected_calibration_error(y, p, bins, wr[u]) for wr in w]))
            add(f"{task}/pred_over_observed", group, pa, pb,
                lambda p, w, y=y, u=u: (w[:, u] @ p) / (w[:, u] @ y))
    return OfflineComparison(a.name, b.name, dataset, config, len(held.row_user), len(held.example_user),
                             _with_roles(deltas, config), calibration)


def _with_roles(deltas: list[MetricDelta], config: CompareConfig) -> tuple[MetricDelta, ...]:
    """The primary metric keeps its p; every other is Benjamini–Hochberg-adjusted, when the
    primary is significant (the gate), and not tested otherwise."""
    primary = [i for i, d in enumerate(deltas) if d.metric == config.primary_metric and d.group == "all"]
    if not primary:
        raise ValueError(f"primary metric {config.primary_metric!r} is not among the compared metrics "
                         f"({sorted({d.metric for d in deltas})})")
    others = [i for i in range(len(deltas)) if i != primary[0]]
    gate_open = bool(deltas[primary[0]].p_value < config.alpha)
    corrected = dict.fromkeys(others, float("nan"))
    if gate_open:
        corrected.update(zip(others, benjamini_hochberg(np.array([deltas[i].p_value for i in others])), strict=True))
    corrected[primary[0]] = deltas[primary[0]].p_value
    return tuple(dataclasses.replace(d, role="primary" if i == primary[0] else "exploratory",
                                     corrected_p=float(corrected[i]), tested=i == primary[0] or gate_open)
                 for i, d in enumerate(deltas))


def _gauc_resampled(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R,) GAUC under user resamples: per-user AUCs computed once, reweighted by multiplicity × size."""
    ids, aucs, sizes = group_aucs(users, labels, scores)
    live = ~np.isnan(aucs)
    w = weights[:, ids[live]] * sizes[live]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ aucs[live]) / w.sum(axis=1)


# -- scoring real engines ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RankerHeldOut:
    """The ranker examples engines are scored on (built once, with one engine's feature spec)."""

    spec: object  # feedcore.features.FeatureSpec
    examples: object  # ranker.data.RankerExamples
    tasks: tuple[str, ...]


def ranker_held_out(engine_config, history: pl.DataFrame, heldout: pl.DataFrame, label_events: pl.DataFrame,
                    compare: CompareConfig) -> RankerHeldOut:
    """Held-out positives plus `compare.negatives_per_positive` sampled negatives each (seeded),
    scored with each user's full history, as the server would; labels from `label_events`."""
    from feedcore.artifacts import load_checkpoint
    from feedcore.features import latest_histories
    from ranker.data import make_examples

    spec = load_checkpoint(engine_config.ranker_path, "ranker").feature_spec
    tasks = engine_config.ranker.tasks
    examples = make_examples(heldout, label_events, spec, tasks, compare.negatives_per_positive,
                             np.random.default_rng(compare.seed), context=latest_histories(history, spec))
    return RankerHeldOut(spec, examples, tuple(t.name for t in tasks))


def held_out_data(dataset_config, compare: CompareConfig):
    """The prepared data's held-out part, its history, and the training inputs (`--dataset`)."""
    from feedcore.features import history_events
    from feedcore.prepare import load_training_inputs

    inputs = load_training_inputs(dataset_config)
    events = dataset_config.data.history_events
    if compare.split == "test":
        history = pl.concat([inputs.split.train, inputs.split.valid])
        heldout = inputs.split.test
    else:
        history, heldout = inputs.split.train, inputs.split.valid
    return inputs, history_events(history, events), history_events(heldout, events), heldout


def score_engine(name: str, engine_config, inputs, history: pl.DataFrame, heldout: pl.DataFrame,
                 examples: RankerHeldOut) -> HeldOutScores:
    """Load an engine's retrieval model and ranker and score the held-out rows and examples."""
    from feedcore.artifacts import load_checkpoint
    from feedcore.errors import ArtifactError
    from feedcore.features import item_features_from_dict
    from ranker.batching import RetrievalScorer
    from ranker.model import MultiTaskRanker
    from ranker.train import predict
    from retrieval.model import TwoTower
    from retrieval.train import heldout_scores

    retrieval_ckpt = load_checkpoint(engine_config.retrieval_path, "retrieval")
    ranker_ckpt = load_checkpoint(engine_config.ranker_path, "ranker")
    for path, ckpt in ((engine_config.retrieval_path, retrieval_ckpt), (engine_config.ranker_path, ranker_ckpt)):
        if ckpt.data_fingerprint != inputs.data_fingerprint:
            raise ArtifactError(f"{name}: {path} was trained on other data ({ckpt.data_fingerprint}) than the "
                                f"held-out dataset ({inputs.data_fingerprint}); train it on that prepared data")
    retrieval = TwoTower.from_checkpoint(retrieval_ckpt).eval()
    spec = retrieval_ckpt.feature_spec
    # Full ranking, exactly as `retrieval.train.evaluate_retrieval`, keeping each row's rank.
    ranks = rank_of_target(*heldout_scores(retrieval, spec, history, heldout))

    ranker = MultiTaskRanker.from_checkpoint(ranker_ckpt).eval()
    if ranker_ckpt.feature_spec.items.values != examples.spec.items.values:
        raise ArtifactError(f"{name}: {engine_config.ranker_path} has another item vocabulary than the held-out "
                            "dataset's; both engines must be trained on one prepared dataset")
    item_feats = item_features_from_dict(ranker_ckpt.extras["item_features"])
    scorer = (RetrievalScorer.build(retrieval, spec, ranker_ckpt.feature_spec)
              if ranker.args.features.retrieval_score else None)
    preds = predict(ranker, examples.examples, item_feats, retrieval=scorer)
    return HeldOutScores(name, ranks, {t: preds[:, i].astype(np.float64) for i, t in enumerate(ranker.task_names)})


def compare_engines(config_a, config_b, dataset_config, compare: CompareConfig,
                    names: tuple[str, str] = ("A", "B")) -> OfflineComparison:
    """`feed eval compare`: score both engines on `dataset_config`'s held-out data and compare."""
    inputs, history, heldout, label_events = held_out_data(dataset_config, compare)
    bundle = ranker_held_out(config_a, history, heldout, label_events, compare)
    spec, examples, tasks = bundle.spec, bundle.examples, config_a.ranker.tasks
    a = score_engine(names[0], config_a, inputs, history, heldout, bundle)
    b = score_engine(names[1], config_b, inputs, history, heldout, bundle)
    user_ids = sorted(set(heldout["user_id"].to_list()))
    index = {u: i for i, u in enumerate(user_ids)}
    item_types = dict(inputs.items.select("item_id", "content_type").iter_rows())
    example_items = np.array(("",) + spec.items.values, dtype=object)[examples.item]  # index 0: unknown
    example_users = np.array(("",) + spec.users.values, dtype=object)[examples.user]
    held = HeldOut(
        row_user=np.array([index[u] for u in heldout["user_id"].to_list()], np.int64),
        row_group=np.array([item_types.get(i, "") for i in heldout["item_id"].to_list()], dtype=object),
        example_user=np.array([index.get(u, 0) for u in example_users], np.int64),
        example_group=np.array([item_types.get(i, "") for i in example_items], dtype=object),
        labels={t.name: examples.labels[:, j].astype(np.float64) for j, t in enumerate(tasks) if t.kind == "binary"},
        users=len(user_ids),
    )
    return compare_scores(held, a, b, compare, dataset=str(dataset_config.prepared_dir))


# -- report -------------------------------------------------------------------------------------------
def compare_figures(result: OfflineComparison) -> dict:
    """Metric values of A and B with bootstrap CIs, the B − A forest plot, calibration curves."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    overall = [d for d in result.deltas if d.group == "all"]
    fig = Figure(figsize=(max(6, 0.8 * len(overall)), 3.5))
    ax = fig.subplots()
    x = np.arange(len(overall))
    for offset, name, values, cis in ((-0.2, result.a, [d.a for d in overall], [d.a_ci for d in overall]),
                                      (0.2, result.b, [d.b for d in overall], [d.b_ci for d in overall])):
        err = np.array([[v - lo, hi - v] for v, (lo, hi) in zip(values, cis, strict=True)]).T
        ax.bar(x + offset, values, 0.4, yerr=np.clip(err, 0, None), capsize=3, label=name)
    ax.set_xticks(x, [d.metric for d in overall], rotation=45, ha="right", fontsize=8)
    ax.legend()
    ax.set_title(f"{result.a} vs {result.b}: all held-out users (95% bootstrap CI)", fontsize=10)
    fig.tight_layout()
    figures = {"metrics": fig}

    fig = Figure(figsize=(7, 0.3 * len(result.deltas) + 1.2))
    ax = fig.subplots()
    for y, d in enumerate(result.deltas):
        color = "tab:gray" if not d.significant(result.config.alpha) else ("tab:green" if d.delta > 0 else "tab:red")
        ax.errorbar(d.delta, y, xerr=[[max(d.delta - d.ci_low, 0)], [max(d.ci_high - d.delta, 0)]], fmt="o",
                    color=color, capsize=2, ms=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(result.deltas)), [f"{d.metric} [{d.group}]{' PRIMARY' if d.role == 'primary' else ''}"
                                              for d in result.deltas], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel(f"{result.b} − {result.a} (paired bootstrap over users, 95% CI; colour: significant after "
                  "correction)")
    fig.tight_layout()
    figures["deltas"] = fig

    tasks = sorted(result.calibration.get(result.a, {}))
    if tasks:
        fig = Figure(figsize=(3.5 * len(tasks), 3.3))
        axes = fig.subplots(1, len(tasks), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            for name in (result.a, result.b):
                weight, pred, observed = result.calibration[name][task]
                live = weight > 0
                ax.plot(pred[live], observed[live], "o-", label=name, ms=3)
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            ax.set_title(f"{task}: reliability", fontsize=9)
            ax.set_xlabel("mean prediction")
            ax.set_ylabel("observed rate")
            ax.legend(fontsize=7)
        fig.tight_layout()
        figures["calibration"] = fig
    return figures


def compare_markdown(result: OfflineComparison, figures: tuple[str, ...] = ("metrics", "deltas", "calibration")
                     ) -> str:
    """The comparison as markdown (figures referenced as ``<name>.png`` beside it)."""
    c = result.config
    out = [f"# Offline comparison: {result.a} vs {result.b}\n",
           f"Held-out data: `{result.dataset}`, split `{c.split}`: {result.rows} held-out rows (full ranking "
           f"against the whole catalogue), {result.examples} ranker examples ({c.negatives_per_positive} sampled "
           f"negatives per positive, one sample shared by both). Intervals: paired bootstrap over users, "
           f"{c.resamples} resamples, {100 * (1 - c.alpha):.0f}%.\n",
           f"Primary metric: `{c.primary_metric}` over all users, read at alpha = {c.alpha}. Every other row is "
           f"exploratory and gated by it: tested only when the primary delta is significant, then "
           f"Benjamini-Hochberg-adjusted over the {len(result.deltas) - 1} others (a false discovery rate of "
           f"{c.alpha}), so the whole report claims a difference that is not there at most about alpha of the "
           "time; \"significant\" reads the corrected p"
           + ("" if any(d.tested for d in result.deltas if d.role != "primary") else
              " (**the primary is not significant: the exploratory rows are not tested**)") + ".\n",
           table(["metric", "group", "role", result.a, result.b, f"{result.b} − {result.a}", "CI", "p", "corrected p",
                  "significant"],
                 [[d.metric, d.group, f"**{d.role}**" if d.role == "primary" else d.role, fmt(d.a), fmt(d.b),
                   fmt(d.delta), f"[{fmt(d.ci_low)}, {fmt(d.ci_high)}]", fmt(d.p_value), fmt(d.corrected_p) if d.tested else "not tested",
                   "**yes**" if d.significant(c.alpha) else "no" if d.tested else "not tested"]
                  for d in result.deltas]),
           "\nECE: expected calibration error over equal-width bins (lower is better); pred_over_observed: mean "
           "prediction / observed rate on held-out examples with sampled negatives (1 = calibrated on average).\n",
           "\n## Figures\n"]
    out += [f"![{name}]({name}.png)\n" for name in figures if name != "calibration" or result.calibration.get(result.a)]
    return "\n".join(out)
