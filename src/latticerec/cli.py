"""The latticerec command line: train, evaluate, export, serve and recommend; prepare datasets.

Errors a user can cause (bad data, options or run folders) are printed as one line,
"latticerec: error: ...", with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import re
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


def _train_overrides(args) -> dict:
    from latticerec.config import parse_overrides
    from latticerec.experiment.optfile import read_options_file
    from latticerec.models.registry import get_model_class

    given = parse_overrides([kv for group in args.set or [] for kv in group])
    backbone = args.backbone if args.backbone is not None else given.get("backbone")
    overrides = read_options_file(args.config, args.model, backbone) if args.config else {}
    overrides.update(given)
    for name in ("epochs", "seed", "protocol"):  # parsed and checked with the config, like --set
        if getattr(args, name) is not None:
            if name in given:
                raise LatticeRecError(f"--{name} {getattr(args, name)} and --set {name}={given[name]}: "
                                      "give the option once")
            overrides[name] = getattr(args, name)
    if args.backbone is not None:
        if not getattr(get_model_class(args.model), "wraps_backbone", False):
            raise LatticeRecError(f"--backbone: model {args.model!r} does not wrap a backbone")
        if "backbone" in given:  # the flag would win silently
            raise LatticeRecError(f"--backbone {args.backbone} and --set backbone={given['backbone']}: "
                                  "give the option once")
        overrides["backbone"] = args.backbone
    return overrides


def _check_resumable(run_dir, saved: dict | None, config: dict, data_spec: str) -> None:
    """``--resume`` continues the run saved in the folder: same model, data and options (only the
    stopping rule, ``epochs`` and ``patience``, may change)."""
    from latticerec.train.trainer import STOPPING_KEYS

    def training(c: dict) -> dict:
        train = c.get("train") if isinstance(c.get("train"), dict) else {}
        return {**c, "train": {k: v for k, v in train.items() if k not in STOPPING_KEYS}}

    if saved is None:
        raise LatticeRecError(f"--resume: {run_dir.path} holds no run to resume")
    from latticerec.train.rundir import read_run_config

    # read back as a config: a run saved before an option existed gets that option's default
    saved_config = read_run_config(run_dir, saved).to_dict()
    if training(saved_config) != training(config) or saved["data"] != data_spec:
        raise LatticeRecError(f"--resume: the options differ from the run saved in {run_dir.path}; "
                              "give the same --model/--data/--set as the original run (only the "
                              "stopping rule, --epochs and patience, may change)")


def cmd_train(args) -> int:
    """``latticerec train``; with ``--nproc N`` (N > 1) it starts N ranks of itself through torchrun's
    launcher, and run as a rank (by that or by ``torchrun``) it trains distributed (docs/distributed.md)."""
    from latticerec.train import distributed
    from latticerec.train.build import resolve_config, resolve_device

    nproc = getattr(args, "nproc", 1)
    if nproc < 1:
        raise LatticeRecError(f"--nproc: {nproc}: give at least 1 process")
    if args.model is None:
        if not args.config:
            raise LatticeRecError("train: give --model MODEL, or --config FILE whose file names the model")
        from latticerec.experiment.optfile import model_of_options_file

        args.model = model_of_options_file(args.config)
    run = resolve_config(args.model, _train_overrides(args))
    device = resolve_device(args.device)
    if nproc > 1 and not distributed.launched():
        return distributed.launch(nproc, args.argv)
    with distributed.joined(distributed.init(device)) as dist:
        if dist is not None and device.type == "cuda":
            device = dist.device  # one GPU per rank: cuda:LOCAL_RANK
        return _train(args, run, device, dist)


def _rank_model(run, dataset, expected_hash: str, device, cache, rank: int):
    """A rank other than 0: its model, once its data is checked to be rank 0's."""
    from latticerec.train.build import build_model

    if dataset.content_hash() != expected_hash:
        raise LatticeRecError(f"rank {rank}: --data differs from rank 0's (dataset content hash): "
                              "every machine needs the same data at the same path")
    return build_model(run, dataset, device, cache)


def _train(args, run, device, dist) -> int:
    """Train one run; in a distributed run (``dist``) only rank 0 touches the run folder and prints."""
    from latticerec.train.rundir import RunDir

    main_rank = dist is None or dist.is_main
    run_dir = RunDir(args.out or _default_out(args.model, args.data))
    new_folder = main_rank and not run_dir.path.exists()
    try:
        return _train_into(args, run, device, dist, run_dir, main_rank)
    except BaseException:
        if new_folder:  # a run that failed before writing anything leaves no empty folder behind
            try:
                run_dir.path.rmdir()
            except OSError:
                pass
        raise


