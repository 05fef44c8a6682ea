"""``latticerec export``: a trained run -> a self-contained, pickle-free model folder (SERVE_SPEC.md).

The run's model is rebuilt with its best weights; ``full_representations()`` gives the user and item
representations that are scored (``score(u, i) = u · x_i``); :mod:`latticerec.serve.foldin` adds what
places a new item; the training interactions (to exclude seen items), the raw ids and, where the
dataset folder has an item table, the titles complete it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from latticerec.data.dataset import Dataset
from latticerec.errors import DataError, LatticeRecError
from latticerec.serve.artifact import ModelArtifact, make_manifest, write_model_dir

TITLE_FIELDS = ("title", "name")


def raw_ids(dataset: Dataset) -> tuple[list[str], list[str]]:
    """Raw user and item ids: ``u_id_mapping.csv`` / ``i_id_mapping.csv`` of the dataset folder where
    present (and of the right length), else the ids of its interaction files."""
    from latticerec.data.mapping import I_MAPPING, U_MAPPING, read_mapping

    out = []
    for mapping, n, own in ((U_MAPPING, dataset.n_users, dataset.raw_user_id),
                            (I_MAPPING, dataset.n_items, dataset.raw_item_id)):
        path = Path(dataset.source) / mapping if dataset.source else None
        if path is not None and path.is_file():
            ids = [str(v) for v in read_mapping(path)]
            if len(ids) != n:
                raise DataError(f"{path}: maps {len(ids)} ids but the dataset has {n}")
            out.append(ids)
        else:
            out.append([own(i) for i in range(n)])
    return out[0], out[1]


def item_titles(dataset: Dataset, item_ids: list[str]) -> list[str] | None:
    """Titles from the dataset folder's item table (``<name>.item``, RecBole) where it has a title
    column; None otherwise. Items missing from the table get an empty title."""
    from latticerec.datasets.encode import read_item_table

    tables = sorted(Path(dataset.source).glob("*.item")) if dataset.source else []
    for table_path in tables:
        for f in TITLE_FIELDS:
            try:
                table = read_item_table(table_path, fields=[f])
            except DataError:
                continue
            titles = dict(zip(table.ids, table.texts, strict=True))
            if any(i in titles for i in item_ids):
                return [titles.get(i, "") for i in item_ids]
    return None


def model_card(man: dict, source: str) -> str:
    metrics = man["metrics"]
    rows = []
    for split in ("valid", "test"):
        res = metrics.get(split) or {}
        keys = [k for k in ("recall@20", "ndcg@20", "precision@20", "hit@20") if k in res]
        if keys:
            rows.append(f"| {split} | " + " | ".join(f"{k} {res[k]:.4f}" for k in keys) + " |")
    ds = man["dataset"]
    fold = man["fold_in"]["kind"]
    return "\n".join([
        f"# {man['model']} on {ds['name']}",
        "",
        f"Exported by latticerec {man['latticerec_version']} on {man['created']} from the run `{source}`.",
        "",
        f"- data: `{ds['name']}`, {ds['n_users']} users, {ds['n_items']} items "
        f"(content hash `{ds['content_hash'][:16]}...`)",
        f"- representations: {man['arrays']['item_repr']['shape'][1]}-d; score(u, i) = user_repr[u] . "
        "item_repr[i]",
        f"- best validation epoch: {metrics.get('best_epoch')}",
        f"- new items from content (`POST /items`): {'no' if fold == 'none' else fold}",
        "",
        "| split | metrics |", "|---|---|", *rows,
        "",
        "Serve it:",
        "",
        "```",
        "latticerec serve THIS_FOLDER --port 8000      # then open http://127.0.0.1:8000/",
        "latticerec recommend --model THIS_FOLDER --user USER -k 20",
        "```",
        "",
        "Files: `manifest.json` (format, config, metrics, array shapes), `arrays.safetensors`, `ids.json`.",
        "",
    ])


def build_artifact(loaded, cf_part: str = "neighbours") -> ModelArtifact:
    """The model folder's content, in memory, from a :class:`latticerec.train.rundir.TrainedRun`
    (``cf_part``: how a new item's collaborative part is placed, :mod:`latticerec.serve.foldin`)."""
    from latticerec.serve.foldin import fold_in_arrays

    ds, model = loaded.dataset, loaded.model
    if not model.factorised:
        raise LatticeRecError(f"{loaded.run.model}: a model folder stores user and item representations "
                              "scored by their dot product, and this model's scores are not one "
                              "(it ranks with score_users); it cannot be exported for serving")
    users, items = (t.float().cpu().numpy() for t in model.full_representations())
    train = ds.train.tocsr()
    spec, fold = fold_in_arrays(model, ds, cf_part)
    user_ids, item_ids = raw_ids(ds)
    try:
        metrics = loaded.run_dir.read_metrics()
    except LatticeRecError:
        metrics = {}
    art = ModelArtifact(
        manifest={}, user_repr=np.ascontiguousarray(users, np.float32),
        item_repr=np.ascontiguousarray(items, np.float32),
        train_indptr=train.indptr.astype(np.int64), train_indices=train.indices.astype(np.int32),
        user_ids=user_ids, item_ids=item_ids, titles=item_titles(ds, item_ids),
        fold={k: np.ascontiguousarray(v) for k, v in fold.items()})
    art.manifest = make_manifest(
        model=loaded.run.model, config=loaded.run.to_dict(),
        dataset={"name": ds.name, "content_hash": ds.content_hash(), "n_users": ds.n_users,
                 "n_items": ds.n_items, "source": loaded.meta.get("data")},
        metrics={"valid": metrics.get("valid"), "test": metrics.get("test"),
                 "best_epoch": metrics.get("best_epoch", loaded.best_epoch)},
        arrays=art.arrays(), fold_in=spec, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return art


def export_trained(trained, out_dir: str | Path, overwrite: bool = False,
                   cf_part: str = "neighbours") -> Path:
    """Write the model folder ``out_dir`` of a trained run held in memory
    (a :class:`latticerec.train.rundir.TrainedRun`); returns ``out_dir``."""
    art = build_artifact(trained, cf_part)
    return write_model_dir(art, Path(out_dir), model_card(art.manifest, str(trained.run_dir.path)),
                           overwrite=overwrite)


def check_export_target(out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse an existing model folder unless ``overwrite`` (checked before any slow work)."""
    from latticerec.serve.artifact import ArtifactError

    if Path(out_dir).exists() and not overwrite:
        raise ArtifactError(f"{out_dir}: already exists; choose another folder or pass --overwrite")


def export_run(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False,
               cf_part: str = "neighbours") -> Path:
    """Export the run in ``run_dir`` to the model folder ``out_dir``; returns ``out_dir``."""
    from latticerec.train.rundir import RunDir, load_trained

    check_export_target(out_dir, overwrite)  # before the (slow) model rebuild
    return export_trained(load_trained(RunDir(run_dir)), out_dir, overwrite=overwrite, cf_part=cf_part)
