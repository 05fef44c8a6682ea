"""Inductive cold start, measured: a model trained without any trace of the cold items places each of
them from its features (``FoldIn.place``, the code path of ``POST /items``) and ranks them; compared
with the transductive cold-start model (today's split of the same seed: cold features known at
training, cold valid items used for model selection) and with CB.

For each split seed ``s``:

1. ``latticerec data cold-start SOURCE --seed s`` (transductive) and ``... --inductive`` (inductive);
2. ``latticerec train`` of each model on both (training seed ``2024 + s``, at most ``--epochs``
   epochs, default 80), skipped when the run folder already has ``metrics.json``;
3. Recall/NDCG@20 over the cold test items (inductive: a new item's collaborative part from its graph
   neighbours, the export's default, and ``inductive-isolated``: the model's own output for an item
   without interactions, ``latticerec export --new-item-cf isolated``): for every user with a cold
   test interaction, only the cold test items are ranked (training items excluded), as the
   transductive evaluation does. Both protocols are scored on the same users: those with a warm
   interaction (the others cannot be training users of the inductive model); the transductive
   run's own figure over all its users is printed beside it.

    OMP_NUM_THREADS=1 python benchmarks/inductive_coldstart.py --source ../shared/data/tiktok \\
        --work runs/inductive --split-seeds 0 1 2

Prints one JSON line per (split, model, protocol), then a Markdown table (mean ± std over splits).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from latticerec.data.cold import INDUCTIVE_FILE, read_inductive_cold
from latticerec.data.readers import load_dataset
from latticerec.evaluate.ranking import evaluate_ranking
from latticerec.graphs.cache import KnnGraphCache
from latticerec.serve.foldin import fold_in_arrays, load_fold_in
from latticerec.train.build import build_model, config_from_dict, resolve_config
from latticerec.train.rundir import RunDir

MODELS = {"lattice": "--model lattice --set item_layers=2",
          "micro": "--model micro --set item_layers=2 lambda_coeff=0.9"}
TOPK = (20,)


def cli(*args: str, log: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "latticerec.cli", *args]
    print("$ latticerec " + " ".join(args), file=sys.stderr, flush=True)
    with open(log, "a") if log else open(os.devnull, "w") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"failed: {' '.join(cmd)} (see {log})")


def train(model: str, data: Path, out: Path, seed: int, epochs: int) -> None:
    if (out / "metrics.json").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
    cli("train", *MODELS[model].split(), "--data", str(data), "--seed", str(seed), "--out", str(out),
        "--epochs", str(epochs), "--quiet", *resume, log=out / "train.log")


def load_trained(run_dir: Path):
    """The run's model with its best-validation weights, in eval mode, and its dataset."""
    rd = RunDir(run_dir)
    meta = rd.read_config()
    dataset = load_dataset(meta["data"])
    model = build_model(config_from_dict(meta["config"]), dataset, "cpu", KnnGraphCache())
    model.load_state_dict(rd.load_best()["model"])
    model.eval()
    return model, dataset


def _metrics(out: dict) -> dict:
    return {k: round(v, 5) for k, v in out.items() if k in ("recall@20", "ndcg@20")}


def inductive_scores(model, dataset, folder: Path, cf_part: str = "neighbours") -> dict:
    """Place every cold item through FoldIn.place (with the export's ``cf_part``) and rank the cold
    test items."""
    cold = read_inductive_cold(folder, dataset.n_users)
    spec, arrays = fold_in_arrays(model, dataset, cf_part)
    placer = load_fold_in(spec, arrays)
    users, items = model.full_representations()
    n, rows = items.shape[0], len(cold.ids)
    start = time.perf_counter()
    placed = np.stack([placer.place({m: cold.features[m][c] for m in placer.modalities})[0]
                       for c in range(rows)])
    ms = 1000 * (time.perf_counter() - start) / rows
    all_items = torch.cat([items, torch.as_tensor(placed)])
    target = sp.hstack([sp.csr_matrix((dataset.n_users, n)), cold.test]).tocsr()
    train = sp.hstack([dataset.train, sp.csr_matrix((dataset.n_users, rows))]).tocsr()
    out = evaluate_ranking(users, all_items, target, exclude=[train], topk=TOPK,
                           candidates=n + cold.rows("test"))
    n_users = int(np.diff(target.indptr).astype(bool).sum())
    return {**_metrics(out), "place_ms": round(ms, 3), "users": n_users}


