"""Figures with matplotlib's Agg backend (PNG files, no display needed): a run's training curves.

:func:`write_curves` draws, from ``metrics.json``'s ``history``, the training loss per epoch (the
total and each term: ``bpr``, ``reg``, ...) and the validation Recall@20 and NDCG@20 at each
evaluation, with the best-validation epoch marked.
"""

from __future__ import annotations

import math
from pathlib import Path

from latticerec.errors import LatticeRecError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (never a window, works without a display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    import io

    from latticerec.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _number(value) -> bool:
    """A finite int or float (training never records NaN or infinity: it stops first)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_png_target(path: Path, run_dir) -> Path:
    """``path`` may receive a figure: a ``.png`` name, not one of the run's own files, and not an
    existing file other than a PNG (a figure written before is replaced, anything else refused)."""
    path = Path(path)
    if not str(path) or path.suffix.lower() != ".png":
        raise LatticeRecError(f"--out {str(path)!r}: give a .png file name")
    if path.resolve().parent == run_dir.path.resolve() and path.name in run_dir.RUN_FILES \
            and path.name != run_dir.CURVES:
        raise LatticeRecError(f"--out {path}: one of the run's own files")
    if path.exists():
        try:
            with open(path, "rb") as fh:
                is_png = path.is_file() and fh.read(8) == PNG_MAGIC
        except OSError:
            is_png = False
        if not is_png:
            raise LatticeRecError(f"--out {path}: exists and is not a PNG figure; refusing to overwrite it")
    return path


def write_curves(run: str | Path, out: str | Path | None = None) -> Path | None:
    """``RUN/curves.png`` (or ``out``) from the run's history; ``None`` when the run has no epochs
    (a model with nothing to train)."""
    from latticerec.train.rundir import RunDir

    run_dir = RunDir(run)
    target = check_png_target(Path(out), run_dir) if out is not None else run_dir.file(run_dir.CURVES)
    metrics = run_dir.read_metrics()
    history = metrics.get("history")
    if not isinstance(history, list) or not all(isinstance(r, dict) and _number(r.get("epoch"))
                                                and all(_number(v) for k, v in r.items()
                                                        if k.startswith(("loss_", "valid_")))
                                                for r in history):
        raise LatticeRecError(f"{run_dir.file(run_dir.METRICS)}: no valid 'history' list (each epoch "
                              "a record of finite numbers: epoch, loss_*, valid_*)")
    epochs = [r["epoch"] for r in history]
    if any(not isinstance(e, int) or e < 1 for e in epochs) or epochs != sorted(set(epochs)):
        shown = f"{epochs[:10]}{' ...' if len(epochs) > 10 else ''}"
        raise LatticeRecError(f"{run_dir.file(run_dir.METRICS)}: 'history' epochs must be whole numbers "
                              f">= 1 in increasing order, got {shown}")
    if not history:
        return None
    plt = pyplot()
    fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    terms = sorted({k for r in history for k in r if k.startswith("loss_")})
    total = [sum(r.get(k, 0.0) for k in terms) for r in history]
    ax_loss.plot(epochs, total, label="total", color="black")
    if len(terms) > 1:
        for k in terms:
            ax_loss.plot(epochs, [r.get(k, float("nan")) for r in history], label=k[5:], lw=1)
    ax_loss.set(xlabel="epoch", ylabel="training loss (mean per batch)", title="loss")
    ax_loss.legend(fontsize=8)
    evals = [r for r in history if "valid_recall@20" in r]
    for key in ("valid_recall@20", "valid_ndcg@20"):
        ax_valid.plot([r["epoch"] for r in evals], [r.get(key, float("nan")) for r in evals], marker=".",
                      label=key[6:])
    best = metrics.get("best_epoch")
    if isinstance(best, int) and best > 0:
        ax_valid.axvline(best, color="grey", ls="--", lw=1, label=f"best epoch {best}")
    ax_valid.set(xlabel="epoch", ylabel="validation metric", title="validation")
    ax_valid.legend(fontsize=8)
    fig.suptitle(f"{metrics.get('model', '?')} on {Path(str(metrics.get('data', '?'))).name}")
    return save(fig, target)