def _train_into(args, run, device, dist, run_dir, main_rank: bool) -> int:
    from contextlib import ExitStack

    from latticerec.data.readers import load_dataset
    from latticerec.graphs.cache import KnnGraphCache
    from latticerec.train.build import build_model
    from latticerec.train.rundir import RunDir
    from latticerec.train.trainer import fit

    if args.export and main_rank:
        from latticerec.serve.export import check_export_target

        check_export_target(args.export, args.overwrite)
    data_spec = args.data if args.data == "synthetic" else str(Path(args.data).resolve())
    cache = KnnGraphCache(args.cache_dir)
    cache.check_writable()  # before the data load: a read-only or full disk is reported at once

    def setup(held: ExitStack):
        if not main_rank:  # the other ranks: data now, their model once rank 0 filled the graph cache
            return load_dataset(args.data), None, None
        held.enter_context(run_dir.lock())  # checks the folder is writable; held until the run is written
        run_dir.prepare(args.resume, args.overwrite, remove=False)  # --overwrite deletes below, once
        # the data and the model are known to be good: a typo must not cost the old run
        saved = run_dir.read_config() if args.resume and run_dir.has_config() else None
        if args.resume:
            _check_resumable(run_dir, saved, run.to_dict(), data_spec)
        dataset = load_dataset(args.data)
        data_hash = dataset.content_hash()
        if saved is not None and saved.get("dataset_hash") != data_hash:
            raise LatticeRecError(
                f"--resume: the data in {args.data} changed since the run in {run_dir.path} was "
                "trained (content hash differs)" if saved.get("dataset_hash") else
                f"--resume: {run_dir.file(RunDir.CONFIG)} has no dataset hash (an older latticerec "
                "wrote it), so the data cannot be checked; start again with --overwrite")
        model = build_model(run, dataset, device, cache)
        run_dir.prepare(args.resume, args.overwrite)
        run_dir.write_config({"model": args.model, "data": data_spec, "config": run.to_dict(),
                              "dataset_hash": data_hash})
        return dataset, data_hash, model

    with ExitStack() as held:
        if dist is None:
            dataset, data_hash, model = setup(held)
        else:  # every rank learns whether the others' setup failed, none waits for a failed one
            dataset, data_hash, model = dist.together(lambda: setup(held))
            expected = dist.broadcast_state({"dataset_hash": data_hash})["dataset_hash"]
            model = dist.together(lambda: model if model is not None else
                                  _rank_model(run, dataset, expected, device, cache, dist.rank))
        if not main_rank:
            fit(model, dataset, run.train, resume=args.resume, progress=False, dist=dist)
            return 0
        print(f"{args.model} on {dataset.name}: {dataset.n_users} users, {dataset.n_items} items, "
              f"{dataset.train.nnz} train interactions; run folder {run_dir.path}"
              + (f"; {dist.world} processes" if dist else ""), file=sys.stderr)
        result = fit(model, dataset, run.train, out_dir=run_dir, resume=args.resume,
                     log=lambda m: print(m, file=sys.stderr), progress=not args.quiet, dist=dist)
        run_dir.write_metrics({"model": args.model, "data": data_spec,
                               **{k: v for k, v in result.items() if k != "history"},
                               "config": run.to_dict(), "dataset": dataset.summary(),
                               "dataset_hash": data_hash, "history": result["history"],
                               **({"processes": dist.world} if dist else {})})
    print(f"best valid epoch {result['best_epoch']} of {result['epochs_run']} "
          f"({result['train_seconds']:.1f} s training)")
    print(_format_table(result["valid"], result["test"], run.train.topk))
    if run.train.eval_users:
        print(_sample_note(run.train))
    from latticerec.experiment.plots import write_curves

    curves = write_curves(run_dir.path)
    print(f"wrote {run_dir.file(RunDir.METRICS)}, per-user test metrics {run_dir.file(RunDir.PER_USER)}"
          + (f" and curves {curves}" if curves else ""))
    if args.export:
        from latticerec.serve.export import export_trained
        from latticerec.train.rundir import TrainedRun

        trained = TrainedRun(meta=run_dir.read_config(), run=run, dataset=dataset, model=model.eval(),
                             run_dir=run_dir, best_epoch=result["best_epoch"])
        out = export_trained(trained, args.export, overwrite=args.overwrite)
        print(f"exported the model to {out}\nserve it:  latticerec serve {out}   "
              "(then open http://127.0.0.1:8000/)\nor ask it: latticerec recommend "
              f"--model {out} --user <user id> -k 20")
    return 0


