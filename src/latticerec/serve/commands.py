"""``latticerec export``, ``serve`` and ``recommend``: the serving commands."""

from __future__ import annotations

import argparse
import sys
import time

from latticerec.errors import LatticeRecError


def int_at_least(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


positive_int = int_at_least(1)


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def port_number(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be in 1..65535, got {value}")
    return value


def cmd_export(args) -> int:
    from latticerec.serve.export import export_run

    out = export_run(args.run, args.out, overwrite=args.overwrite, cf_part=args.new_item_cf)
    print(f"wrote {out}; serve it with: latticerec serve {out}")
    return 0


def _recommender(model_dir: str, index: str, max_k: int, hnsw: dict | None = None):
    from latticerec.serve.artifact import load_model_dir
    from latticerec.serve.service import Recommender

    return Recommender(load_model_dir(model_dir), index=index, max_k=max_k, hnsw=hnsw)


def cmd_serve(args) -> int:
    import uvicorn
    from threadpoolctl import threadpool_limits

    from latticerec.serve.app import create_app

    # one BLAS thread per product: concurrent requests use the cores; a many-threaded product per
    # request only fights the other requests (10x slower on a busy 2-core machine)
    threadpool_limits(1, user_api="blas")
    start = time.perf_counter()
    rec = _recommender(args.model_dir, args.index, args.max_k,
                       {"m": args.hnsw_m, "ef_construction": args.hnsw_ef_construction,
                        "ef_search": args.hnsw_ef_search, "target_recall": args.hnsw_target_recall})
    h = rec.health()
    print(f"{h['model']}: {h['users']} users, {h['items']} items, index {h['index']} "
          f"(ready in {time.perf_counter() - start:.2f} s); open http://{args.host}:{args.port}/",
          file=sys.stderr, flush=True)
    uvicorn.run(create_app(rec), host=args.host, port=args.port, log_level=args.log_level,
                access_log=False)
    return 0


def cmd_recommend(args) -> int:
    from latticerec.serve.service import NotFound, Recommender

    if (args.run is None) == (args.model is None):
        raise LatticeRecError("recommend: give exactly one of --run RUN_DIR or --model MODEL_DIR")
    if args.model is not None:
        rec = _recommender(args.model, "exact", max(args.k, 1))
    else:
        from latticerec.serve.export import build_artifact
        from latticerec.train.rundir import RunDir, load_trained

        rec = Recommender(build_artifact(load_trained(RunDir(args.run))), max_k=args.k)
    try:
        items = rec.recommend_user(str(args.user), args.k)
    except NotFound as exc:
        raise LatticeRecError(str(exc)) from None
    print(f"top {len(items)} items for user {args.user} ({rec.art.model}, "
          f"{rec.art.manifest['dataset'].get('name')}):")
    for rank, it in enumerate(items, start=1):
        title = f"  {it['title']}" if it.get("title") else ""
        print(f"{rank:3d}  item {it['item']:>10}  score {it['score']:.4f}{title}")
    return 0


def serve_arguments(s: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``latticerec serve`` (also ``python -m latticerec.serve``)."""
    s.add_argument("model_dir", metavar="MODEL_DIR")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=port_number, default=8000)
    s.add_argument("--max-k", type=positive_int, default=1000, help="largest k a request may ask for")
    s.add_argument("--index", choices=("exact", "hnsw"), default="exact",
                   help="exact top-k, or a faiss HNSW index (its recall@20 is reported in /health)")
    s.add_argument("--hnsw-m", type=positive_int, default=32, help="HNSW graph degree M")
    s.add_argument("--hnsw-ef-construction", type=positive_int, default=200)
    s.add_argument("--hnsw-ef-search", type=positive_int, default=128,
                   help="HNSW search breadth (at least 2 (k + seen items) is used)")
    s.add_argument("--hnsw-target-recall", type=fraction, default=None, metavar="R",
                   help="at start-up, the smallest efSearch (doubled until it does, then bisected) whose "
                   "recall@20 on 200 users reaches R")
    s.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info"))
    s.set_defaults(func=cmd_serve)
    return s


def add_serve_parser(sub) -> None:
    """Register the serving commands on the CLI's sub-command parser."""
    e = sub.add_parser("export", help="write a trained run as a self-contained model folder")
    e.add_argument("--run", required=True, help="run folder written by 'latticerec train'")
    e.add_argument("--out", required=True, help="model folder to create")
    e.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    e.add_argument("--new-item-cf", choices=("neighbours", "isolated"), default="neighbours",
                   help="collaborative part of an item added by POST /items: the weighted mean of its "
                   "graph neighbours' backbone representations (default), or the model's output for an "
                   "item without interactions (docs/inductive.md)")
    e.set_defaults(func=cmd_export)

    serve_arguments(sub.add_parser("serve", help="serve an exported model over HTTP (and a web page at /)"))

    r = sub.add_parser("recommend", help="print a user's top items from a model folder or a run")
    r.add_argument("--model", help="model folder written by 'latticerec export' (fast)")
    r.add_argument("--run", help="run folder (rebuilds the model from its dataset)")
    r.add_argument("--user", required=True, help="user id as in the dataset files")
    r.add_argument("-k", type=positive_int, default=20)
    r.set_defaults(func=cmd_recommend)
