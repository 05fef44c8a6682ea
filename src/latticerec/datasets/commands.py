"""``latticerec data ...``: build, import, encode, split, download and describe datasets."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from latticerec.errors import DataError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _max_bad(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def cmd_build_amazon(args) -> int:
    from latticerec.datasets.amazon import build_amazon

    t = time.perf_counter()
    report = build_amazon(args.reviews, args.out, meta=args.meta, images=args.images, name=args.name,
                          core=args.core, seed=args.seed,
                          text_model=None if args.text_model == "none" else args.text_model,
                          image_dim=args.image_dim, max_bad=args.max_bad, batch_size=args.batch_size,
                          progress=not args.quiet, log=_log)
    print(f"{report['name']}: {report['users']} users, {report['items']} items, "
          f"{report['interactions']} interactions ({report['train']}/{report['valid']}/"
          f"{report['test']} train/valid/test) in {time.perf_counter() - t:.1f} s -> {args.out}")
    return 0


def cmd_encode_text(args) -> int:
    import numpy as np

    from latticerec.data.mapping import I_MAPPING, read_mapping
    from latticerec.datasets.encode import align_to_mapping, encode_texts, read_item_table
    from latticerec.datasets.prepare import save_npy

    t = time.perf_counter()
    table = read_item_table(args.items, args.fields, args.id_field)
    out = Path(args.out)
    if out.suffix != ".npy":
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", args.modality):
            raise DataError(f"--modality {args.modality!r}: a feature name of letters, digits, '_' or '-' "
                            "(it names the file <modality>_feat.npy)")
        out = out / f"{args.modality}_feat.npy"
    blocker = next((p for p in (out.parent, *out.parent.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # checked before the model loads, not after the encoding
        raise DataError(f"--out {out}: {blocker} is a file, not a folder")
    if out.exists() and not out.is_file():
        raise DataError(f"--out {out}: not a regular file")
    if out.exists() and not args.overwrite:
        raise DataError(f"--out {out}: the file exists; refusing to overwrite it (--overwrite replaces it)")
    mapping = Path(args.mapping) if args.mapping else out.parent / I_MAPPING
    if args.mapping and not mapping.is_file():
        raise DataError(f"{mapping}: no such id mapping")
    feats = encode_texts(table.texts, args.model, args.batch_size, progress=not args.quiet)
    note = "rows in item-table order"
    if mapping.is_file():
        feats, missing = align_to_mapping(table, read_mapping(mapping), feats, str(mapping))
        note = f"rows aligned to {mapping} ({missing} items without text got the mean vector)"
    save_npy(out, feats.astype(np.float32))
    print(f"encoded {len(table.ids)} items (fields: {', '.join(table.fields)}) with {args.model}: "
          f"{feats.shape[0]} x {feats.shape[1]} in {time.perf_counter() - t:.1f} s, {note} -> {out}")
    return 0


def cmd_import_recbole(args) -> int:
    from latticerec.datasets.recbole import import_recbole

    t = time.perf_counter()
    r = import_recbole(args.source, args.out, name=args.name, seed=args.seed, core=args.core,
                       min_rating=args.min_rating, max_bad=args.max_bad, progress=not args.quiet,
                       log=_log)
    print(f"{r['users']} users, {r['items']} items, {r['interactions']} interactions "
          f"({r['train']}/{r['valid']}/{r['test']} train/valid/test; {r['duplicates_dropped']} "
          f"duplicates dropped) in {time.perf_counter() - t:.1f} s -> {args.out}")
    return 0


def cmd_cold_start(args) -> int:
    from latticerec.data.readers import load_dataset
    from latticerec.datasets.coldstart import cold_start_split, inductive_cold_start_split

    if args.inductive:
        if args.rank_all:
            raise DataError("--rank-all applies to the transductive split only (an inductive split's "
                            "cold items are ranked after they are placed: see docs/inductive.md)")
        r = inductive_cold_start_split(load_dataset(args.data), args.out, seed=args.seed,
                                       fraction=args.fraction, holdout=args.holdout, name=args.name)
        print(f"inductive cold-start split: {r['users']} users, {r['warm_items']} warm items "
              f"({r['train_interactions']}/{r['valid_interactions']}/{r['test_interactions']} "
              f"train/valid/test warm interactions) -> {args.out}; {r['cold_valid_items']} valid and "
              f"{r['cold_test_items']} test cold items ({r['cold_valid_interactions']}/"
              f"{r['cold_test_interactions']} interactions) -> {Path(args.out) / 'cold'}; "
              f"{r['dropped_users']} users without a warm interaction dropped")
        return 0
    r = cold_start_split(load_dataset(args.data), args.out, seed=args.seed, fraction=args.fraction,
                         rank="all" if args.rank_all else "cold", name=args.name)
    print(f"cold-start split: {r['cold_valid_items']} valid and {r['cold_test_items']} test cold items; "
          f"{r['train_interactions']}/{r['valid_interactions']}/{r['test_interactions']} "
          f"train/valid/test interactions -> {args.out}")
    return 0


def cmd_download(args) -> int:
    from latticerec.datasets.download import download, known_datasets

    if args.list or args.name is None:
        for name, files in known_datasets().items():
            print(f"{name:<20} {', '.join(f.name for f in files)}")
        return 0
    pins = dict(p.split("=", 1) for p in args.sha256 or [])
    paths = download(args.name, args.out, base_url=args.base_url, sha256=pins, files=args.files,
                     timeout=args.timeout, progress=not args.quiet, log=_log)
    for p in paths:
        print(p)
    return 0


def cmd_stats(args) -> int:
    from latticerec.data.readers import load_dataset
    from latticerec.datasets.stats import basic_stats, format_stats, pilot_studies

    ds = load_dataset(args.path)
    basic = basic_stats(ds)
    pilot = {} if args.no_pilot else pilot_studies(ds, split=args.split, seed=args.seed)
    if args.json:
        print(json.dumps({"dataset": ds.name, **basic, "modalities": pilot}, indent=2))
    else:
        print(f"{ds.name} ({args.path})")
        print(format_stats(basic, pilot))
    return 0


def cmd_synth(args) -> int:
    from latticerec.datasets.synth import parse_dims, write_synthetic

    report = write_synthetic(args.out, args.users, args.items, args.interactions, parse_dims(args.dims),
                             n_clusters=args.clusters, seed=args.seed,
                             log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(report))
    print(f"wrote {args.out}; train on it: latticerec train --model lattice --data {args.out}")
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``data`` command group on the top-level CLI's subparsers."""
    d = sub.add_parser("data", help="build, import, encode, split, download and describe datasets")
    ds = d.add_subparsers(dest="data_command", required=True)

    b = ds.add_parser("build-amazon", help="Amazon 2014 category files -> MMRec layout (k-core, split, "
                                           "text and image features)")
    b.add_argument("--reviews", required=True, help="reviews_<Cat>_5.json.gz (JSON lines)")
    b.add_argument("--meta", help="meta_<Cat>.json.gz (Python dict literals); gives text features")
    b.add_argument("--images", help="image_features_<Cat>.b (10-byte ASIN + float32 records)")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--name", help="dataset name (default: the category from the reviews file name)")
    b.add_argument("--core", type=int, default=5, help="k of the k-core filter (default 5)")
    b.add_argument("--seed", type=int, default=0, help="seed of the per-user split")
    b.add_argument("--text-model", default="all-MiniLM-L6-v2",
                   help="sentence-transformers model name or folder, or 'none' (no text features)")
    b.add_argument("--image-dim", type=int, default=4096)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--max-bad", type=_max_bad, default=0.01,
                   help="tolerated malformed lines: a share (< 1) or a count (>= 1); default 0.01")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_build_amazon)

    e = ds.add_parser("encode-text", help="text features of an item table with a sentence-transformers "
                                          "model (offline)")
    e.add_argument("items", help="item table: RecBole .item, TSV/CSV with a header, or JSON lines")
    e.add_argument("--fields", nargs="+", help="text columns (default: every text column of a "
                                               ".item file; 'title' matches 'movie_title')")
    e.add_argument("--id-field", help="item id column (default: item_id/itemID/item/asin/id or the first)")
    e.add_argument("--out", required=True,
                   help="a .npy file, or a dataset folder (writes <modality>_feat.npy there, aligned "
                        "to its i_id_mapping.csv when present)")
    e.add_argument("--mapping", help="i_id_mapping.csv whose item order the rows follow")
    e.add_argument("--modality", default="text", help="feature name when --out is a folder")
    e.add_argument("--model", default="all-MiniLM-L6-v2", help="model name or local folder")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--overwrite", action="store_true", help="replace an existing feature file")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_encode_text)

    r = ds.add_parser("import-recbole", help="RecBole atomic files (.inter/.item) -> MMRec layout")
    r.add_argument("source", help="a .inter file or a folder holding one")
    r.add_argument("--out", required=True)
    r.add_argument("--name", help="dataset name (default: the .inter file's stem)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--core", type=int, default=0, help="k-core filter (default: none)")
    r.add_argument("--min-rating", type=float, help="keep interactions rated at least this")
    r.add_argument("--max-bad", type=_max_bad, default=0.01)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_import_recbole)

    c = ds.add_parser("cold-start", help="cold-start split: 20%% of items lose their training "
                                         "interactions, half valid, half test")
    c.add_argument("data", help="dataset folder")
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--fraction", type=float, default=0.2)
    c.add_argument("--name", help="dataset name (default <name>-cold)")
    c.add_argument("--rank-all", action="store_true",
                   help="evaluate by ranking all items instead of the split's cold items")
    c.add_argument("--inductive", action="store_true",
                   help="the training folder holds nothing of the cold items (no interactions, no "
                        "feature rows); their features and interactions go to OUT/cold/")
    c.add_argument("--holdout", type=float, default=0.2,
                   help="--inductive: share of users (with 3+ warm interactions) giving one warm "
                        "interaction to valid, and another share to test (default 0.2)")
    c.set_defaults(func=cmd_cold_start)

    w = ds.add_parser("download", help="download a known public dataset (resumable, sha256-checked)")
    w.add_argument("name", nargs="?", help="dataset name (see --list)")
    w.add_argument("--out", default="data", help="folder (default ./data)")
    w.add_argument("--list", action="store_true", help="list known datasets")
    w.add_argument("--files", nargs="+", help="only these files of the dataset")
    w.add_argument("--base-url", help="a mirror: replaces the folder part of each URL")
    w.add_argument("--sha256", nargs="+", metavar="FILE=HEX", help="pin a file's checksum")
    w.add_argument("--timeout", type=float, default=30.0)
    w.add_argument("--quiet", action="store_true")
    w.set_defaults(func=cmd_download)

    y = ds.add_parser("synth", help="the synthetic generator at any size (clusters, content predicts "
                      "behaviour), streamed to the MMRec layout with bounded memory")
    y.add_argument("--users", type=int, required=True)
    y.add_argument("--items", type=int, required=True)
    y.add_argument("--interactions", type=int, required=True, help="about this many in all")
    y.add_argument("--dims", default="image=512,text=384", help="modality=size,... (default "
                   "image=512,text=384)")
    y.add_argument("--clusters", type=int, help="latent clusters (default sqrt(items)/4, 8..1024)")
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--out", required=True, help="output folder")
    y.set_defaults(func=cmd_synth)

    s = ds.add_parser("stats", help="sizes, density and the MICRO pilot studies (Tables 1 and 2)")
    s.add_argument("path", help="dataset folder or 'synthetic'")
    s.add_argument("--split", default="all", choices=["all", "train", "valid", "test"],
                   help="interactions used for co-interaction (default: all)")
    s.add_argument("--seed", type=int, default=0, help="seed of the shuffled baseline")
    s.add_argument("--no-pilot", action="store_true", help="sizes only")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)
