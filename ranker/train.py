"""Training the ranker: examples → KJT batches → DistributedModelParallel with fused embeddings.

The embedding tables are sharded by TorchRec's planner and updated by fbgemm's fused
RowWiseAdagrad inside the backward pass (`apply_optimizer_in_backward`); the dense part uses Adam.
In one process this is a world of size 1; under `torchrun` the same code shards across processes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardedTensor, ShardingPlan, ShardingType
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import KeyedOptimizerWrapper
from tqdm import tqdm

from feedcore.artifacts import Checkpoint, load_checkpoint, save_model
from feedcore.config import EngineConfig, RankerConfig, resolve_device
from feedcore.distributed import process_group
from feedcore.errors import ArtifactError, DataError
from feedcore.features import FeatureSpec, ItemFeatures, history_events, latest_histories, pad_histories
from feedcore.metrics import auc, expected_calibration_error, gauc, grouped_ndcg, log_loss
from feedcore.prepare import TrainingInputs, load_training_inputs
from feedcore.splits import Split
from feedcore.text import TEXT_DIM, item_text_embeddings
from ranker.batching import RankerBatch, RetrievalScorer, ranker_inputs
from ranker.data import RankerExamples, examples_from_log, make_examples
from ranker.model import (
    CANDIDATE_SOURCES,
    NUM_CONTEXT_BUCKETS,
    MultiTaskRanker,
    MultiTaskRankerTrain,
    RankerArgs,
    RankerFeatures,
)
from retrieval.model import TwoTower

logger = logging.getLogger(__name__)


def ranker_features(config: RankerConfig) -> RankerFeatures:
    """The optional inputs `config` turns on."""
    return RankerFeatures(recency=config.recency, retrieval_score=config.retrieval_score,
                          text_dim=TEXT_DIM if config.text_features else 0, text_projection=config.text_projection,
                          context=config.context, history_pooling=config.history_pooling)


def model_args(config: RankerConfig, spec: FeatureSpec, sources: tuple[str, ...] = ("unknown",)) -> RankerArgs:
    """The model's args for `spec`'s vocabularies; `sources`: the candidate sources its training
    examples carry (any other is served as unknown)."""
    return RankerArgs(
        num_users=len(spec.users),
        num_items=len(spec.items),
        num_content_types=len(spec.content_types),
        num_categories=max(2, len(spec.categories)),
        embedding_dim=config.embedding_dim,
        dense_hidden=config.dense_hidden,
        cross_layers=config.cross_layers,
        over_hidden=config.over_hidden,
        tasks=config.tasks,
        experts=config.experts,
        num_shared_experts=config.num_shared_experts,
        num_task_experts=config.num_task_experts,
        expert_hidden=config.expert_hidden,
        features=ranker_features(config),
        sources=sources,
    )


def example_inputs(rows: RankerExamples, item_features: ItemFeatures, features: RankerFeatures,
                   retrieval: RetrievalScorer | None, labels: bool = True, id_dropout: float = 0.0,
                   rng: np.random.Generator | None = None, reader: RankerArgs | None = None) -> RankerBatch:
    """`ranker_inputs` of training or validation examples, at each example's event time.

    `reader`: the model that will read these rows, when it was trained on other examples: a source
    it was not trained on is fed as unknown, as serving feeds it (`RankerArgs.source_ids`).

    `id_dropout`: the share of rows whose item id is fed as unknown (their content kept: the path of
    new items and posts), and, drawn apart, of rows whose user is fed as unknown (a new user)."""
    user, unknown_items = rows.user, None
    if id_dropout > 0:
        user = np.where(rng.random(len(rows)) < id_dropout, 0, rows.user)
        unknown_items = rng.random(len(rows)) < id_dropout
    source = rows.source
    if reader is not None and source is not None:
        source = reader.source_ids([CANDIDATE_SOURCES[i] for i in source])
    return ranker_inputs(user, rows.item, rows.history, item_features, rows.labels if labels else None,
                         source=source, features=features, event_time=rows.time, retrieval=retrieval,
                         unknown_items=unknown_items)


def train_ranker(
    config: RankerConfig,
    spec: FeatureSpec,
    item_features: ItemFeatures,
    split: Split,
    history_event_types: tuple[str, ...] = (),
    *,
    progress: bool = True,
    log: pl.DataFrame | None = None,
    retrieval: RetrievalScorer | None = None,
) -> tuple[MultiTaskRanker | None, dict[str, float]]:
    """Train on `split.train` (and on served traffic from `log`, an event log's events, when
    given); return the unsharded inference model and validation metrics.

    `item_features` must carry text when `config.text_features`, and `retrieval` is required
    with `config.retrieval_score` (`train_ranker_job` provides both).

    Under torchrun every rank trains its shard; the gathered model and the metrics are returned on
    rank 0 only (other ranks get None).
    """
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    train = make_examples(history_events(split.train, history_event_types), split.train, spec, config.tasks,
                          config.negatives_per_positive, rng, popularity=np.expm1(item_features.popularity),
                          popular_share=config.popular_negative_share)
    if log is not None:
        histories = latest_histories(history_events(split.train, history_event_types), spec)
        served = examples_from_log(log, spec, config.tasks, histories)
        logger.info("ranker: %d examples from the event log (%d with an engagement)", len(served),
                    int(np.nansum(served.labels, axis=1).astype(bool).sum()))
        train = RankerExamples.concat([train, served])
    trained_sources = np.unique(train.source) if train.source is not None else np.zeros(1, np.int64)
    args = model_args(config, spec, tuple(CANDIDATE_SOURCES[i] for i in trained_sources))
    if args.features.retrieval_score and retrieval is None:
        raise ValueError("ranker retrieval_score = true needs the retrieval model's scorer")
    probe_rows, probe = parity_probe(split, spec, history_event_types, args, item_features, retrieval)

    with process_group(device) as (rank, world_size):
        dmp, dense_optimizer = shard_for_training(MultiTaskRanker(args, device=torch.device("meta")), config,
                                                  device, world_size)
        initial = unsharded_state_dict(dmp)
        # Each rank trains on its own slice of every shuffled epoch.
        n_batches = max(1, len(train) // (config.batch_size * world_size))
        for epoch in range(config.epochs):
            dmp.train()
            order = rng.permutation(len(train))[rank::world_size]
            total = 0.0
            bar = tqdm(range(n_batches), desc=f"ranker epoch {epoch + 1}/{config.epochs}",
                       disable=None if progress and rank == 0 else True)
            for b in bar:
                rows = train.take(order[b * config.batch_size : (b + 1) * config.batch_size])
                batch = example_inputs(rows, item_features, args.features, retrieval, id_dropout=config.id_dropout,
                                       rng=rng).to(device)
                total += train_step(dmp, dense_optimizer, batch)
                bar.set_postfix(loss=f"{total / (b + 1):.4f}")
            logger.info("ranker epoch %d: loss %.4f", epoch + 1, total / n_batches)
        dmp.eval()
        with torch.no_grad():  # the trained module's own predictions, for the checkpoint's parity check
            trained = dmp.module.model(probe.dense.to(device), probe.sparse.to(torch.device(device)))
        state = unsharded_state_dict(dmp)
        plan = describe_plan(dmp.plan)

    if rank != 0:
        return None, {}
    inference = MultiTaskRanker(args)
    inference.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    metrics = evaluate_ranker(inference, spec, item_features, split, history_event_types, config, rng,
                              retrieval=retrieval)
    metrics.update({f"untrained_rows/{f}": share for f, share in
                    untrained_row_shares(initial, state, served_rows(args, item_features)).items()})
    probe_rows["predictions"] = {t: p.cpu().tolist() for t, p in trained.items()}
    metrics["checkpoint_parity"] = check_parity(inference, probe, probe_rows["predictions"])
    return inference, {**metrics, "sharding": plan, "parity_probe": probe_rows}


def parity_probe(split: Split, spec: FeatureSpec, history_event_types: tuple[str, ...], args: RankerArgs,
                 item_features: ItemFeatures, retrieval: RetrievalScorer | None, users: int = 8,
                 items: int = 8) -> tuple[dict, RankerBatch]:
    """A small batch as the server builds it: a few users with their latest training histories, a
    few catalogue items each, found by every candidate source, at the last training event's time,
    with the item features a checkpoint saves. The trained module's predictions on it are saved
    with the checkpoint, so the served model can be checked against them (`check_parity`)."""
    rng = np.random.default_rng(0)
    histories = latest_histories(history_events(split.train, history_event_types), spec)
    user_ids = sorted(histories)[:users]
    ts = split.train["ts"].max() if "ts" in split.train.columns and split.train.height else None
    time_ms = int(ts) * 1000 if ts is not None else 0  # events' ts: unix seconds; a request's: milliseconds
    rows = [{"user_id": u, "history": [spec.items.decode(int(i)) for i in histories[u]],
             "items": [spec.items.decode(int(i)) for i in rng.integers(1, len(spec.items), items)],
             "sources": [CANDIDATE_SOURCES[(i + j) % len(CANDIDATE_SOURCES)] for j in range(items)]}
            for i, u in enumerate(user_ids)]
    batch = probe_inputs(rows, time_ms, spec, args, item_features, retrieval)
    return {"time_ms": time_ms, "rows": rows}, batch


def probe_inputs(rows: list[dict], time_ms: int, spec: FeatureSpec, args: RankerArgs, item_features: ItemFeatures,
                 retrieval: RetrievalScorer | None) -> RankerBatch:
    """The model inputs of a parity probe's rows, by `ranker_inputs` with the saved item features."""
    user = np.concatenate([np.full(len(r["items"]), spec.users.encode_one(r["user_id"]), np.int64) for r in rows])
    item = np.concatenate([spec.items.encode(r["items"]) for r in rows])
    history = np.concatenate([np.repeat(pad_histories([spec.items.encode(r["history"])], spec.max_history),
                                        len(r["items"]), axis=0) for r in rows])
    source = np.concatenate([args.source_ids(r["sources"]) for r in rows])
    served = dataclasses.replace(item_features, event_offsets=None, event_times=None)
    return ranker_inputs(user, item, history, served, source=source, features=args.features,
                         event_time=np.full(len(item), time_ms / 1000.0), retrieval=retrieval)