def cmd_evaluate(args) -> int:
    from latticerec.graphs.cache import KnnGraphCache
    from latticerec.train.build import resolve_device
    from latticerec.train.rundir import RunDir, load_trained
    from latticerec.train.trainer import evaluate_split

    cache = KnnGraphCache(args.cache_dir)
    cache.check_writable()
    trained = load_trained(RunDir(args.run), resolve_device(args.device), cache, data=args.data)
    cfg = trained.run.train
    valid = evaluate_split(trained.model, trained.dataset, "valid", cfg)
    test = evaluate_split(trained.model, trained.dataset, "test", cfg)
    finished = trained.run_dir.file(RunDir.METRICS).exists()
    print(f"{trained.run.model} on {trained.dataset.name} ({args.run})")
    print(_format_table(valid, test, cfg.topk))
    if not finished:
        print(f"the run has not finished (no {RunDir.METRICS}): these are the weights of its best "
              f"validation epoch so far (epoch {trained.best_epoch})")
    if cfg.eval_users:
        print(_sample_note(cfg))
    if args.json:
        print(json.dumps({"valid": valid, "test": test, "finished": finished,
                          "best_epoch": trained.best_epoch, "eval_users": cfg.eval_users}, indent=2))
    return 0


def _sample_note(cfg) -> str:
    return (f"metrics over a seeded sample of at most {cfg.eval_users} users per split "
            f"(eval_users={cfg.eval_users}, seed {cfg.seed}), not every user")


def _per_user_runs(path: str) -> dict:
    """Per-user test metrics of a run folder (``{None: arrays}``) or of an experiment cell, a folder
    of ``seed-N`` run folders (``{N: arrays}`` for each finished one)."""
    from latticerec.train.rundir import RunDir

    run = RunDir(path)
    if run.file(run.PER_USER).exists():
        return {None: run.read_per_user()}
    seeds = {}
    for sub in sorted(Path(path).glob("seed-*")):
        if re.fullmatch(r"seed-[0-9]+", sub.name) and RunDir(sub).file(RunDir.PER_USER).exists():
            seeds[int(sub.name[5:])] = RunDir(sub).read_per_user()
    if not seeds:
        raise LatticeRecError(f"{path}: neither a finished run (no per_user.npz) nor an experiment cell "
                              "(no seed-N folder with one)")
    return seeds


def cmd_compare(args) -> int:
    """Paired significance tests of two runs, or of two experiment cells seed-matched, over the users
    they were both tested on."""
    from latticerec.experiment.results import seed_matched_test

    a, b = _per_user_runs(args.run_a), _per_user_runs(args.run_b)
    if (None in a) != (None in b):
        raise LatticeRecError("compare two runs, or two experiment cells (folders of seed-N runs), not one "
                              "of each")
    runs = [*a.values(), *b.values()]
    metrics = args.metric or sorted(k for k in runs[0] if k.endswith("@20") and all(k in r for r in runs))
    missing = [m for m in metrics if not all(m in r for r in runs)]
    if missing:
        raise LatticeRecError(f"--metric: {', '.join(missing)} not in both runs' per-user metrics; "
                              f"available: {', '.join(sorted(k for k in runs[0] if '@' in k))}")
    if not set(a) & set(b):
        raise LatticeRecError(f"no seed finished in both cells: A has {sorted(a)}, B has {sorted(b)}")
    rows = []
    for m in metrics:
        try:
            res, seeds = seed_matched_test(a, b, m)
        except ValueError as exc:
            raise LatticeRecError(f"compare {m}: {exc}") from None
        rows.append({"metric": m, **res.to_dict(), "significant": res.significant(args.alpha),
                     **({"seeds": seeds} if None not in a else {})})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    seeds = (f"; seeds {', '.join(map(str, rows[0]['seeds']))} finished in both, each user's metric "
             "averaged over them" if "seeds" in rows[0] else "")
    print(f"A = {args.run_a}\nB = {args.run_b}\n{rows[0]['n']} users tested by both{seeds}; "
          f"two-sided p-values, significant = both tests below {args.alpha}")
    print(f"{'metric':>12} {'mean A':>8} {'mean B':>8} {'A - B':>8} {'t':>8} {'p (t)':>9} "
          f"{'p (Wilcoxon)':>13} {'d_z':>7}  significant")
    for r in rows:
        print(f"{r['metric']:>12} {r['mean_a']:8.4f} {r['mean_b']:8.4f} {r['mean_diff']:+8.4f} "
              f"{r['t']:8.3f} {r['p_t']:9.2e} {r['p_wilcoxon']:13.2e} {r['effect_size']:+7.3f}  "
              f"{'yes' if r['significant'] else 'no'}")
    return 0