def transductive_scores(model, dataset, kept_users: np.ndarray) -> dict:
    """The transductive model on its cold test items, over the users ``kept_users`` only."""
    users, items = model.full_representations()
    keep = np.zeros(dataset.n_users)
    keep[kept_users] = 1
    target = sp.diags(keep) @ dataset.test
    out = evaluate_ranking(users, items, target.tocsr(), exclude=[dataset.train], topk=TOPK,
                           candidates=dataset.candidates("test"))
    return {**_metrics(out), "users": int(np.diff(target.tocsr().indptr).astype(bool).sum())}


def cb_model(dataset):
    return build_model(resolve_config("cb", {}), dataset).eval()


def run_split(source: Path, work: Path, s: int, models: list[str], epochs: int) -> list[dict]:
    trans, ind = work / f"data/cold-{s}", work / f"data/inductive-{s}"
    if not (trans / "cold_items.json").exists():
        cli("data", "cold-start", str(source), "--out", str(trans), "--seed", str(s))
    if not (ind / INDUCTIVE_FILE).exists():
        cli("data", "cold-start", str(source), "--out", str(ind), "--seed", str(s), "--inductive")
    info = json.loads((ind / INDUCTIVE_FILE).read_text())
    kept = np.asarray(info["source_users"])
    trans_ds = load_dataset(trans)
    assert np.array_equal(np.concatenate([trans_ds.cold_items["valid"], trans_ds.cold_items["test"]]),
                          info["source_cold"]), "the two splits disagree on the cold items"
    rows = []
    for model in models:
        for protocol, data in (("transductive", trans), ("inductive", ind)):
            run = work / f"runs/{protocol}-{model}-{s}"
            train(model, data, run, 2024 + s, epochs)
            trained, ds = load_trained(run)
            row = {"split": s, "model": model, "protocol": protocol}
            if protocol == "inductive":
                isolated = {"split": s, "model": model, "protocol": "inductive-isolated",
                            **inductive_scores(trained, ds, ind, "isolated")}
                row.update(inductive_scores(trained, ds, ind))
            else:
                row.update(transductive_scores(trained, ds, kept))
                saved = json.loads((run / "metrics.json").read_text())
                row["all_users_recall@20"] = round(saved["test"]["recall@20"], 5)
            row["best_epoch"] = json.loads((run / "metrics.json").read_text())["best_epoch"]
            for r in (row, isolated) if protocol == "inductive" else (row,):
                r["best_epoch"] = row["best_epoch"]
                rows.append(r)
                print(json.dumps(r), flush=True)
    row = {"split": s, "model": "cb", "protocol": "transductive",
           **transductive_scores(cb_model(trans_ds), trans_ds, kept)}
    print(json.dumps(row), flush=True)
    rows.append(row)
    ind_ds = load_dataset(ind)
    row = {"split": s, "model": "cb", "protocol": "inductive",
           **inductive_scores(cb_model(ind_ds), ind_ds, ind)}
    print(json.dumps(row), flush=True)
    rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | protocol | splits | cold test Recall@20 | cold test NDCG@20 | inductive / "
           "transductive Recall@20 | per split Recall@20 |", "|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        means = {}
        for protocol in ("transductive", "inductive", "inductive-isolated"):
            sel = [r for r in rows if r["model"] == model and r["protocol"] == protocol]
            if not sel:
                continue
            rec = np.array([r["recall@20"] for r in sel])
            nd = np.array([r["ndcg@20"] for r in sel])
            means[protocol] = rec.mean()
            ratio = (f"{means[protocol] / means['transductive']:.0%}" if protocol.startswith("inductive")
                     and means.get("transductive") else "")
            out.append(f"| {model} | {protocol} | {len(sel)} | {rec.mean():.4f} ± {rec.std():.4f} | "
                       f"{nd.mean():.4f} ± {nd.std():.4f} | {ratio} | "
                       f"{' / '.join(f'{x:.4f}' for x in rec)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=str(Path(__file__).resolve().parents[2] / "shared/data/tiktok"))
    p.add_argument("--work", default="runs/inductive", help="splits and run folders go here")
    p.add_argument("--split-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--epochs", type=int, default=80,
                   help="cap on training epochs (early stopping with patience 20 usually ends sooner)")
    args = p.parse_args(argv)
    if not Path(args.source).exists():
        print(f"{args.source}: no such dataset", file=sys.stderr)
        return 2
    rows = [r for s in args.split_seeds
            for r in run_split(Path(args.source), Path(args.work), s, args.models, args.epochs)]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