def check_parity(model: MultiTaskRanker, probe: RankerBatch, expected: dict[str, list[float]],
                 tolerance: float = 1e-5) -> float:
    """The largest difference between `model`'s predictions on `probe` and `expected` (the trained
    module's); raises when it passes `tolerance`: a checkpoint must predict what was trained."""
    with torch.no_grad():
        preds = model.eval()(probe.dense, probe.sparse)
    worst = max((float(np.abs(preds[t].numpy() - np.asarray(v, np.float32)).max(initial=0.0))
                 for t, v in expected.items()), default=0.0)
    if worst > tolerance:
        raise ArtifactError(f"the gathered ranker predicts up to {worst:.2e} away from the trained module on the "
                            f"parity probe (tolerance {tolerance:g}): the checkpoint is not the model that trained")
    return worst


def served_rows(args: RankerArgs, item_features: ItemFeatures) -> dict[str, tuple[str, np.ndarray]]:
    """Per categorical feature the model reads: its table and the rows serving can feed it."""
    catalogue = np.arange(1, len(item_features.content_type))
    _, categories = item_features.categories_of(catalogue)
    rows = {
        "user_id": ("t_user", np.arange(args.num_users)),  # row 0: a user unseen in training
        "item_id": ("t_item", np.arange(args.num_items)),  # row 0: a new item or a generated post
        "content_type": ("t_content_type", np.unique(item_features.content_type[catalogue])),
        "category": ("t_category", np.unique(categories)),
        "source": ("t_source", np.unique(args.source_ids(CANDIDATE_SOURCES))),
    }
    if args.features.context:
        rows["context"] = ("t_context", np.arange(1, NUM_CONTEXT_BUCKETS))  # a request always has a time
    return rows


