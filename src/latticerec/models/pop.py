"""Pop, the popularity baseline: every user gets the items ranked by their number of training
interactions, ``ŷ_ui = |{v : r_vi = 1}| = Σ_v r_vi`` (the column sums of the binary training matrix).

No training and no parameters (``trainable = False``): the trainer evaluates it as built (zero
epochs). It fits the dot-product contract with one dimension: ``propagate()`` returns a column of
ones for the users and the item counts for the items, so ``u · x_i`` is the count and the serving
export stores it like any other model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latticerec.models.base import ModelInputs, Recommender
from latticerec.models.losses import bpr_loss


@dataclass(frozen=True)
class PopConfig:
    """Pop has no options (every ``--set`` model key is refused as unknown)."""


class Popularity(Recommender):
    """``ŷ_ui = n_i``, the number of training users of item ``i`` (the same list for every user)."""

    RANK_LOSSES = ("bpr",)  # its own loss, not bpr_terms

    Config = PopConfig
    trainable = False
    personalised = False  # one ranking for every user

    def __init__(self, n_users: int, counts: torch.Tensor):
        super().__init__()
        self.n_users = n_users
        self.register_buffer("item_counts", counts.float().unsqueeze(1), persistent=False)

    @classmethod
    def from_inputs(cls, cfg: PopConfig, inputs: ModelInputs) -> Popularity:
        train = inputs.train.to_sparse_csr() if inputs.train.layout != torch.sparse_csr else inputs.train
        # each stored (user, item) pair is one interaction, whatever its stored value
        return cls(inputs.n_users, torch.bincount(train.col_indices(), minlength=inputs.n_items))

    def propagate(self):
        return self.item_counts.new_ones(self.n_users, 1), self.item_counts

    def ego_embeddings(self):
        return self.propagate()

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        """The BPR loss of the count scores, for monitoring only (nothing to differentiate)."""
        counts = self.item_counts[:, 0]
        bpr = bpr_loss(counts[pos], counts[neg])
        return {"bpr": bpr, "reg": bpr.new_zeros(())}
