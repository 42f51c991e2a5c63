"""The unified multi-task ranker: SparseArch → DenseArch → InteractionArch (DCN-v2) → experts → task towers.

Multi-task part (`RankerArgs.experts`): ``mmoe`` (Ma et al., KDD 2018: shared experts, one softmax
gate per task), ``ple`` (one Customized Gate Control layer of Tang et al., RecSys 2020: shared
experts plus experts owned by each task, each task's gate mixing the shared ones and its own) or
``shared`` (one shared bottom, no experts). Each task has its own tower and head.

Optional inputs (`RankerFeatures`, each behind a ``[ranker]`` flag): the item's age and the
retrieval model's user·item score as dense features, the title's text embedding projected by the
dense arch, hour-of-day / day-of-week as a sparse ``context`` feature, and the history pooled by
target attention against the candidate (DIN, Zhou et al., KDD 2018) instead of as a mean bag.

Dimension letters: B batch, F sparse features, D embedding dim, Dd dense features, T tasks, E experts,
H expert width, L history length, X text dim.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
    PoolingType,
)
from torchrec.inference.modules import quantize_embeddings
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.mlp import MLP
from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection

from feedcore.config import TaskConfig

# Sparse features in KJT key order; two share the item table (the candidate and the history bag).
SPARSE_FEATURES = ("user_id", "item_id", "history", "content_type", "category", "source")
# The candidate source that proposed the item (`retrieval.candidates`), id = position here. Training
# examples built from datasets have no source ("unknown"); examples rebuilt from served logs carry
# the logged one, so the ranker can learn how much each source's candidates are worth. A model reads
# only the sources its training examples carried (`RankerArgs.sources`): any other is fed as
# unknown, never through a row no training step touched.
CANDIDATE_SOURCES = ("unknown", "ann", "social", "follow", "popular", "generated", "fresh")
SOURCE_IDS = {name: i for i, name in enumerate(CANDIDATE_SOURCES)}
DENSE_FEATURES = ("item_popularity", "user_activity")
# `feedcore.features.time_context` buckets: 0 unknown, 1-24 hour of day, 25-31 day of week.
NUM_CONTEXT_BUCKETS = 32
HISTORY_POOLINGS = ("bag", "target_attention")


@dataclasses.dataclass(frozen=True)
class RankerFeatures:
    """The optional inputs a model reads; saved with its args, so serving builds the same ones.

    recency: dense log1p(item age in days) at the event / request time, and an "age unknown" flag.
    retrieval_score: dense dot product of the retrieval model's user and item embeddings.
    text_dim: X > 0 appends the item's (X,) title embedding to the dense input, projected to
        `text_projection` dims by the dense arch; 0 = no text.
    context: sparse hour-of-day and day-of-week buckets of the event / request time.
    history_pooling: ``bag`` (mean of the history's item embeddings) or ``target_attention``.
    """

    recency: bool = False
    retrieval_score: bool = False
    text_dim: int = 0
    text_projection: int = 8
    context: bool = False
    history_pooling: str = "bag"

    def __post_init__(self) -> None:
        if self.history_pooling not in HISTORY_POOLINGS:
            raise ValueError(f"history_pooling={self.history_pooling!r}: expected one of {HISTORY_POOLINGS}")

    @property
    def num_extra_dense(self) -> int:
        """Scalar dense columns these features add after the base ones (text excluded)."""
        return 2 * self.recency + self.retrieval_score

    @property
    def sequence_features(self) -> tuple[str, ...]:
        """Features looked up unpooled (an EmbeddingCollection): the candidate and the history
        under target attention, none otherwise."""
        return ("item_id", "history") if self.history_pooling == "target_attention" else ()

    @property
    def pooled_features(self) -> tuple[str, ...]:
        """The features of the model's interaction input, one (B, D) vector each, in order."""
        return SPARSE_FEATURES + (("context",) if self.context else ())

    @property
    def kjt_keys(self) -> tuple[str, ...]:
        """KeyedJaggedTensor key order: pooled (EmbeddingBagCollection) keys, then sequence keys."""
        return tuple(f for f in self.pooled_features if f not in self.sequence_features) + self.sequence_features


@dataclasses.dataclass(frozen=True)
class RankerArgs:
    """Sizes and tasks that rebuild the model from a checkpoint."""

    num_users: int
    num_items: int
    num_content_types: int
    num_categories: int
    embedding_dim: int
    dense_hidden: tuple[int, ...]
    cross_layers: int
    over_hidden: tuple[int, ...]
    tasks: tuple[TaskConfig, ...]
    experts: str = "mmoe"  # mmoe | ple | shared
    num_shared_experts: int = 4
    num_task_experts: int = 1  # per task, ple only
    expert_hidden: int = 64
    num_dense: int = len(DENSE_FEATURES)  # DENSE_FEATURES plus any extra dense inputs a job adds
    features: RankerFeatures = RankerFeatures()
    sources: tuple[str, ...] = ("unknown",)  # the candidate sources training examples carried

    def source_ids(self, names: Sequence[str]) -> np.ndarray:
        """(B,) the source feature of candidates found by `names`: a source this model was trained
        on keeps its id (`SOURCE_IDS`), any other is read as unknown (0), a row that was trained."""
        return np.array([SOURCE_IDS[n] if n in self.sources else 0 for n in names], np.int64)

    @property
    def num_scalar_dense(self) -> int:
        """Dense columns before the text embedding: base, job extras, then optional features."""
        return self.num_dense + self.features.num_extra_dense

    def tables(self) -> list[EmbeddingBagConfig | EmbeddingConfig]:
        """The embedding tables; under target attention the item table is unpooled (EmbeddingConfig)."""
        d = self.embedding_dim
        if self.features.sequence_features:
            item = EmbeddingConfig(name="t_item", embedding_dim=d, num_embeddings=self.num_items,
                                   feature_names=list(self.features.sequence_features))
        else:
            item = EmbeddingBagConfig(name="t_item", embedding_dim=d, num_embeddings=self.num_items,
                                      feature_names=["item_id", "history"], pooling=PoolingType.MEAN)
        context = ([EmbeddingBagConfig(name="t_context", embedding_dim=d, num_embeddings=NUM_CONTEXT_BUCKETS,
                                       feature_names=["context"], pooling=PoolingType.MEAN)]
                   if self.features.context else [])
        return [
            EmbeddingBagConfig(name="t_user", embedding_dim=d, num_embeddings=self.num_users,
                               feature_names=["user_id"]),
            item,
            EmbeddingBagConfig(name="t_content_type", embedding_dim=d, num_embeddings=self.num_content_types,
                               feature_names=["content_type"]),
            EmbeddingBagConfig(name="t_category", embedding_dim=d, num_embeddings=self.num_categories,
                               feature_names=["category"], pooling=PoolingType.MEAN),
            EmbeddingBagConfig(name="t_source", embedding_dim=d, num_embeddings=len(CANDIDATE_SOURCES),
                               feature_names=["source"]),
            *context,
        ]


class TargetAttention(nn.Module):
    """DIN-style pooling of a history against the candidate: each history item's weight comes from
    an MLP over [h, c, h - c, h * c], softmax-normalised over the valid positions.

    Args:
        dim: D.
        hidden: width of the attention MLP.

    Example:
        >>> TargetAttention(4)(torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [0, 0, 0]]).bool(), torch.randn(2, 4)).shape
        torch.Size([2, 4])

    Returns:
        (B, D) pooled history; zeros for an empty history.
    """

    def __init__(self, dim: int, hidden: int = 32, device: torch.device | None = None) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(4 * dim, hidden, device=device), nn.ReLU(),
                                   nn.Linear(hidden, 1, device=device))

    def forward(self, history: torch.Tensor, valid: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        c = candidate.unsqueeze(1).expand_as(history)  # (B, L, D)
        logits = self.score(torch.cat([history, c, history - c, history * c], dim=-1)).squeeze(-1)  # (B, L)
        weights = logits.masked_fill(~valid, float("-inf")).softmax(dim=1).nan_to_num(0.0)  # (B, L)
        return torch.einsum("bl,bld->bd", weights, history)


class SparseArch(nn.Module):
    """Embeddings of the sparse features through TorchRec: an EmbeddingBagCollection for pooled
    features and, under target attention, an EmbeddingCollection for the candidate and the history
    (the same item table, unpooled), pooled by `TargetAttention`.

    Returns:
        (B, F * D) pooled embeddings, in `RankerFeatures.pooled_features` order.
    """

    def __init__(self, args: RankerArgs, device: torch.device | None = None) -> None:
        super().__init__()
        self.features = args.features
        tables = args.tables()
        self.embedding_bag_collection = EmbeddingBagCollection(
            tables=[t for t in tables if isinstance(t, EmbeddingBagConfig)], device=device)
        sequence = [t for t in tables if not isinstance(t, EmbeddingBagConfig)]
        if sequence:
            self.embedding_collection = EmbeddingCollection(tables=sequence, device=device)
            self.target_attention = TargetAttention(args.embedding_dim, device=device)
        self.num_pooled_keys = len(args.features.kjt_keys) - len(args.features.sequence_features)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        if not self.features.sequence_features:
            pooled = self.embedding_bag_collection(features).to_dict()
        else:
            bags, sequences = features.split([self.num_pooled_keys, len(self.features.sequence_features)])
            pooled = self.embedding_bag_collection(bags).to_dict()
            jagged = self.embedding_collection(sequences)
            candidate = jagged["item_id"].to_padded_dense(1)[:, 0]  # (B, D)
            history = jagged["history"]
            length = int(history.lengths().max()) if history.lengths().numel() else 0
            dense = history.to_padded_dense(max(1, length))  # (B, L, D)
            valid = torch.arange(dense.shape[1], device=dense.device) < history.lengths().unsqueeze(1)  # (B, L)
            pooled["item_id"] = candidate
            pooled["history"] = self.target_attention(dense, valid, candidate)
        return torch.cat([pooled[name] for name in self.features.pooled_features], dim=1)  # (B, F*D)


class CustomizedGateControl(nn.Module):
    """Experts and per-task softmax gates (PLE's CGC layer; MMoE when tasks own no experts).

    Args:
        width: input width W.
        hidden: width H of each expert's output.
        num_shared: experts every task's gate can use.
        num_per_task: experts only one task's gate uses (0: MMoE).
        num_tasks: T.

    Returns:
        (B, T, H): each task's gated mixture of its experts' outputs.
    """

    def __init__(self, width: int, hidden: int, num_shared: int, num_per_task: int, num_tasks: int,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.num_shared, self.num_per_task, self.num_tasks = num_shared, num_per_task, num_tasks
        self.num_experts, self.hidden = num_shared + num_per_task * num_tasks, hidden
        # Every expert's layer (W -> H, ReLU) in one (W -> E * H) linear layer: one matmul for all
        # of them (4 experts, 500 rows: 0.84 -> 0.53-0.64 ms, BENCHMARKS.md). Rows e*H..(e+1)*H are expert e's.
        self.experts = nn.Linear(width, self.num_experts * hidden, device=device)
        self.register_load_state_dict_pre_hook(_stack_expert_layers)
        self.gates = nn.Linear(width, num_tasks * (num_shared + num_per_task), device=device)
        # Task t's gate sees the shared experts (0..S-1), then its own (S + t*P .. S + (t+1)*P - 1): the
        # layout is fixed by the sizes above, so no index tensor exists for a wrapper to drop.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[0], self.num_shared
        outputs = torch.relu(self.experts(x)).view(b, self.num_experts, self.hidden)  # (B, E, H)
        gates = self.gates(x).view(b, self.num_tasks, -1).softmax(dim=-1)  # (B, T, S + P)
        # (B, T, S) @ (B, S, H): one batched matmul over the shared experts for every task.
        mixed = torch.bmm(gates[:, :, :s].contiguous(), outputs[:, :s])  # (B, T, H)
        if self.num_per_task:  # PLE: plus each task's gated mixture of the experts it owns
            own = outputs[:, s:].view(b, self.num_tasks, self.num_per_task, self.hidden)  # (B, T, P, H)
            mixed = mixed + torch.einsum("btp,btph->bth", gates[:, :, s:], own)
        return mixed


def _stack_expert_layers(module, state_dict, prefix, *_) -> None:
    """Checkpoints written before the experts were one layer hold one MLP per expert
    (``experts.<e>._mlp.0._linear.*``): stack them into the one layer's rows, in expert order."""
    for name in ("weight", "bias"):
        keys = [f"{prefix}experts.{e}._mlp.0._linear.{name}" for e in range(module.num_experts)]
        if all(k in state_dict for k in keys):
            state_dict[f"{prefix}experts.{name}"] = torch.cat([state_dict.pop(k) for k in keys])


class MultiTaskRanker(nn.Module):
    """The inference model: predictions per task name, no loss and no labels.

    Args:
        args: sizes and task declarations.
        device: where to create the embedding tables (``meta`` when DistributedModelParallel will
            shard and materialise them).

    Example:
        >>> from feedcore.config import TaskConfig
        >>> args = RankerArgs(5, 9, 2, 3, 4, (8,), 1, (8,), (TaskConfig("click"), TaskConfig("rating", "regression")))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(list(SPARSE_FEATURES), torch.tensor([1, 2, 3, 4, 1, 2, 0]),
        ...                                           torch.tensor([1, 1, 2, 1, 1, 1]))
        >>> out = MultiTaskRanker(args)(torch.zeros(1, len(DENSE_FEATURES)), kjt)
        >>> sorted(out), out["click"].shape
        (['click', 'rating'], torch.Size([1]))

    Returns:
        dict task name → (B,) predictions: probabilities for binary tasks, values for regression,
        expected counts for count tasks.
    """

    def __init__(self, args: RankerArgs, device: torch.device | None = None) -> None:
        super().__init__()
        self.args = args
        self.task_names = [t.name for t in args.tasks]
        d = args.embedding_dim
        self.sparse_arch = SparseArch(args, device)
        text = args.features.text_dim
        self.text_projection = (nn.Linear(text, args.features.text_projection, device=device) if text else None)
        dense_in = args.num_scalar_dense + (args.features.text_projection if text else 0)
        self.dense_arch = MLP(dense_in, [*args.dense_hidden, d], device=device)
        width = (len(args.features.pooled_features) + 1) * d
        self.interaction_arch = LowRankCrossNet(width, args.cross_layers, low_rank=max(1, d // 2))
        num_tasks = len(args.tasks)
        if args.experts == "shared":
            self.experts: nn.Module | None = None
            tower_in = width
        elif args.experts in ("mmoe", "ple"):
            per_task = args.num_task_experts if args.experts == "ple" else 0
            self.experts = CustomizedGateControl(width, args.expert_hidden, args.num_shared_experts, per_task,
                                                 num_tasks, device)
            tower_in = args.expert_hidden
        else:
            raise ValueError(f"ranker experts={args.experts!r}: expected one of 'mmoe', 'ple', 'shared'")
        self.task_towers = nn.ModuleList(MLP(tower_in, list(args.over_hidden), device=device) for _ in args.tasks)
        self.task_heads = nn.ModuleList(nn.Linear(args.over_hidden[-1], 1, device=device) for _ in args.tasks)
        # Task kinds are read from `args` where they are used, never kept in buffers: a model built on
        # `meta` and materialised by DistributedModelParallel gets non-persistent buffers back as zeros.
        self.task_kinds = tuple(t.kind for t in args.tasks)

    @classmethod
    def from_checkpoint(cls, checkpoint) -> MultiTaskRanker:
        """The trained model of a `feedcore.artifacts.Checkpoint` of kind ``ranker``."""
        from feedcore.config import from_dict

        model = cls(from_dict(RankerArgs, checkpoint.extras["model_args"]))
        model.load_state_dict(checkpoint.state_dict)
        return model.eval()

    def dense_inputs(self, dense: torch.Tensor) -> torch.Tensor:
        """(B, Dd) scalar dense features, with the trailing (B, X) text embedding projected."""
        if self.text_projection is None:
            return dense
        n = self.args.num_scalar_dense
        return torch.cat([dense[:, :n], self.text_projection(dense[:, n:])], dim=1)

    def logits(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """(B, T) raw outputs: logits for binary tasks, values for regression, log-rates for counts."""
        x = torch.cat([self.dense_arch(self.dense_inputs(dense)), self.sparse_arch(sparse)], dim=1)
        x = self.interaction_arch(x)  # (B, W)
        if self.experts is None:
            inputs = [x] * len(self.task_heads)
        else:
            mixed = self.experts(x)  # (B, T, H)
            inputs = [mixed[:, t] for t in range(mixed.shape[1])]
        return torch.cat([head(tower(h)) for h, tower, head in zip(inputs, self.task_towers, self.task_heads,
                                                                    strict=True)], dim=1)  # (B, T)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        logits = self.logits(dense, sparse)  # (B, T)
        return {name: _LINKS[kind](logits[:, t]) for t, (name, kind) in enumerate(zip(self.task_names, self.task_kinds,
                                                                                     strict=True))}


class MultiTaskRankerTrain(nn.Module):
    """Training wrapper: the weighted sum of per-task losses; NaN labels are missing and ignored.

    Binary tasks use log loss, regression tasks mean squared error, count tasks the Poisson negative
    log-likelihood of the log-rate (the model's raw output).

    Returns:
        (loss, per-task losses (T,), logits (B, T)).
    """

    def __init__(self, model: MultiTaskRanker) -> None:
        super().__init__()
        self.model = model
        self.task_weights = tuple(float(t.weight) for t in model.args.tasks)

    def forward(
        self, dense: torch.Tensor, sparse: KeyedJaggedTensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model.logits(dense, sparse)  # (B, T)
        present = ~torch.isnan(labels)  # (B, T)
        target = torch.nan_to_num(labels)
        per_task = torch.stack([
            (_LOSSES[kind](logits[:, t], target[:, t]) * present[:, t]).sum() / present[:, t].sum().clamp(min=1)
            for t, kind in enumerate(self.model.task_kinds)
        ])  # (T,)
        loss = (per_task * per_task.new_tensor(self.task_weights)).sum()
        return loss, per_task.detach(), logits.detach()


# Per task kind: the link from the raw output to the prediction, and the per-example loss of the raw output.
_LINKS = {"binary": torch.sigmoid, "count": torch.exp, "regression": lambda x: x}
_LOSSES = {
    "binary": lambda logit, y: F.binary_cross_entropy_with_logits(logit, y, reduction="none"),
    "count": lambda log_rate, y: F.poisson_nll_loss(log_rate, y, log_input=True, full=False, reduction="none"),
    "regression": lambda value, y: (value - y) ** 2,
}


def quantize_for_serving(model: MultiTaskRanker) -> MultiTaskRanker:
    """A copy of `model` whose embedding tables are int8, row-wise quantized (TorchRec's quantized
    EmbeddingBagCollection on fbgemm's n-bit kernels): about 4× smaller tables; the dense part stays fp32."""
    return quantize_embeddings(copy.deepcopy(model).eval(), dtype=torch.qint8, inplace=True,
                               additional_qconfig_spec_keys=[EmbeddingCollection],
                               additional_mapping={EmbeddingCollection: QuantEmbeddingCollection})
