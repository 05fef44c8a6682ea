"""``latticerec recommend`` (and, next, ``export`` and ``serve``): the serving commands."""

from __future__ import annotations


def cmd_recommend(args) -> int:
    from latticerec.serve.runs import load_run, recommend

    loaded = load_run(args.run)
    ds = loaded.dataset
    user = ds.user_index(args.user)
    recs = recommend(loaded.model, ds, user, args.k)
    print(f"top {len(recs)} items for user {args.user} ({loaded.run.model}, {ds.name}):")
    for rank, (item, score) in enumerate(recs, start=1):
        print(f"{rank:3d}  item {ds.raw_item_id(item):>10}  score {score:.4f}")
    return 0



def add_serve_parser(sub) -> None:
    """Register the serving commands on the CLI's sub-command parser."""
    r = sub.add_parser("recommend", help="print a user's top items from a saved run")
    r.add_argument("--run", required=True)
    r.add_argument("--user", required=True, help="user id as in the dataset files")
    r.add_argument("-k", type=int, default=20)
    r.set_defaults(func=cmd_recommend)
