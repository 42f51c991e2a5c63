"""The two-tower retrieval model.

Dimension letters: B batch, L history length, N items, D embedding dim, C category values.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class TwoTowerArgs:
    """Sizes that rebuild the model from a checkpoint."""

    num_users: int
    num_items: int
    num_content_types: int
    num_categories: int
    embedding_dim: int
    hidden_dim: int


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class ItemTower(nn.Module):
    """Item embedding from its id and its content (content type, categories).

    An item with no interactions still gets a useful embedding from its content features, because
    the id embedding of an unseen item is the shared "unknown" row 0.

    Args:
        args: model sizes.
        item_embedding: the item-id table, shared with the user tower.

    Example:
        >>> args = TwoTowerArgs(10, 20, 3, 5, 8, 16)
        >>> tower = ItemTower(args, nn.Embedding(20, 8))
        >>> tower(torch.tensor([1, 2]), torch.tensor([1, 2]), torch.tensor([1, 3]), torch.tensor([0, 1])).shape
        torch.Size([2, 8])

    Returns:
        (B, D) L2-normalised item embeddings.
    """

    def __init__(self, args: TwoTowerArgs, item_embedding: nn.Embedding) -> None:
        super().__init__()
        d = args.embedding_dim
        self.item_embedding = item_embedding
        self.content_type_embedding = nn.Embedding(args.num_content_types, d)
        self.category_embedding = nn.EmbeddingBag(args.num_categories, d, mode="mean")
        self.mlp = _mlp(3 * d, args.hidden_dim, d)

    def forward(
        self,
        item: torch.Tensor,  # (B,)
        content_type: torch.Tensor,  # (B,)
        category_values: torch.Tensor,  # (C,)
        category_offsets: torch.Tensor,  # (B,)
    ) -> torch.Tensor:
        x = torch.cat(
            [
                self.item_embedding(item),
                self.content_type_embedding(content_type),
                self.category_embedding(category_values, category_offsets),
            ],
            dim=-1,
        )  # (B, 3D)
        return F.normalize(self.mlp(x), dim=-1)


class UserTower(nn.Module):
    """User embedding from the user id and the mean of their history's item embeddings.

    Args:
        args: model sizes.
        item_embedding: the item-id table, shared with the item tower.

    Example:
        >>> args = TwoTowerArgs(10, 20, 3, 5, 8, 16)
        >>> UserTower(args, nn.Embedding(20, 8))(torch.tensor([1]), torch.tensor([[0, 3, 4]])).shape
        torch.Size([1, 8])

    Returns:
        (B, D) L2-normalised user embeddings.
    """

    def __init__(self, args: TwoTowerArgs, item_embedding: nn.Embedding) -> None:
        super().__init__()
        d = args.embedding_dim
        self.user_embedding = nn.Embedding(args.num_users, d)
        self.item_embedding = item_embedding
        self.mlp = _mlp(2 * d, args.hidden_dim, d)

    def forward(self, user: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        mask = (history > 0).unsqueeze(-1).float()  # (B, L, 1); 0 is padding
        h = self.item_embedding(history) * mask  # (B, L, D)
        pooled = h.sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)
        x = torch.cat([self.user_embedding(user), pooled], dim=-1)  # (B, 2D)
        return F.normalize(self.mlp(x), dim=-1)


class TwoTower(nn.Module):
    """User tower and item tower over one shared item-id table; the inference model (no loss).

    Example:
        >>> model = TwoTower(TwoTowerArgs(10, 20, 3, 5, 8, 16))
        >>> u = model.user_tower(torch.tensor([1]), torch.tensor([[0, 3]]))
        >>> v = model.item_tower(torch.tensor([3]), torch.tensor([1]), torch.tensor([2]), torch.tensor([0]))
        >>> (u * v).sum(-1).shape
        torch.Size([1])
    """

    def __init__(self, args: TwoTowerArgs) -> None:
        super().__init__()
        self.args = args
        shared = nn.Embedding(args.num_items, args.embedding_dim, padding_idx=0)
        self.user_tower = UserTower(args, shared)
        self.item_tower = ItemTower(args, shared)

    @classmethod
    def from_checkpoint(cls, checkpoint) -> TwoTower:
        """The trained model of a `feedcore.artifacts.Checkpoint` of kind ``retrieval``."""
        model = cls(TwoTowerArgs(**checkpoint.extras["model_args"]))
        model.load_state_dict(checkpoint.state_dict)
        return model.eval()


class TwoTowerTrain(nn.Module):
    """Training wrapper: in-batch sampled softmax with logQ correction.

    Each positive (user, item) pair is scored against the batch's other items as negatives. Popular
    items appear as in-batch negatives more often than uniform sampling would; subtracting log q(item)
    (its sampling probability) from the logits corrects that bias (Yi et al., RecSys 2019). Accidental
    hits (the same item as the positive elsewhere in the batch) are masked.

    Args:
        model: the TwoTower to train.
        temperature: softmax temperature on cosine similarities.
        log_q: (N,) log sampling probability of each item (its share of training events).
    """

    def __init__(self, model: TwoTower, temperature: float, log_q: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.register_buffer("log_q", log_q)

    def forward(
        self,
        user: torch.Tensor,
        history: torch.Tensor,
        item: torch.Tensor,
        content_type: torch.Tensor,
        category_values: torch.Tensor,
        category_offsets: torch.Tensor,
    ) -> torch.Tensor:
        u = self.model.user_tower(user, history)  # (B, D)
        v = self.model.item_tower(item, content_type, category_values, category_offsets)  # (B, D)
        logits = u @ v.T / self.temperature - self.log_q[item][None, :]  # (B, B)
        same = item[:, None] == item[None, :]
        logits = logits.masked_fill(same & ~torch.eye(len(item), dtype=torch.bool, device=item.device), -1e9)
        return F.cross_entropy(logits, torch.arange(len(item), device=item.device))
