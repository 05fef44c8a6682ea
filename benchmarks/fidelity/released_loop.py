"""A preview of ``protocol=released`` for LATTICE, before the trainer is wired: latticerec's LATTICE
model (unchanged) trained by a short loop with the released code's training pieces that need no
model change, so their effect can be measured against the original code today.

    python benchmarks/fidelity/released_loop.py /tmp/fidelity/data/tiktok --epochs 30 --seed 0 \\
        --out /tmp/fidelity/runs/lattice-loop

What the loop does as the released code does (differences #1-#12 of docs/fidelity.md): Adam at
lr 5e-4 with the ``0.96^(e/50)`` schedule, batches of 1024 from the user-uniform sampler
(``⌊|R|/B⌋+1`` per epoch), L2 1e-5 on the *final* batch representations, gradients reset to zero
(not ``None``), the learned graphs rebuilt before each evaluation, LightGCN with 2 layers, λ = 0.9,
``topk=10,20`` and legacy NDCG; evaluation every epoch (for the curve; the released default is 5).
What it cannot do without model changes: the released adjacency ``D⁻¹(A+I)``, trainable raw
features, LATTICE's joint normalisation and frozen-per-epoch modality weights (#15, #19, #22, #23).

Writes ``metrics.json`` (``history`` with ``valid_recall@20`` per epoch, ``test`` of the best
validation epoch) into ``--out``, the layout ``compare.py --run`` reads. ``--sampler interaction``
and ``--zero-grad none`` switch one piece back to latticerec's, to see what each one changes.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from latticerec.data.readers import load_dataset
from latticerec.graphs.cache import KnnGraphCache
from latticerec.models.losses import bpr_loss, l2_regularizer
from latticerec.train.build import build_model, resolve_config
from latticerec.train.sampling import BPRSampler, UserUniformSampler
from latticerec.train.schedule import learning_rate, set_learning_rate
from latticerec.train.trainer import evaluate_split, seed_everything

RELEASED = {"lr": 5e-4, "batch_size": 1024, "reg": 1e-5, "n_layers": 2, "lambda_coeff": 0.9,
            "topk": "10,20", "ndcg": "legacy"}


def rebuild_graphs(model) -> None:
    """Rebuild the learned graphs from the current projections (the released ``Trainer.test``)."""
    model.train()
    model.structure.request_rebuild()
    model.propagate()  # the rebuild stores the graphs in the buffers; the output is not used


def train(data: str, epochs: int, seed: int, cache_dir: str | None, sampler_kind: str = "user",
          zero_grad: str = "zeros") -> dict:
    run = resolve_config("lattice", {**RELEASED, "seed": seed})
    cfg, reg = run.train, run.backbone_config.reg
    dataset = load_dataset(data)
    model = build_model(run, dataset, "cpu", KnnGraphCache(cache_dir))
    seed_everything(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = (UserUniformSampler if sampler_kind == "user" else BPRSampler)(dataset.train, seed=seed)
    history, best, best_state = [], (-1.0, 0, {}), None
    for epoch in range(epochs):
        start = time.perf_counter()
        set_learning_rate(optimizer, learning_rate(cfg.lr, epoch, "released"))
        model.train()
        model.on_epoch_start(epoch)
        total = 0.0
        for users, pos, neg in sampler.epoch(epoch, cfg.batch_size):
            user_all, item_all = model.propagate()
            u, p, n = user_all[users], item_all[pos], item_all[neg]
            loss = bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + reg * l2_regularizer(u, p, n)
            optimizer.zero_grad(set_to_none=zero_grad == "none")
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        rebuild_graphs(model)
        valid = evaluate_split(model, dataset, "valid", cfg)
        history.append({"epoch": epoch + 1, "seconds": round(time.perf_counter() - start, 2),
                        "loss": total, "valid_recall@20": valid["recall@20"],
                        "valid_ndcg@20": valid["ndcg@20"]})
        print(json.dumps(history[-1]), flush=True)
        if valid["recall@20"] > best[0]:
            best, best_state = (valid["recall@20"], epoch + 1, valid), copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test = evaluate_split(model, dataset, "test", cfg)
    return {"best_epoch": best[1], "valid": best[2], "test": test, "history": history,
            "config": run.to_dict(), "loop": "benchmarks/fidelity/released_loop.py",
            "sampler": sampler_kind, "zero_grad": zero_grad}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="dataset folder")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="new folder for metrics.json")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--sampler", choices=("user", "interaction"), default="user")
    p.add_argument("--zero-grad", choices=("zeros", "none"), default="zeros")
    args = p.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out}: exists; give a new folder")
    result = train(args.data, args.epochs, args.seed, args.cache_dir, args.sampler, args.zero_grad)
    args.out.mkdir(parents=True)
    (args.out / "metrics.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({"best_epoch": result["best_epoch"], "test": result["test"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
