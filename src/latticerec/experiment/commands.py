"""``latticerec experiment``, ``report``, ``tune`` and ``plot``: the research workbench commands."""

from __future__ import annotations

import sys
from pathlib import Path

from latticerec.errors import LatticeRecError
from latticerec.serve.commands import int_at_least
from latticerec.serve.commands import positive_int as _positive

_non_negative = int_at_least(0)


def _set_options(groups) -> dict:
    from latticerec.config import parse_overrides

    return parse_overrides([kv for group in groups or [] for kv in group])


def cmd_experiment(args) -> int:
    from latticerec.experiment.results import write_results
    from latticerec.experiment.runner import attach_reuse, run_studies, run_tasks
    from latticerec.experiment.spec import load_spec, plan, plan_studies, restrict

    whole = load_spec(args.spec)
    spec = restrict(whole, args.models, args.datasets)
    out = Path(args.out or Path("runs") / "experiments" / whole.name)
    extra = _set_options(args.set)
    if args.check:
        return _check(spec, out, extra, args)
    studies = plan_studies(spec, out, extra)
    if studies:
        print(f"experiment {spec.name}: tuning {len(studies)} cells first ({spec.tune.trials} optuna trials "
              f"each on valid {spec.tune.metric}, {args.jobs} at a time)", file=sys.stderr)
        outcomes = []
        for wave in ([s for s in studies if not s.start_from], [s for s in studies if s.start_from]):
            if wave:  # the studies others start from (tune_start) first
                outcomes += run_studies(wave, jobs=args.jobs, device=args.device, cache_dir=args.cache_dir,
                                        log=lambda m: print(m, file=sys.stderr))
        failed = [f"{o['run_dir']}: {o['error']}" for o in outcomes if o["state"] == "failed"]
        if failed:
            raise LatticeRecError(f"{len(failed)} of {len(studies)} studies failed (rerun the command to "
                                  "resume them): " + "; ".join(failed))
    tasks = attach_reuse(plan(spec, out, extra=extra), args.reuse or [])
    reusable = sum(bool(t.reuse_from) for t in tasks)
    print(f"experiment {spec.name}: {len(tasks)} runs into {out} ({args.jobs} at a time"
          + (f"; {reusable} can be copied from --reuse" if args.reuse else "") + ")", file=sys.stderr)
    outcomes = run_tasks(tasks, jobs=args.jobs, device=args.device, cache_dir=args.cache_dir,
                         log=lambda m: print(m, file=sys.stderr))
    if spec is not whole:  # the results cover every finished run of the whole grid
        tasks = plan(whole, out, extra=extra, untuned="skip")
    written = write_results(whole, tasks, out)
    print(f"wrote {written['csv']} and {written['summary']}")
    failed = [o for o in outcomes if o["state"] == "failed"]
    if failed:
        raise LatticeRecError(f"{len(failed)} of {len(outcomes)} runs failed (rerun the command to retry "
                              f"them): " + "; ".join(f"{o['run_dir']}: {o['error']}" for o in failed))
    return 0


def _check(spec, out: Path, extra: dict, args) -> int:
    """``experiment --check``: each cell's runs and whether its model builds on its data; trains nothing.
    A tuned cell whose study has not run is checked with the spec's options alone."""
    from latticerec.experiment.runner import attach_reuse, check_tasks
    from latticerec.experiment.spec import plan

    tasks = attach_reuse(plan(spec, out, extra=extra, untuned="fixed"), args.reuse or [])
    outcomes = check_tasks(tasks, device=args.device, cache_dir=args.cache_dir,
                           log=lambda m: print(m, file=sys.stderr))
    failed = [o for o in outcomes if o["error"]]
    if failed:
        raise LatticeRecError(f"{len(failed)} of {len(outcomes)} cells cannot run: "
                              + "; ".join(f"{o['cell']}: {o['error']}" for o in failed))
    print(f"experiment {spec.name}: every cell of {len(outcomes)} can run ({len(tasks)} runs into {out})")
    return 0


def cmd_report(args) -> int:
    from latticerec.experiment.report import write_report

    path = write_report(args.output, args.out)
    print(f"wrote {path} and its figures")
    return 0