class _RegistryNames:
    """The names of a registry dict, imported only when ``train --model/--backbone`` is parsed or its
    help shown: building the parser imports no model (and so no torch), so ``latticerec serve`` starts
    without it."""

    def __init__(self, attr: str):
        self.attr = attr

    def _names(self) -> list[str]:
        from latticerec.models import registry

        return sorted(getattr(registry, self.attr))

    def __contains__(self, name) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latticerec", description="Multimodal recommendation by latent item structures (LATTICE, "
        "MICRO, MM-GEF on MF/NGCF/LightGCN): train and evaluate models, export and serve them, "
        "prepare datasets. Errors are printed as 'latticerec: error: ...' with exit status 2.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model, evaluate it, write DIR/metrics.json")
    t.add_argument("--model", choices=_RegistryNames("MODELS"), metavar="MODEL",
                   help="lattice, micro, mmgef, cb, mf, lightgcn, ngcf; baselines pop, itemknn, vbpr, "
                   "freedom, sgl, mmgcn, grcn, bm3 (the registry); may be left to --config's file")
    t.add_argument("--data", default="synthetic", help="dataset folder or 'synthetic'")
    t.add_argument("--backbone", choices=_RegistryNames("BACKBONES"), metavar="BACKBONE",
                   help="CF backbone of a multimodal model (lattice, micro, mmgef); default lightgcn")
    t.add_argument("--seed", help="random seed, an integer in [0, 2**32 - 1] (default 2024)")
    t.add_argument("--epochs", help="maximum number of epochs (default 1000)")
    t.add_argument("--protocol", help="latticerec (default) or released: the released LATTICE/MICRO "
                   "code's training loop as a preset (same as --set protocol=released)")
    t.add_argument("--config", metavar="FILE", help="options file (JSON/TOML: model, [options]), e.g. "
                   "the best_config.json of 'latticerec tune'; --set and the flags apply on top")
    t.add_argument("--set", nargs="+", action="append", metavar="KEY=VALUE",
                   help="override a config value (e.g. --set lr=0.001 n_layers=2)")
    t.add_argument("--out", help="run folder (default runs/<model>-<data>-<time>)")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train data-parallel in N processes on this machine (torch.distributed: gloo "
                   "on CPU, NCCL on CUDA; launched like torchrun --standalone --nproc-per-node N). "
                   "For several machines run 'torchrun ... -m latticerec train ...' (docs/distributed.md)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (same data and options; "
                   "only --epochs and patience may change)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it an existing run is refused)")
    t.add_argument("--export", metavar="MODEL_DIR",
                   help="after training, export the best model to MODEL_DIR for 'latticerec serve'")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--cache-dir", help="where initial kNN graphs are cached "
                   "(default $LATTICEREC_CACHE or ~/.cache/latticerec)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="re-evaluate a saved run on valid and test")
    e.add_argument("--run", required=True)
    e.add_argument("--device", default="cpu")
    e.add_argument("--data", help="the run's dataset at another path (moved since training); it must "
                   "be the same data: its content hash is checked")
    e.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    e.add_argument("--cache-dir", help="where initial kNN graphs are cached "
                   "(default $LATTICEREC_CACHE or ~/.cache/latticerec)")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="paired t-test and Wilcoxon signed-rank test of two runs over "
                       "their per-user test metrics (or of two experiment cells, seed-matched)")
    c.add_argument("run_a", metavar="RUN_A", help="a run folder, or an experiment cell's folder of "
                   "seed-N runs (runs/<label>/<dataset>/<point> of an experiment output)")
    c.add_argument("run_b", metavar="RUN_B", help="the same kind of folder as RUN_A")
    c.add_argument("--metric", action="append", help="per-user metric, e.g. recall@20 (repeatable; "
                   "default every @20 metric)")
    c.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    c.add_argument("--json", action="store_true", help="print the results as JSON")
    c.set_defaults(func=cmd_compare)

    from latticerec.serve.commands import add_serve_parser

    add_serve_parser(sub)
    from latticerec.datasets.commands import add_data_parser

    add_data_parser(sub)
    from latticerec.experiment.commands import add_experiment_parser

    add_experiment_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what ``train --nproc`` starts again
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return args.func(args)
    except (LatticeRecError, FileNotFoundError, RuntimeError, ValueError) as exc:
        message = str(exc)
    except OSError as exc:  # a read or write the code did not wrap: still a line, not a traceback
        message = f"{getattr(exc, 'filename', None) or ''}: {exc.strerror or exc}".lstrip(": ")
    except MemoryError:
        message = "out of memory (a dataset, model or option too large for this machine)"
    except KeyboardInterrupt:
        print("latticerec: interrupted", file=sys.stderr)
        return 130
    print(f"latticerec: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