def untrained_row_shares(initial: dict[str, torch.Tensor], trained: dict[str, torch.Tensor],
                         rows: dict[str, tuple[str, np.ndarray]]) -> dict[str, float]:
    """Per feature, the share of the rows serving can feed whose embedding no training step changed."""
    out = {}
    for feature, (table, served) in rows.items():
        key = next(k for k in trained if k.endswith(f".{table}.weight"))
        changed = (initial[key] != trained[key]).any(dim=1).numpy()
        out[feature] = float((~changed[served]).mean()) if len(served) else 0.0
        if out[feature] > 0:
            logger.info("ranker: %.1f%% of the %s rows serving can feed got no training update",
                        100 * out[feature], feature)
    return out


def train_step(dmp: DistributedModelParallel, dense_optimizer: torch.optim.Optimizer, batch: RankerBatch) -> float:
    """One optimisation step on `batch`: the dense part by `dense_optimizer`, the embedding tables
    by their fused optimizer inside the backward pass. Returns the loss."""
    loss, _, _ = dmp(batch.dense, batch.sparse, batch.labels)
    dense_optimizer.zero_grad()
    loss.backward()
    dense_optimizer.step()
    return loss.item()


def fused_sharding_constraints(args: RankerArgs, device: str) -> dict[str, ParameterConstraints]:
    """Every table on fbgemm's fused kernel, so its optimizer runs inside the backward pass.

    Left alone, the planner may put small tables in data-parallel mode on the dense kernel, where
    the fused optimizer does not apply. Row-wise sharding needs a hand-built plan on CPU.
    """
    types = [ShardingType.TABLE_WISE, ShardingType.COLUMN_WISE, ShardingType.TABLE_COLUMN_WISE]
    if device.startswith("cuda"):
        types.append(ShardingType.ROW_WISE)
    return {
        table.name: ParameterConstraints(sharding_types=[t.value for t in types],
                                         compute_kernels=[EmbeddingComputeKernel.FUSED.value])
        for table in args.tables()
    }


