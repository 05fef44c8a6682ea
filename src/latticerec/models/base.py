"""The model contract shared by every recommender, and the inputs models are built from.

A model is a ``torch.nn.Module`` that

* ``propagate()`` returns the final user and item representations ``(U x d, I x d)``; a user's score
  for an item is their dot product;
* ``loss(users, pos, neg)`` returns a dict of named, already weighted scalar terms whose sum is the
  training objective (``"bpr"``, ``"reg"``, and model-specific terms);
* ``on_epoch_start(epoch)`` is called by the trainer before each epoch (LATTICE rebuilds its
  learned graphs there).

A *non-factorised* scorer (ItemKNN: ``score(u, i) = Σ_(j ∈ N_u) sim(i, j)``, no d-dimensional
representation short of an ``I x I`` one) sets ``factorised = False`` and implements
``score_users(users) -> (B x I)``; the evaluator ranks with it instead of the dot product, and the
serving export, which stores representations, refuses such a model.

Models receive sizes and tensors (:class:`ModelInputs`), never a dataset object or a file path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from latticerec.errors import ConfigError
from latticerec.graphs.knn import knn_graph
from latticerec.models.losses import bpr_loss, l2_regularizer, sampled_softmax_loss


@dataclass(frozen=True)
class ModelInputs:
    """Everything a model may be built from: sizes and tensors on the target device."""

    n_users: int
    n_items: int
    train: torch.Tensor  # users x items binary interactions, sparse CSR
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> (n_items, d_m)
    item_graphs: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> sparse (I x I)
    # (features, k, backend=...) -> the normalised kNN graph of eq. 1-3 with neighbours found by
    # the model's knn_backend; the trainer passes a disk-cached one
    knn_graph: Callable[..., torch.Tensor] = knn_graph

    def item_knn_graph(self, features: torch.Tensor, k: int, **kw) -> torch.Tensor:
        """:attr:`knn_graph` of one item feature matrix, the path of every model's initial graph:
        ``k`` (a model's ``knn_k``) is checked against the items first, a :class:`ConfigError`
        naming the option (a graph keeps ``k`` neighbours per item, itself included)."""
        if k > self.n_items:
            raise ConfigError(f"knn_k={k} is more than the {self.n_items} items of the dataset: "
                              f"give knn_k <= {self.n_items}")
        return self.knn_graph(features, k, **kw)


def pair_rows(table: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(table[pos], table[neg])`` by one gather, so that the backward pass scatters into one
    ``table``-sized gradient instead of two that are then summed."""
    return table[torch.cat([pos, neg])].split([pos.numel(), neg.numel()])


class Recommender(nn.Module):
    """Base class: BPR training over ``propagate()`` with L2 on the batch's ego embeddings."""

    reg_weight: float = 0.0
    reg_on: str = "ego"  # "ego" | "final": what the L2 penalty applies to (the trainer sets it)
    rank_loss: str = "bpr"  # "bpr" | "softmax": the ranking term of bpr_terms (the trainer sets it)
    rank_tau: float = 1.0  # the softmax's temperature (the trainer sets it)
    # the ranking losses the model trains with: a model with a loss of its own (not bpr_terms) has bpr only
    RANK_LOSSES: tuple[str, ...] = ("bpr", "softmax")
    factorised: bool = True  # False: scores come from ``score_users``, not ``propagate()``

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def ego_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        """The layer-0 (ID) embedding tables ``(U x d, I x d)`` that the L2 penalty applies to."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Hook called before each training epoch; nothing by default."""

    def before_evaluation(self) -> None:
        """Hook the trainer calls before an evaluation with ``rebuild_on_eval``; nothing by default."""

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.bpr_terms(*self.propagate(), users, pos, neg)

    def bpr_terms(self, user_all: torch.Tensor, item_all: torch.Tensor, users: torch.Tensor,
                  pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        """``bpr`` (batch mean over the propagated representations; ``softmax`` instead with
        ``rank_loss == "softmax"``: :func:`~latticerec.models.losses.sampled_softmax_loss`) and
        ``reg``: the loss of every model, to which a model may add its own terms.

        ``reg = reg_weight · ½(‖u‖² + ‖p‖² + ‖n‖²) / B`` over the batch rows of the layer-0 ID
        embeddings (``reg_on == "ego"``) or of the final representations ``user_all``/``item_all``
        that enter the BPR scores (``reg_on == "final"``, the released LATTICE/MICRO code)."""
        u, (p, n) = user_all[users], pair_rows(item_all, pos, neg)
        if self.rank_loss == "softmax":
            terms = {"softmax": sampled_softmax_loss(u, p, n, pos, neg, self.rank_tau)}
        else:
            terms = {"bpr": bpr_loss((u * p).sum(-1), (u * n).sum(-1))}
        if self.reg_on == "final":
            terms["reg"] = self.reg_weight * l2_regularizer(u, p, n)
        else:
            ego_u, ego_i = self.ego_embeddings()
            terms["reg"] = self.reg_weight * l2_regularizer(ego_u[users], *pair_rows(ego_i, pos, neg))
        return terms

    @torch.no_grad()
    def full_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``propagate()`` in inference mode, for evaluation and serving."""
        was_training = self.training
        self.eval()
        try:
            return tuple(t.detach() for t in self.propagate())
        finally:
            self.train(was_training)

    @torch.no_grad()
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """``(len(users) x I)`` scores of ``users`` for every item, in inference mode. Here the dot
        products of :meth:`full_representations` (recomputed per call: to score many batches of a
        factorised model, take the representations once); a non-factorised model overrides it."""
        user_all, item_all = self.full_representations()
        return user_all[users] @ item_all.T