def cmd_tune(args) -> int:
    from latticerec.experiment.tune import start_point, tune

    out = Path(args.out or Path("runs") / f"tune-{args.model}-{Path(args.data).name}")
    start = start_point(args.start_from) if args.start_from else None
    record = tune(args.model, args.data, args.trials, out, storage=args.storage,
                  study_name=args.study_name, metric=args.metric, epochs=args.epochs,
                  fixed=_set_options(args.set), seed=args.seed, warmup=args.warmup, device=args.device,
                  cache_dir=args.cache_dir, start=start, log=lambda m: print(m, file=sys.stderr))
    print(f"best trial {record['best_trial']} of {sum(record['trials'].values())}: valid "
          f"{record['metric']} {record['best_valid']:.4f}; its test metrics (read once, now): "
          + ", ".join(f"{k} {record['test'][k]:.4f}" for k in ("recall@20", "ndcg@20")))
    print(f"wrote {out / 'best_config.json'} (train it: latticerec train --model {args.model} --config "
          f"{out / 'best_config.json'}) and {out / 'best_trial.json'}")
    return 0


def cmd_plot(args) -> int:
    from latticerec.experiment.plots import write_curves

    path = write_curves(args.run, args.out)
    print(f"wrote {path}" if path else f"{args.run}: no epochs to plot (nothing was trained)")
    return 0


def _common(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--cache-dir", help="where initial kNN graphs are cached "
                   "(default $LATTICEREC_CACHE or ~/.cache/latticerec)")


def add_experiment_parser(sub) -> None:
    """Register the workbench commands on the CLI's sub-command parser."""
    e = sub.add_parser("experiment", help="run an experiment spec (models x datasets x seeds x options): "
                       "results.csv, summary.md with paired tests against a reference model; a spec "
                       "with [tune] first tunes every model on validation with the same optuna budget")
    e.add_argument("spec", metavar="SPEC.toml", help="experiment spec (configs/experiments/*.toml)")
    e.add_argument("--jobs", type=_positive, default=1, help="runs trained at once (processes)")
    e.add_argument("--out", help="output folder (default runs/experiments/<spec name>)")
    e.add_argument("--set", nargs="+", action="append", metavar="KEY=VALUE",
                   help="override an option of every run (e.g. --set epochs=30); changes the runs' "
                   "configs, so give a new --out")
    e.add_argument("--reuse", action="append", metavar="DIR",
                   help="copy a planned run from a finished run with the same model, data and "
                   "options found under DIR (e.g. another experiment's output) instead of training "
                   "it again; repeatable")
    e.add_argument("--models", nargs="+", metavar="LABEL",
                   help="run only these model labels of the spec (results.csv and summary.md still "
                   "cover every finished run of the grid)")
    e.add_argument("--datasets", nargs="+", metavar="NAME",
                   help="run only these datasets of the spec (folder name or path as the spec gives it)")
    e.add_argument("--check", action="store_true",
                   help="train nothing: list each cell's runs (finished, cut, to train, copied from "
                   "--reuse) and build each cell's model once on its data, so that a cell that "
                   "cannot run fails now, not when its turn comes (an error naming each such cell)")
    _common(e)
    e.set_defaults(func=cmd_experiment)

    r = sub.add_parser("report", help="markdown tables and PNG figures of a finished experiment")
    r.add_argument("output", metavar="SPEC_OUTPUT", help="the experiment's output folder")
    r.add_argument("--out", help="report folder (default SPEC_OUTPUT/report)")
    r.set_defaults(func=cmd_report)

    t = sub.add_parser("tune", help="tune a model's options with optuna on the validation split "
                       "(never test); write the best config for 'train --config'")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True, help="dataset folder or 'synthetic'")
    t.add_argument("--trials", type=_positive, required=True, help="trials the study should hold "
                   "(finished or pruned; a resumed study runs only the missing ones)")
    t.add_argument("--storage", help="optuna storage URL (default sqlite:///OUT/study.db)")
    t.add_argument("--study-name", help="default <model>-<data folder name>")
    t.add_argument("--out", help="folder of the trials' runs and the best config "
                   "(default runs/tune-<model>-<data>)")
    t.add_argument("--metric", default="recall@20", help="objective: valid recall@20 or ndcg@20")
    t.add_argument("--epochs", type=_positive, default=50, help="epoch cap of each trial (default 50)")
    t.add_argument("--seed", type=int, default=2024, help="seed of the sampler and of every trial")
    t.add_argument("--warmup", type=_non_negative, default=5, help="epochs before the median pruner "
                   "may stop a trial (default 5)")
    t.add_argument("--set", nargs="+", action="append", metavar="KEY=VALUE",
                   help="fixed options of every trial (not tuned)")
    t.add_argument("--start-from", metavar="DIR", help="a finished study's folder (or its "
                   "best_trial.json): the first trial trains its best options (e.g. a wrapped backbone's "
                   "study), within the same --trials")
    _common(t)
    t.set_defaults(func=cmd_tune)

    p = sub.add_parser("plot", help="loss and validation curves of a run as PNG (RUN/curves.png)")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--out", help="PNG file (default RUN/curves.png)")
    p.set_defaults(func=cmd_plot)