_TABLE_MODULES = ("embedding_bag_collection", "embedding_collection")  # SparseArch's TorchRec modules


def shard_for_training(
    model: MultiTaskRanker, config: RankerConfig, device: str, world_size: int
) -> tuple[DistributedModelParallel, KeyedOptimizerWrapper]:
    """Wrap `model` (built on the meta device) in DMP: tables planned onto fused kernels with
    RowWiseAdagrad applied in backward; Adam for the dense part. Call inside `process_group`."""
    tables = [p for n, p in model.sparse_arch.named_parameters() if n.startswith(_TABLE_MODULES)]
    apply_optimizer_in_backward(RowWiseAdagrad, tables, {"lr": config.sparse_learning_rate})
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world_size, compute_device="cuda" if device.startswith("cuda") else "cpu"),
        constraints=fused_sharding_constraints(model.args, device),
    )
    train_module = MultiTaskRankerTrain(model)
    plan = planner.collective_plan(train_module, pg=dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(train_module, device=torch.device(device), plan=plan)
    dense_params = {n: p for n, p in dmp.named_parameters() if not any(m in n for m in _TABLE_MODULES)}
    dense_optimizer = KeyedOptimizerWrapper(
        dense_params, lambda params: torch.optim.Adam(params, lr=config.dense_learning_rate)
    )
    return dmp, dense_optimizer


def describe_plan(plan: ShardingPlan) -> dict[str, str]:
    """table → "sharding_type/compute_kernel@ranks", recorded with the checkpoint."""
    return {
        table: f"{option.sharding_type}/{option.compute_kernel}@{','.join(map(str, option.ranks or []))}"
        for module_plan in plan.plan.values()
        for table, option in module_plan.items()
    }


def unsharded_state_dict(dmp: DistributedModelParallel) -> dict[str, torch.Tensor]:
    """Plain tensors for every parameter; sharded tables are gathered (all ranks must call this)."""
    out = {}
    for name, value in dmp.state_dict().items():
        if isinstance(value, ShardedTensor):
            # Gathered on the shards' device (NCCL moves CUDA tensors only), then brought to the CPU.
            device = value.local_shards()[0].tensor.device if value.local_shards() else dmp.device
            full = torch.empty(value.size(), dtype=value.dtype, device=device) if dist.get_rank() == 0 else None
            value.gather(dst=0, out=full)
            value = full
        out[name] = value.cpu() if value is not None else None
    return out


@torch.no_grad()
def predict(model: MultiTaskRanker, examples: RankerExamples, item_features: ItemFeatures,
            batch_size: int = 4096, retrieval: RetrievalScorer | None = None, id_free: bool = False) -> np.ndarray:
    """(n, T) predictions of `model` on `examples`; `id_free`: every item fed as unknown (id 0)
    with its own content, as new items and generated posts are served."""
    model.eval()
    out = []
    for i in range(0, len(examples), batch_size):
        rows = examples.take(np.arange(i, min(i + batch_size, len(examples))))
        batch = ranker_inputs(rows.user, rows.item, rows.history, item_features, source=rows.source,
                              features=model.args.features, event_time=rows.time, retrieval=retrieval,
                              unknown_items=np.full(len(rows), id_free))
        preds = model(batch.dense, batch.sparse)
        out.append(torch.stack([preds[t] for t in model.task_names], dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.task_names)), np.float32)


