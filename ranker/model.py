"""The unified multi-task ranker: SparseArch → DenseArch → InteractionArch (DCN-v2) → task heads.

Dimension letters: B batch, F sparse features, D embedding dim, Dd dense features, T tasks.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.mlp import MLP

from feedcore.config import TaskConfig

# Sparse features in KJT key order; two share the item table (the candidate and the history bag).
SPARSE_FEATURES = ("user_id", "item_id", "history", "content_type", "category")
DENSE_FEATURES = ("item_popularity", "user_activity")


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

    def tables(self) -> list[EmbeddingBagConfig]:
        d = self.embedding_dim
        return [
            EmbeddingBagConfig(name="t_user", embedding_dim=d, num_embeddings=self.num_users,
                               feature_names=["user_id"]),
            EmbeddingBagConfig(name="t_item", embedding_dim=d, num_embeddings=self.num_items,
                               feature_names=["item_id", "history"], pooling=PoolingType.MEAN),
            EmbeddingBagConfig(name="t_content_type", embedding_dim=d, num_embeddings=self.num_content_types,
                               feature_names=["content_type"]),
            EmbeddingBagConfig(name="t_category", embedding_dim=d, num_embeddings=self.num_categories,
                               feature_names=["category"], pooling=PoolingType.MEAN),
        ]


class SparseArch(nn.Module):
    """Pooled embeddings of the sparse features through a TorchRec EmbeddingBagCollection.

    Returns:
        (B, F * D) pooled embeddings, in `SPARSE_FEATURES` order.
    """

    def __init__(self, args: RankerArgs, device: torch.device | None = None) -> None:
        super().__init__()
        self.embedding_bag_collection = EmbeddingBagCollection(tables=args.tables(), device=device)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.embedding_bag_collection(features)
        return torch.cat([pooled[name] for name in SPARSE_FEATURES], dim=1)  # (B, F*D)


class MultiTaskRanker(nn.Module):
    """The inference model: predictions per task name, no loss and no labels.

    Args:
        args: sizes and task declarations.
        device: where to create the embedding tables (``meta`` when DistributedModelParallel will
            shard and materialise them).

    Example:
        >>> from feedcore.config import TaskConfig
        >>> args = RankerArgs(5, 9, 2, 3, 4, (8,), 1, (8,), (TaskConfig("click"), TaskConfig("rating", "regression")))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(list(SPARSE_FEATURES), torch.tensor([1, 2, 3, 4, 1, 2]),
        ...                                           torch.tensor([1, 1, 2, 1, 1]))
        >>> out = MultiTaskRanker(args)(torch.zeros(1, len(DENSE_FEATURES)), kjt)
        >>> sorted(out), out["click"].shape
        (['click', 'rating'], torch.Size([1]))

    Returns:
        dict task name → (B,) predictions: probabilities for binary tasks, values for regression.
    """

    def __init__(self, args: RankerArgs, device: torch.device | None = None) -> None:
        super().__init__()
        self.args = args
        self.task_names = [t.name for t in args.tasks]
        d = args.embedding_dim
        self.sparse_arch = SparseArch(args, device)
        self.dense_arch = MLP(len(DENSE_FEATURES), [*args.dense_hidden, d], device=device)
        width = (len(SPARSE_FEATURES) + 1) * d
        self.interaction_arch = LowRankCrossNet(width, args.cross_layers, low_rank=max(1, d // 2))
        self.over_arch = MLP(width, list(args.over_hidden), device=device)
        self.task_heads = nn.Linear(args.over_hidden[-1], len(args.tasks), device=device)
        self.register_buffer(
            "is_binary", torch.tensor([t.kind == "binary" for t in args.tasks], device=device), persistent=False
        )

    @classmethod
    def from_checkpoint(cls, checkpoint) -> MultiTaskRanker:
        """The trained model of a `feedcore.artifacts.Checkpoint` of kind ``ranker``."""
        from feedcore.config import from_dict

        model = cls(from_dict(RankerArgs, checkpoint.extras["model_args"]))
        model.load_state_dict(checkpoint.state_dict)
        return model.eval()

    def logits(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """(B, T) raw outputs: logits for binary tasks, values for regression tasks."""
        x = torch.cat([self.dense_arch(dense), self.sparse_arch(sparse)], dim=1)  # (B, (F+1)*D)
        return self.task_heads(self.over_arch(self.interaction_arch(x)))  # (B, T)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        out = self.logits(dense, sparse)
        out = torch.where(self.is_binary, torch.sigmoid(out), out)
        return {name: out[:, t] for t, name in enumerate(self.task_names)}


class MultiTaskRankerTrain(nn.Module):
    """Training wrapper: the weighted sum of per-task losses; NaN labels are missing and ignored.

    Binary tasks use log loss, regression tasks mean squared error.

    Returns:
        (loss, per-task losses (T,), logits (B, T)).
    """

    def __init__(self, model: MultiTaskRanker) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("weights", torch.tensor([t.weight for t in model.args.tasks]), persistent=False)

    def forward(
        self, dense: torch.Tensor, sparse: KeyedJaggedTensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model.logits(dense, sparse)  # (B, T)
        present = ~torch.isnan(labels)
        target = torch.nan_to_num(labels)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        mse = (logits - target) ** 2
        per_example = torch.where(self.model.is_binary, bce, mse) * present
        per_task = per_example.sum(0) / present.sum(0).clamp(min=1)  # (T,)
        return (per_task * self.weights).sum(), per_task.detach(), logits.detach()
