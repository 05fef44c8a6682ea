"""The ``latticerec`` command line: train, evaluate and recommend."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from latticerec.errors import LatticeRecError

DISPLAY_METRICS = ("recall", "precision", "ndcg", "hit")


def _format_table(valid: dict, test: dict, topk) -> str:
    head = ["split"] + [f"{m}@{k}" for k in topk for m in DISPLAY_METRICS]
    rows = [head] + [[name] + [f"{res[f'{m}@{k}']:.4f}" for k in topk for m in DISPLAY_METRICS]
                     for name, res in (("valid", valid), ("test", test)) if res]
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows)


def _default_out(model: str, data: str) -> Path:
    stem = Path(data).name if data != "synthetic" else "synthetic"
    return Path("runs") / f"{model}-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


STOPPING_KEYS = ("epochs", "patience")  # a resumed run may change these: they only say when to stop


def _training_config(config: dict) -> dict:
    """A run's config without its stopping rule: what must match for ``--resume``."""
    return {**config, "train": {k: v for k, v in config["train"].items() if k not in STOPPING_KEYS}}


def cmd_train(args) -> int:
    from latticerec.config import parse_overrides
    from latticerec.data.readers import load_dataset
    from latticerec.graphs.cache import KnnGraphCache
    from latticerec.io import atomic_write_json
    from latticerec.models.registry import get_model_class
    from latticerec.serve.runs import METRICS, RUN_CONFIG
    from latticerec.train.build import build_model, resolve_config, resolve_device
    from latticerec.train.trainer import fit

    overrides = parse_overrides([kv for group in args.set or [] for kv in group])
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.backbone is not None:
        if not getattr(get_model_class(args.model), "wraps_backbone", False):
            raise LatticeRecError(f"--backbone: model {args.model!r} does not wrap a backbone")
        overrides["backbone"] = args.backbone
    run = resolve_config(args.model, overrides)
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else _default_out(args.model, args.data)
    data_spec = args.data if args.data == "synthetic" else str(Path(args.data).resolve())
    if args.resume:
        saved = json.loads((out / RUN_CONFIG).read_text()) if (out / RUN_CONFIG).exists() else None
        if saved is None:
            raise LatticeRecError(f"--resume: {out} holds no run to resume")
        if _training_config(saved["config"]) != _training_config(run.to_dict()) \
                or saved["data"] != data_spec:
            raise LatticeRecError(f"--resume: the options differ from the run saved in {out}; "
                                  "give the same --model/--data/--set as the original run (only "
                                  "the stopping rule, --epochs and patience, may change)")
    dataset = load_dataset(args.data)
    model = build_model(run, dataset, device, KnnGraphCache(args.cache_dir))
    meta = {"model": args.model, "data": data_spec, "config": run.to_dict()}
    atomic_write_json(out / RUN_CONFIG, meta)
    print(f"{args.model} on {dataset.name}: {dataset.n_users} users, {dataset.n_items} items, "
          f"{dataset.train.nnz} train interactions; run folder {out}", file=sys.stderr)
    result = fit(model, dataset, run.train, out_dir=out, resume=args.resume,
                 log=lambda m: print(m, file=sys.stderr), progress=not args.quiet)
    metrics = {"model": args.model, "data": data_spec, **{k: v for k, v in result.items()
                                                           if k != "history"},
               "config": run.to_dict(), "dataset": dataset.summary(), "history": result["history"]}
    atomic_write_json(out / METRICS, metrics)
    print(f"best valid epoch {result['best_epoch']} of {result['epochs_run']} "
          f"({result['train_seconds']:.1f} s training)")
    print(_format_table(result["valid"], result["test"], run.train.topk))
    print(f"wrote {out / METRICS}")
    return 0


def cmd_evaluate(args) -> int:
    from latticerec.serve.runs import load_run
    from latticerec.train.build import resolve_device
    from latticerec.train.trainer import evaluate_split

    loaded = load_run(args.run, resolve_device(args.device))
    cfg = loaded.run.train
    valid = evaluate_split(loaded.model, loaded.dataset, "valid", cfg)
    test = evaluate_split(loaded.model, loaded.dataset, "test", cfg)
    print(f"{loaded.run.model} on {loaded.dataset.name} ({args.run})")
    print(_format_table(valid, test, cfg.topk))
    if args.json:
        print(json.dumps({"valid": valid, "test": test}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from latticerec.models.registry import BACKBONES, MODELS

    parser = argparse.ArgumentParser(prog="latticerec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model, evaluate it, write DIR/metrics.json")
    t.add_argument("--model", required=True, choices=sorted(MODELS))
    t.add_argument("--data", default="synthetic", help="dataset folder or 'synthetic'")
    t.add_argument("--backbone", choices=sorted(BACKBONES),
                   help="CF backbone of a multimodal model (lattice, micro, mmgef); default lightgcn")
    t.add_argument("--seed", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--set", nargs="+", action="append", metavar="KEY=VALUE",
                   help="override a config value (e.g. --set lr=0.001 n_layers=2)")
    t.add_argument("--out", help="run folder (default runs/<model>-<data>-<time>)")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--cache-dir", help="where initial kNN graphs are cached "
                   "(default $LATTICEREC_CACHE or ~/.cache/latticerec)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="re-evaluate a saved run on valid and test")
    e.add_argument("--run", required=True)
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    e.set_defaults(func=cmd_evaluate)

    from latticerec.serve.commands import add_serve_parser

    add_serve_parser(sub)
    from latticerec.data.commands import add_data_parser

    add_data_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return args.func(args)
    except (LatticeRecError, FileNotFoundError, FloatingPointError, RuntimeError, ValueError) as exc:
        print(f"latticerec: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