def evaluate_ranker(
    model: MultiTaskRanker,
    spec: FeatureSpec,
    item_features: ItemFeatures,
    split: Split,
    history_event_types: tuple[str, ...],
    config: RankerConfig,
    rng: np.random.Generator,
    retrieval: RetrievalScorer | None = None,
) -> dict[str, float]:
    """Per binary task on validation events (plus sampled negatives), scored with the user's full
    training history, as the server would: AUC, GAUC, NDCG@10 of each user's examples, log loss and
    expected calibration error (the value model adds these probabilities up), and AUC and NDCG@10
    through the id-free path (every item id unknown, its content kept): how new items and posts rank."""
    if split.valid.height == 0:
        return {}
    context = latest_histories(history_events(split.train, history_event_types), spec)
    valid = make_examples(history_events(split.valid, history_event_types), split.valid, spec, config.tasks,
                          config.negatives_per_positive, rng, context=context)
    # The item features a checkpoint saves (totals, not as of each event: `ItemFeatures`), so the
    # figures are those of the model as served; a leave-one-out validation event can predate
    # other users' training events.
    served = dataclasses.replace(item_features, event_offsets=None, event_times=None)
    preds = predict(model, valid, served, retrieval=retrieval)
    id_free = predict(model, valid, served, retrieval=retrieval, id_free=True)
    metrics: dict[str, float] = {}
    for t, task in enumerate(config.tasks):
        if task.kind != "binary":
            continue
        present = ~np.isnan(valid.labels[:, t])
        labels, users = valid.labels[present, t], valid.user[present]
        metrics[f"{task.name}/auc"] = auc(labels, preds[present, t])
        metrics[f"{task.name}/gauc"] = float(gauc(users, labels, preds[present, t]))
        metrics[f"{task.name}/ndcg@10"] = grouped_ndcg(users, labels, preds[present, t], 10)
        metrics[f"{task.name}/log_loss"] = log_loss(labels, preds[present, t])
        metrics[f"{task.name}/ece"] = expected_calibration_error(labels, preds[present, t])
        metrics[f"{task.name}/auc_id_free"] = auc(labels, id_free[present, t])
        metrics[f"{task.name}/ndcg@10_id_free"] = grouped_ndcg(users, labels, id_free[present, t], 10)
    metrics["examples"] = float(len(valid))
    return metrics


