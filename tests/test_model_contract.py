"""The contract every registered model must pass (in the spirit of implicit's shared test mixin)."""

import pytest
import torch

from latticerec.config import TrainConfig, field_types
from latticerec.models.registry import MODELS, get_backbone_class
from latticerec.train.build import build_model, resolve_config
from latticerec.train.sampling import BPRSampler
from latticerec.train.trainer import evaluate_split, fit

# extra overrides per model to keep the tiny runs fast and well-posed
TINY = {"embed_dim": "16"}


def _declared(name, values):
    """The overrides that ``name``'s configs declare (``cb`` has no embed_dim or reg)."""
    cls = MODELS[name]
    known = set(field_types(TrainConfig)) | set(field_types(cls.Config))
    if getattr(cls, "wraps_backbone", False):
        known |= set(field_types(get_backbone_class(cls.Config.backbone).Config))
    return {k: v for k, v in values.items() if k in known}


def _trainable(model):
    return getattr(model, "trainable", True)


def _build(name, data, **extra):
    run = resolve_config(name, _declared(name, {**TINY, **extra}))
    return run, build_model(run, data)


def _batch(data, seed=0, size=64):
    users, pos, neg = next(BPRSampler(data.train, seed=seed).epoch(0, size))
    return torch.as_tensor(users), torch.as_tensor(pos), torch.as_tensor(neg)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_representations_have_the_right_shape(name, blocks):
    _, model = _build(name, blocks)
    users, items = model.full_representations()
    assert users.shape[0] == blocks.n_users and items.shape[0] == blocks.n_items
    assert users.shape[1] == items.shape[1]
    assert torch.isfinite(users).all() and torch.isfinite(items).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_is_finite_and_gradients_reach_every_parameter(name, blocks):
    _, model = _build(name, blocks)
    model.train()
    model.on_epoch_start(0)
    terms = model.loss(*_batch(blocks))
    assert {"bpr", "reg"} <= set(terms)
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    if not _trainable(model):  # content-based: nothing to learn, nothing to differentiate
        assert not any(p.requires_grad for p in model.parameters()) and not loss.requires_grad
        return
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_falls_and_model_learns_the_blocks(name, blocks):
    run, model = _build(name, blocks, lr="0.05", epochs="30", patience="30", reg="0",
                          batch_size="32")
    before = evaluate_split(model, blocks, "test", run.train)
    result = fit(model, blocks, run.train, progress=False)
    if not _trainable(model):  # evaluated as built, and its features encode the blocks
        assert result["epochs_run"] == 0 and result["test"] == before
        assert result["test"]["recall@10"] > 0.8
        return
    hist = result["history"]
    assert hist[-1]["loss_bpr"] < 0.7 * hist[0]["loss_bpr"]
    # each user's held-out item is one of ~8 remaining block items among 30 - 8 unseen:
    # random ranking gives Recall@10 ≈ 10/22; learning the blocks gives ≈ 1
    assert result["test"]["recall@10"] > 0.8
    # content-based models already rank by block before training (the kNN graph is the blocks)
    assert result["test"]["recall@10"] > min(before["recall@10"] + 0.2, 0.99)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_model(name, blocks):
    _, a = _build(name, blocks)
    _, b = _build(name, blocks)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
