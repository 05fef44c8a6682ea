"""Load benchmark of ``latticerec serve`` (issue 16 section 4): one JSON line per case.

Each case starts ``latticerec serve`` on 127.0.0.1 in a subprocess, drives a bounded load with
Debian's ``wrk`` (``apt-get install wrk``: fixed duration, fixed connections, random users from the
model) at ``GET /users/{u}/recommendations?k=20``, and prints requests/s, p50, p99 and errors. While
the load runs, ``POST /items`` is sent ``--posts`` times (evenly spread) where the model places new
items; afterwards every posted item must be served (``/items/{id}/similar``), counted in ``/health``
and listed in ``added_items.json``: ``lost`` counts those that are not.

Cases:

* ``tiktok``: an exported TikTok model (``--tiktok-model DIR``, or ``--tiktok-run RUN`` exported here);
* ``tiktok-cb``: the CB model of TikTok (``--tiktok-cb-model``), which places new items: posts use real
  TikTok feature rows;
* ``tiktok-hnsw``: the same model served from an HNSW index;
* ``synthetic-exact`` / ``synthetic-hnsw``: a synthetic catalogue (default 1,000,000 items, 64-d
  Gaussian vectors with a power-law spectrum, items of unit norm, 10,000 users with 20 seen items
  each) written directly as a model folder (fold-in ``cb`` over one 64-d modality, so posts work),
  served with ``--index exact`` and ``--index hnsw`` (the server's recall@20 against exact on 200
  users is printed).

Each row also gives the server's CPU time per answered request (``server_cpu_ms_per_req``, which
includes the posts) and the 1-minute load average: on a shared machine the latencies measure the
other processes too.

    OMP_NUM_THREADS=1 python benchmarks/bench_serve.py --tiktok-model models/tiktok-lattice \
        --cases tiktok synthetic-exact synthetic-hnsw --hnsw-m 16 --hnsw-ef-construction 64 \
        --hnsw-target-recall 0.95
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from latticerec.serve.artifact import ModelArtifact, make_manifest, write_model_dir  # noqa: E402

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_model(out: Path, n_items: int, n_users: int, dim: int = 64, seen: int = 20,
                    seed: int = 0) -> Path:
    """A model folder with random representations (score = user . item, items of unit norm).

    Coordinate j has standard deviation j^-1/2: trained representations have a decaying spectrum
    (TikTok LATTICE's singular values fall faster: 0.11 of the first at the 16th), while isotropic
    Gaussian vectors have none and are the worst case of every ANN index."""
    if (out / "manifest.json").exists():
        return out
    rng = np.random.default_rng(seed)
    spectrum = (np.arange(1, dim + 1) ** -0.5).astype(np.float32)
    items = rng.standard_normal((n_items, dim), dtype=np.float32) * spectrum
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    users = rng.standard_normal((n_users, dim), dtype=np.float32) * spectrum
    indices = np.sort(rng.integers(0, n_items, (n_users, seen)), axis=1).astype(np.int32)
    art = ModelArtifact(manifest={}, user_repr=users, item_repr=items,
                        train_indptr=np.arange(0, n_users * seen + 1, seen, dtype=np.int64),
                        train_indices=indices.ravel(), user_ids=[f"u{i}" for i in range(n_users)],
                        item_ids=[f"i{i}" for i in range(n_items)], fold={"item_unit": items})
    spec = {"kind": "cb", "fusion": "norm_mean", "modalities": {"content": dim}, "n_neighbours": 10}
    art.manifest = make_manifest("synthetic", {}, {"name": f"synthetic-{n_items}", "content_hash": "0" * 64,
                                                   "n_users": n_users, "n_items": n_items},
                                 {}, art.arrays(), spec, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return write_model_dir(art, out, "# synthetic catalogue for bench_serve.py\n")


def start_server(model: Path, port: int, index: str, timeout: float,
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, float]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "latticerec.serve", str(model), "--port", str(port),
                             "--index", index, *extra], env={**os.environ, "PYTHONPATH": str(SRC)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, time.perf_counter() - start
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server not ready within {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_script(users: list[str], path: Path, k: int) -> Path:
    ids = ",".join(json.dumps(u) for u in users)
    path.write_text(f"local users = {{{ids}}}\nmath.randomseed(1)\n"
                    "request = function()\n  local u = users[math.random(#users)]\n"
                    f"  return wrk.format('GET', '/users/' .. u .. '/recommendations?k={k}')\nend\n")
    return path


def parse_wrk(text: str) -> dict:
    def ms(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        return round(float(m.group(1)) * UNITS[m.group(2)], 3) if m else None

    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {"requests": int(total.group(1)) if total else 0,
            "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "p50_ms": ms(50), "p90_ms": ms(90), "p99_ms": ms(99), "errors": errors}


def post_items(base: str, modalities: dict, n: int, duration: float, feature_rows, out: dict) -> None:
    """``n`` POST /items spread over ``duration`` seconds; statuses and latencies into ``out``."""
    rng = np.random.default_rng(7)
    out.update(ids=[], status=[], ms=[])
    with httpx.Client(base_url=base, timeout=30) as client:
        t0 = time.perf_counter()
        for j in range(n):
            time.sleep(max(0.0, t0 + (j + 0.5) * duration / n - time.perf_counter()))
            item = f"bench-{os.getpid()}-{j}"
            feats = {m: (feature_rows[m][rng.integers(len(feature_rows[m]))] if feature_rows
                         else rng.standard_normal(d)).tolist() for m, d in modalities.items()}
            t = time.perf_counter()
            r = client.post("/items", json={"item": item, "features": feats})
            out["ms"].append((time.perf_counter() - t) * 1e3)
            out["status"].append(r.status_code)
            out["ids"].append(item)


def check_posts(base: str, model: Path, posted: dict, items_before: int) -> dict:
    ok_ids = [i for i, s in zip(posted["ids"], posted["status"], strict=True) if s == 201]
    with httpx.Client(base_url=base, timeout=30) as client:
        served = sum(client.get(f"/items/{i}/similar?k=1").status_code == 200 for i in ok_ids)
        items_after = client.get("/health").json()["items"]
    saved = json.loads((model / "added_items.json").read_text())["items"] if ok_ids else []
    lost = len(ok_ids) - min(served, len(set(ok_ids) & set(saved)), items_after - items_before)
    return {"posts": len(posted["ids"]), "post_errors": len(posted["ids"]) - len(ok_ids), "lost": lost,
            "post_p50_ms": round(float(np.percentile(posted["ms"], 50)), 2) if posted["ms"] else None}


def run_case(name: str, model: Path, index: str, args, feature_rows=None) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    extra = ("--hnsw-m", str(args.hnsw_m), "--hnsw-ef-construction", str(args.hnsw_ef_construction),
             "--hnsw-ef-search", str(args.hnsw_ef_search),
             *(("--hnsw-target-recall", str(args.hnsw_target_recall)) if args.hnsw_target_recall else ())
             ) if index == "hnsw" else ()
    proc, ready_s = start_server(model, port, index, args.start_timeout, extra)
    try:
        health = httpx.get(base + "/health").json()
        users = httpx.get(base + "/users", params={"limit": 1000}).json()["users"]
        with tempfile.TemporaryDirectory() as tmp:
            script = wrk_script(users, Path(tmp) / "users.lua", 20)
            conns = args.connections_exact if index == "exact" and health["items"] > 100_000 \
                else args.connections
            posted: dict = {}
            poster = None
            if health["modalities"] and args.posts:
                poster = threading.Thread(target=post_items, args=(base, health["modalities"], args.posts,
                                                                   args.duration * 0.9, feature_rows, posted))
                poster.start()
            cpu0 = cpu_seconds(proc.pid)
            wrk = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{args.duration}s", "--latency",
                                  "--timeout", "10s", "-s", str(script), base],
                                 capture_output=True, text=True, timeout=args.duration + 60)
            cpu = cpu_seconds(proc.pid) - cpu0
            if poster is not None:
                poster.join(timeout=120)
        row = {"case": name, "index": index, "items": health["items"], "users": health["users"],
               "connections": conns, "duration_s": args.duration, **parse_wrk(wrk.stdout),
               "ready_s": round(ready_s, 2)}
        # CPU the server spent per answered request (load-independent: the machine may be shared)
        row["server_cpu_ms_per_req"] = round(1e3 * cpu / max(row["requests"], 1), 3)
        row["load_avg_1m"] = os.getloadavg()[0]
        if index == "hnsw":
            row.update({k: health["index"].get(k) for k in ("recall@20", "M", "ef_search")},
                       ef_construction=args.hnsw_ef_construction)
        if posted:
            row.update(check_posts(base, model, posted, health["items"]))
        return row
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def fresh_copy(model: Path, work: Path, name: str) -> Path:
    """A copy of ``model`` without added items, so posts start from the exported catalogue."""
    out = work / name
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model, out, ignore=shutil.ignore_patterns("added_items.*"))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=["tiktok", "synthetic-exact", "synthetic-hnsw"],
                   choices=["tiktok", "tiktok-hnsw", "tiktok-cb", "synthetic-exact", "synthetic-hnsw"])
    p.add_argument("--tiktok-model", type=Path, help="exported TikTok model folder")
    p.add_argument("--tiktok-run", type=Path, help="TikTok run folder (exported into --work)")
    p.add_argument("--tiktok-cb-model", type=Path)
    p.add_argument("--tiktok-data", type=Path, default=SRC.parents[1] / "shared" / "data" / "tiktok")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--duration", type=int, default=15, help="seconds of load per case")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--connections-exact", type=int, default=2,
                   help="connections for exact search over a large catalogue")
    p.add_argument("--posts", type=int, default=100)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--hnsw-ef-construction", type=int, default=200)
    p.add_argument("--hnsw-ef-search", type=int, default=128)
    p.add_argument("--hnsw-target-recall", type=float)
    p.add_argument("--start-timeout", type=float, default=1200)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "latticerec-bench-serve")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("bench_serve: needs Debian's wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    for case in args.cases:
        if case in ("tiktok", "tiktok-hnsw"):
            model = args.tiktok_model
            if model is None and args.tiktok_run is not None:
                from latticerec.serve.export import export_run

                model = export_run(args.tiktok_run, args.work / "tiktok-export", overwrite=True)
            if model is None:
                print(json.dumps({"case": case, "skipped": "give --tiktok-model or --tiktok-run"}))
                continue
            row = run_case(case, fresh_copy(model, args.work, case), case.partition("-")[2] or "exact", args)
            print(json.dumps(row), flush=True)
        elif case == "tiktok-cb":
            if args.tiktok_cb_model is None:
                print(json.dumps({"case": case, "skipped": "give --tiktok-cb-model"}))
                continue
            rows = {m: np.load(args.tiktok_data / f"{m}_feat.npy", allow_pickle=False).astype(np.float32)
                    for m in ("image", "audio")}
            model = fresh_copy(args.tiktok_cb_model, args.work, "tiktok-cb")
            print(json.dumps(run_case(case, model, "exact", args, rows)), flush=True)
        else:
            base = synthetic_model(args.work / f"synthetic-{args.items}", args.items, args.users)
            index = case.split("-")[1]
            model = fresh_copy(base, args.work, case)
            print(json.dumps(run_case(case, model, index, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