def train_ranker_job(
    config: EngineConfig, *, progress: bool = True, from_logs: str | Path | Sequence[str | Path] | None = None
) -> tuple[Checkpoint | None, dict[str, float]]:
    """`feed train ranker [--from-logs DIR [DIR ...]]`: prepared data (plus the served traffic
    logged in each DIR, `serving.event_log`: a server's log, or the directory of a `feed serve
    --processes N`, which holds one per process) → trained multi-task ranker checkpoint (with its
    features)."""
    inputs = load_training_inputs(config)
    log = None
    if from_logs is not None:
        from feedcore.events import read_event_log

        directories = [from_logs] if isinstance(from_logs, str | Path) else list(from_logs)
        for directory in directories:
            if not Path(directory).is_dir():
                raise DataError(directory, "no event log here", expected="a serving event log directory "
                                "(serving.event_log_dir, default <artifacts_dir>/event_log)")
        resolved = [Path(d).resolve() for d in directories]
        for i, a in enumerate(resolved):
            for b in resolved[:i]:
                if a.is_relative_to(b) or b.is_relative_to(a):  # equal, or one inside the other
                    raise DataError(str(a), f"its events would be read twice, with those of {b}",
                                    expected="each event log once (a `feed serve --processes` directory reads all of "
                                             "its process-<i> logs)")
        log = pl.concat([read_event_log(d) for d in directories], how="vertical_relaxed")
        logger.info("ranker: read %d logged events from %s", log.height, ", ".join(map(str, directories)))
    inputs = with_text(inputs, config) if config.ranker.text_features else inputs
    retrieval, retrieval_version = (load_retrieval_scorer(config, inputs) if config.ranker.retrieval_score
                                    else (None, None))
    model, metrics = train_ranker(config.ranker, inputs.spec, inputs.item_features, inputs.split,
                                  config.data.history_events, progress=progress, log=log, retrieval=retrieval)
    if log is not None and model is not None:
        metrics["log_events"] = float(log.height)
    if model is None:  # not rank 0: rank 0 saves the gathered model
        return None, {}
    if retrieval_version is not None:  # serving refuses a ranker trained on another retrieval model's scores
        metrics["retrieval_version"] = retrieval_version
    # The item features saved are the ones trained on (with their text, when on), so serving reads the
    # same; the parity probe lets a loader check that it predicts what the trained module did.
    probe = metrics.pop("parity_probe")
    ckpt = save_model(config.ranker_path, kind="ranker", model=model, config=config.ranker, inputs=inputs,
                      history_events=config.data.history_events, metrics=metrics, extras={"parity_probe": probe})
    return ckpt, metrics


def with_text(inputs: TrainingInputs, config: EngineConfig) -> TrainingInputs:
    """`inputs` whose item features carry the title embeddings, from the per-dataset cache that
    retrieval training shares (computed once if missing)."""
    text = item_text_embeddings(inputs.items, inputs.spec, config.title_embeddings_path(inputs.data_fingerprint))
    feats = dataclasses.replace(inputs.item_features, text=text.astype(np.float16))
    return dataclasses.replace(inputs, item_features=feats)


def load_retrieval_scorer(config: EngineConfig, inputs: TrainingInputs) -> tuple[RetrievalScorer, str]:
    """The retrieval model's scorer for `[ranker] retrieval_score = true`, and its version."""
    try:
        ckpt = load_checkpoint(config.retrieval_path, "retrieval")
    except ArtifactError as e:
        raise ArtifactError(f"[ranker] retrieval_score = true reads the retrieval model's scores: {e}") from e
    if ckpt.data_fingerprint != inputs.data_fingerprint:
        raise ArtifactError(f"{config.retrieval_path} was trained on other data than the ranker's; run "
                            "`feed train retrieval` first")
    return RetrievalScorer.build(TwoTower.from_checkpoint(ckpt), ckpt.feature_spec, inputs.spec), ckpt.version
