"""Download known public datasets: resumable (HTTP Range), sha256-checked, atomically renamed.

Each file is fetched into ``<file>.part`` beside its destination. A later run continues a partial
file with a ``Range`` request (and starts over when the server ignores it); the finished file is
hashed and only renamed into place when its sha256 matches the pinned one. Files whose publisher gives
no checksum are pinned here only when one could be verified against a known copy; for the others the
computed sha256 is printed and written to ``<file>.sha256`` so later downloads can be checked with
``--sha256``.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from latticerec.errors import LatticeRecError

AMAZON_BASE = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
HKUDS_TIKTOK_BASE = "https://github.com/HKUDS/DiffMM/raw/main/Datasets/tiktok/"
AMAZON_CATEGORIES = {
    "baby": "Baby", "clothing": "Clothing_Shoes_and_Jewelry", "sports": "Sports_and_Outdoors",
    "beauty": "Beauty", "toys": "Toys_and_Games", "electronics": "Electronics",
}
CHUNK = 1 << 20


class DownloadError(LatticeRecError):
    """A download failed: offline, HTTP error, or a checksum mismatch."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its name, URL and (when pinned) sha256."""

    name: str
    url: str
    sha256: str | None = None


def known_datasets() -> dict[str, list[RemoteFile]]:
    """The datasets ``latticerec data download NAME`` knows, by name."""
    out: dict[str, list[RemoteFile]] = {}
    for short, cat in AMAZON_CATEGORIES.items():
        files = (f"reviews_{cat}_5.json.gz", f"meta_{cat}.json.gz", f"image_features_{cat}.b")
        out[f"amazon-{short}"] = [RemoteFile(f, AMAZON_BASE + f) for f in files]
    # HKUDS TikTok release (MMSSL / DiffMM). The feature files' hashes match the copies in the
    # project's shared data; the pickled matrices are not pinned.
    out["tiktok"] = [
        RemoteFile("image_feat.npy", HKUDS_TIKTOK_BASE + "image_feat.npy",
                   "f6c1ec1726ed2aa80315411199ab2143bee6333821bf58c5f00bd3f5b462efc2"),
        RemoteFile("audio_feat.npy", HKUDS_TIKTOK_BASE + "audio_feat.npy",
                   "d45a44a9d462f578802de914c2feea5cfd45742b2922775a085b9bdc1beba26f"),
        *(RemoteFile(f, HKUDS_TIKTOK_BASE + f) for f in ("trnMat.pkl", "valMat.pkl", "tstMat.pkl")),
    ]
    return out


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _offline_message(url: str, exc: BaseException, dest: Path) -> str:
    return (f"cannot download {url}: {exc}. Are you offline? Fetch the file by other means and "
            f"put it at {dest} (a partial download is kept in {dest}.part and resumed next time)")


def download_file(remote: RemoteFile, folder: Path, *, timeout: float = 30.0, progress: bool = True,
                  log=print) -> Path:
    """Fetch one file into ``folder`` (resuming ``.part``), check its sha256, rename it into place."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / remote.name
    if dest.exists():
        if remote.sha256 is None or sha256_of(dest) == remote.sha256:
            log(f"{dest}: already present")
            return dest
        log(f"{dest}: present but its sha256 differs from the pinned one: downloading again")
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(remote.url, headers={"User-Agent": "latticerec"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete
            response = None
        else:
            raise DownloadError(f"cannot download {remote.url}: HTTP {exc.code} {exc.reason}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(_offline_message(remote.url, reason, dest)) from None
    if response is not None:
        with response:
            resumed = have and response.status == 206
            if have and not resumed:
                log(f"{remote.url}: the server ignored the range request; starting over")
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            mode = "ab" if resumed else "wb"
            try:
                with open(part, mode) as fh, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                  desc=remote.name, disable=not progress,
                                                  leave=False) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        fh.write(block)
                        bar.update(len(block))
                    fh.flush()
                    os.fsync(fh.fileno())
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
                raise DownloadError(_offline_message(remote.url, exc, dest)) from None
            if total is not None and part.stat().st_size != total:
                raise DownloadError(f"{remote.url}: connection closed after {part.stat().st_size} of "
                                    f"{total} bytes; run again to resume")
    digest = sha256_of(part)
    if remote.sha256 is not None and digest != remote.sha256:
        part.unlink()
        raise DownloadError(f"{remote.url}: sha256 mismatch (got {digest}, expected {remote.sha256}); "
                            "the partial file was deleted, run again to retry")
    if remote.sha256 is None:
        log(f"{remote.name}: no pinned checksum; sha256 {digest} (saved to {dest}.sha256)")
        sidecar = dest.with_name(dest.name + ".sha256")
        sidecar.write_text(f"{digest}  {remote.name}\n")
    os.replace(part, dest)
    return dest


def download(name: str, out: str | Path, *, base_url: str | None = None,
             sha256: dict[str, str] | None = None, files: list[str] | None = None,
             timeout: float = 30.0, progress: bool = True, log=print) -> list[Path]:
    """Download the known dataset ``name`` into ``out``. ``base_url`` replaces the folder part of
    every URL (a mirror); ``sha256`` pins files by name; ``files`` picks a subset."""
    catalogue = known_datasets()
    if name not in catalogue:
        raise DownloadError(f"unknown dataset {name!r}; known: {', '.join(sorted(catalogue))}")
    remotes = catalogue[name]
    if files:
        unknown = set(files) - {r.name for r in remotes}
        if unknown:
            raise DownloadError(f"{name} has no file(s) {sorted(unknown)}; files: "
                                f"{', '.join(r.name for r in remotes)}")
        remotes = [r for r in remotes if r.name in files]
    paths = []
    for r in remotes:
        url = base_url.rstrip("/") + "/" + r.name if base_url else r.url
        pinned = (sha256 or {}).get(r.name, r.sha256)
        paths.append(download_file(RemoteFile(r.name, url, pinned), Path(out), timeout=timeout,
                                   progress=progress, log=log))
    return paths
