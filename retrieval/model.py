"""The two-tower retrieval model: a user tower over the history and a content-aware item tower.

User towers (``TwoTowerArgs.user_encoder``): ``mean`` (mean of the history's item embeddings plus a
user-id embedding), ``sasrec`` and ``hstu`` (causal sequential encoders, `retrieval.sequential`).
The item tower embeds an item from its id and its content: content type, categories and, where the
item has text, a sentence embedding of its title. The content features live in the model as
buffers, so the model embeds any item index by itself, and an item with no interactions (its id
row untrained, or the shared "unknown" row 0) still gets an embedding from its content.

Dimension letters: B batch, L history length, N items, D embedding dim, C category values, X text dim.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from feedcore.features import ItemFeatures
from retrieval.sequential import SequentialEncoder


@dataclasses.dataclass(frozen=True)
class TwoTowerArgs:
    """Sizes and choices that rebuild the model from a checkpoint."""

    num_users: int
    num_items: int
    num_content_types: int
    num_categories: int
    embedding_dim: int
    hidden_dim: int
    user_encoder: str = "mean"  # mean | sasrec | hstu
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    max_len: int = 50
    normalize: bool = True  # cosine similarity (with a temperature) instead of a raw dot product
    text_dim: int = 0  # 0: no text features
    # Training only: the share of items whose id embedding is replaced by the "unknown" row, so the
    # content path learns to embed items on its own (items with no interactions depend on it).
    id_dropout: float = 0.0


class ItemTower(nn.Module):
    """Item embedding from its id and its content (content type, categories, title text).

    Example:
        >>> args = TwoTowerArgs(10, 20, 3, 5, 8, 16, text_dim=4)
        >>> tower = ItemTower(args, nn.Embedding(20, 8))
        >>> tower(torch.tensor([1, 2]), torch.tensor([1, 2]), torch.tensor([1, 3]), torch.tensor([0, 1]),
        ...       torch.zeros(2, 4)).shape
        torch.Size([2, 8])

    Returns:
        (B, D) item embeddings.
    """

    def __init__(self, args: TwoTowerArgs, item_embedding: nn.Embedding) -> None:
        super().__init__()
        d = args.embedding_dim
        self.item_embedding = item_embedding
        self.content_type_embedding = nn.Embedding(args.num_content_types, d)
        self.category_embedding = nn.EmbeddingBag(args.num_categories, d, mode="mean")
        self.text_projection = nn.Linear(args.text_dim, d) if args.text_dim else None
        parts = 4 if args.text_dim else 3
        self.mlp = nn.Sequential(nn.Linear(parts * d, args.hidden_dim), nn.GELU(), nn.Linear(args.hidden_dim, d))

    def forward(
        self,
        item: torch.Tensor,  # (B,)
        content_type: torch.Tensor,  # (B,)
        category_values: torch.Tensor,  # (C,)
        category_offsets: torch.Tensor,  # (B,)
        text: torch.Tensor | None = None,  # (B, X)
    ) -> torch.Tensor:
        parts = [
            self.item_embedding(item),
            self.content_type_embedding(content_type),
            self.category_embedding(category_values, category_offsets),
        ]
        if self.text_projection is not None:
            parts.append(self.text_projection(text))
        x = torch.cat(parts, dim=-1)  # (B, parts*D)
        # The id embedding passes straight through; the MLP adds what content says about the item.
        return parts[0] + self.mlp(x)


class MeanUserTower(nn.Module):
    """User embedding from the user id and the mean of their history's item embeddings.

    Returns:
        (B, D) user embeddings.
    """

    def __init__(self, args: TwoTowerArgs) -> None:
        super().__init__()
        d = args.embedding_dim
        self.user_embedding = nn.Embedding(args.num_users, d)
        self.mlp = nn.Sequential(nn.Linear(2 * d, args.hidden_dim), nn.GELU(), nn.Linear(args.hidden_dim, d))

    def forward(self, user: torch.Tensor, history_embeddings: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        mask = valid.unsqueeze(-1).float()  # (B, L, 1)
        pooled = (history_embeddings * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)
        return self.mlp(torch.cat([self.user_embedding(user), pooled], dim=-1))


class TwoTower(nn.Module):
    """The inference model (no loss): embeds items and users into one space.

    Args:
        args: sizes and choices.
        item_features: per-item content features, stored as buffers (saved with the weights).
        text: (N, X) title embeddings, rows of items without text all zero (when args.text_dim).

    Example:
        >>> feats = ItemFeatures(np.array([0, 1, 2]), np.array([0, 0, 1, 2]), np.array([1, 2]), np.zeros(3, "float32"))
        >>> model = TwoTower(TwoTowerArgs(4, 3, 3, 3, 8, 16, user_encoder="sasrec", max_len=4), feats)
        >>> model.item_embeddings(torch.tensor([1, 2])).shape, model.user_embeddings(
        ...     torch.tensor([1]), torch.tensor([[0, 0, 1, 2]])).shape
        (torch.Size([2, 8]), torch.Size([1, 8]))
    """

    def __init__(self, args: TwoTowerArgs, item_features: ItemFeatures, text: np.ndarray | None = None) -> None:
        super().__init__()
        self.args = args
        self.item_embedding = nn.Embedding(args.num_items, args.embedding_dim, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight, std=args.embedding_dim ** -0.5)
        self.item_tower = ItemTower(args, self.item_embedding)
        if args.user_encoder == "mean":
            self.user_tower: nn.Module = MeanUserTower(args)
        else:
            self.user_tower = SequentialEncoder(args.user_encoder, args.embedding_dim, args.num_blocks,
                                                args.num_heads, args.dropout, args.max_len)
        # Items without training events share the untrained "unknown" id row 0: their embedding then
        # comes from content alone instead of a random, never-updated row.
        trained = torch.as_tensor(item_features.popularity > 0)
        self.register_buffer("id_row", torch.where(trained, torch.arange(args.num_items), 0))
        self.register_buffer("content_type", torch.as_tensor(item_features.content_type, dtype=torch.long))
        self.register_buffer("category_offsets", torch.as_tensor(item_features.category_offsets, dtype=torch.long))
        self.register_buffer("category_values", torch.as_tensor(item_features.category_values, dtype=torch.long))
        if args.text_dim:
            if text is None or text.shape != (args.num_items, args.text_dim):
                raise ValueError(f"text features must be ({args.num_items}, {args.text_dim})")
            self.register_buffer("text", torch.as_tensor(text, dtype=torch.float32))
        else:
            self.text = None
        self._item_table: torch.Tensor | None = None  # `freeze_item_embeddings`' (serving only)

    def freeze_item_embeddings(self) -> TwoTower:
        """Serving: embed every vocabulary item once, so a user embedding reads its history's item
        embeddings from that (N, D) table instead of running the item tower per request. Only an
        eval-mode model reads the table (training mode runs the tower, as it must); call again
        after changing the weights. Returns the model."""
        with torch.no_grad():
            self.eval()
            self._item_table = None
            items = torch.arange(self.args.num_items, device=self.content_type.device)
            self._item_table = torch.cat([self.item_embeddings(items[i : i + 65536])
                                          for i in range(0, len(items), 65536)])
        return self

    @classmethod
    def from_checkpoint(cls, checkpoint) -> TwoTower:
        """The trained model of a `feedcore.artifacts.Checkpoint` of kind ``retrieval``."""
        args = TwoTowerArgs(**checkpoint.extras["model_args"])
        sd = checkpoint.state_dict
        feats = ItemFeatures(sd["content_type"].numpy(), sd["category_offsets"].numpy(),
                             sd["category_values"].numpy(), (sd["id_row"] > 0).numpy().astype(np.float32))
        model = cls(args, feats, sd["text"].numpy() if args.text_dim else None)
        model.load_state_dict(sd)
        return model.eval()

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.args.normalize else x

    def item_embeddings(self, item: torch.Tensor, content_only: bool = False) -> torch.Tensor:
        """(n, D) embeddings of item indices `item` (n,); `content_only`: through the shared
        "unknown" id row, from content alone (what an item with no events gets, the fresh-items
        source's embedding of items with few events)."""
        starts = self.category_offsets[item]
        lengths = self.category_offsets[item + 1] - starts
        offsets = torch.cumsum(lengths, 0) - lengths
        # The category values of the selected items, concatenated in order.
        index = torch.repeat_interleave(starts - offsets, lengths) + torch.arange(int(lengths.sum()), device=item.device)
        text = self.text[item] if self.text is not None else None
        id_row = torch.zeros_like(item) if content_only else self.id_row[item]
        if self.training and self.args.id_dropout > 0:
            id_row = id_row.masked_fill(torch.rand(len(item), device=item.device) < self.args.id_dropout, 0)
        out = self.item_tower(id_row, self.content_type[item], self.category_values[index], offsets, text)
        return self._normalize(out)

    def content_embeddings(
        self,
        content_type: torch.Tensor,  # (n,) content-type indices (0: a type the model never saw)
        category_values: torch.Tensor,  # (C,) category indices of all n items, concatenated
        category_offsets: torch.Tensor,  # (n,) where each item's categories start
        text: torch.Tensor | None = None,  # (n, X) text embeddings, when the model has text features
    ) -> torch.Tensor:
        """(n, D) embeddings of items that are not in the vocabulary (a generated post, a new upload),
        from their content alone, through the shared "unknown" id row the content path trained with."""
        if self.text is not None and text is None:
            text = torch.zeros(len(content_type), self.args.text_dim, device=content_type.device)
        unknown = torch.zeros_like(content_type)
        out = self.item_tower(unknown, content_type, category_values, category_offsets,
                              text if self.text is not None else None)
        return self._normalize(out)

    def embed_history(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L, D) item embeddings of a padded history (B, L); each distinct item embedded once."""
        if self._item_table is not None and not self.training:
            return self._item_table[history]
        unique, inverse = torch.unique(history, return_inverse=True)
        return self.item_embeddings(unique)[inverse]

    def sequence_outputs(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L, D) sequential-encoder outputs: position t summarises the history up to t."""
        valid = history > 0
        return self._normalize(self.user_tower(self.embed_history(history), valid))

    def user_embeddings(self, user: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings of users with right-aligned padded histories (B, L)."""
        if self.args.user_encoder == "mean":
            return self._normalize(self.user_tower(user, self.embed_history(history), history > 0))
        return self.sequence_outputs(history[:, -self.args.max_len :])[:, -1]
