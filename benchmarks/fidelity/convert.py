"""Write a dataset in the released LATTICE/MICRO code's on-disk layout, for side-by-side runs.

The released code reads ``<root>/<name>/5-core/{train,val,test}.json`` (``{"user": [items]}``, users
with an empty list left out) and exactly two modality files, ``image_feat.npy`` and ``text_feat.npy``.
TikTok has image and audio features and no text: ``--text audio`` writes the audio matrix as
``text_feat.npy``. Features are written as float32 (the released code turns them into float32
tensors; latticerec reads them as float32 too), so both sides read identical numbers.

    python benchmarks/fidelity/convert.py ../shared/data/tiktok /tmp/fidelity/data/tiktok --text audio

The split is the source's split, unchanged: the same (user, item) pairs land in the same split and
keep their ids, which the script checks by reading the written folder back with latticerec.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def split_to_json(matrix) -> dict[str, list[int]]:
    """``{"user": [items]}`` for every user with at least one item in ``matrix`` (CSR, users x items)."""
    out = {}
    for u in range(matrix.shape[0]):
        items = matrix.indices[matrix.indptr[u]:matrix.indptr[u + 1]]
        if items.size:
            out[str(u)] = sorted(int(i) for i in items)
    return out


def convert(source: Path, dest: Path, image: str, text: str) -> dict:
    from latticerec.data.readers import load_dataset

    data = load_dataset(source)
    missing = [m for m in (image, text) if m not in data.features]
    if missing:
        raise SystemExit(f"{source}: no {missing} features (has {sorted(data.features)})")
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest}: exists and is not empty; give a new folder")
    (dest / "5-core").mkdir(parents=True, exist_ok=True)
    for split, fname in (("train", "train.json"), ("valid", "val.json"), ("test", "test.json")):
        (dest / "5-core" / fname).write_text(json.dumps(split_to_json(data.split(split))))
    np.save(dest / "image_feat.npy", np.ascontiguousarray(data.features[image], dtype=np.float32))
    np.save(dest / "text_feat.npy", np.ascontiguousarray(data.features[text], dtype=np.float32))
    back = load_dataset(dest)
    for split in ("train", "valid", "test"):
        if (back.split(split) != data.split(split)).nnz:
            raise SystemExit(f"{dest}: split {split} differs from the source after conversion")
    # the released code sizes its item table from the largest item id in the splits and its item
    # graphs from the feature rows: both must agree or its item-graph product fails
    top = max(int(data.split(s).indices.max()) for s in ("train", "valid", "test")) + 1
    if top != data.n_items:
        raise SystemExit(f"{source}: largest item id + 1 = {top} but {data.n_items} feature rows")
    return {"users": data.n_users, "items": data.n_items,
            **{s: int(data.split(s).nnz) for s in ("train", "valid", "test")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help="a dataset folder latticerec reads (e.g. ../shared/data/tiktok)")
    p.add_argument("dest", type=Path, help="new folder: <root>/<name> of the released layout")
    p.add_argument("--image", default="image", help="modality written as image_feat.npy")
    p.add_argument("--text", default="text", help="modality written as text_feat.npy (TikTok: audio)")
    args = p.parse_args(argv)
    print(json.dumps(convert(args.source, args.dest, args.image, args.text)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
