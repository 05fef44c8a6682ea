"""Data-parallel training on ``torch.distributed``: the plumbing :mod:`~latticerec.train.trainer` calls.

A run of ``W`` processes (ranks), started by ``torchrun`` (or ``latticerec train --nproc W``, which
starts torchrun's launcher itself), joins one process group from torchrun's environment
(``init_method="env://"``): gloo on CPU, NCCL on CUDA. Every rank holds the whole model and data;
what is split:

* **batches**: every rank draws the same global batch ``B`` from the same seeded sampler and keeps
  its contiguous share ``B_r`` (:func:`share`). The BPR and L2 terms are batch means, so with the
  local loss weighted by its share, ``L = Σ_r (|B_r| / |B|) L_r`` is the single-process loss, and
  the summed gradients (one flat ``all_reduce``, :meth:`Dist.reduce_gradients`) are its gradient:
  every rank then takes the identical Adam step. Terms that do not depend on the batch (MICRO's
  contrastive and orthogonality terms) are computed alike on every rank and weighted the same way,
  so they too enter once (``Σ_r |B_r| / |B| = 1``).
* **evaluation**: the users of a split are cut into ``W`` contiguous blocks; each rank ranks its
  block and rank 0 gathers the per-user arrays and the means (:meth:`Dist.gather_user_metrics`).

Only rank 0 touches the run folder; a resumed run's state is read there and broadcast
(:meth:`Dist.broadcast_state`, serialised with ``torch.save`` and read back with
``weights_only=True``: nothing is unpickled). Graph re-learning (LATTICE's ``on_epoch_start``) needs
nothing: same parameters, same graphs; :meth:`Dist.check_replicated` verifies it cheaply.
"""

from __future__ import annotations

import io
import ipaddress
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from latticerec.errors import LatticeRecError

ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


LAUNCHER_PID = "LATTICEREC_LAUNCHER_PID"  # set by :func:`launch` for its ranks


def _env_int(key: str, low: int, high: int | None = None) -> int:
    raw = os.environ[key]
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise LatticeRecError(f"{key}={raw!r} in the environment is not a whole number {bounds} "
                              "(torchrun sets it; unset RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT "
                              "to run one process)")
    return value


def launched() -> bool:
    """Whether this process is a rank of a run that torchrun started (its environment is set, and
    checked: a rank outside ``[0, WORLD_SIZE)`` would wait for its peers forever)."""
    if not all(k in os.environ for k in ENV_KEYS):
        return False
    world = _env_int("WORLD_SIZE", 1)
    _env_int("RANK", 0, world - 1)
    _env_int("MASTER_PORT", 1, 65535)
    if "LOCAL_RANK" in os.environ:
        _env_int("LOCAL_RANK", 0, world - 1)
    return world > 1


def loopback_interface() -> str | None:
    """This machine's loopback network interface (``lo`` on Linux, ``lo0`` on macOS), or None."""
    names = {name for _, name in socket.if_nameindex()} if hasattr(socket, "if_nameindex") else set()
    return next((n for n in ("lo", "lo0") if n in names), None)


def pin_gloo_to_loopback() -> None:
    """Make gloo's transport use the loopback interface, unless ``GLOO_SOCKET_IFNAME`` names one.
    For runs whose ranks all live on this machine: left alone, gloo binds to whatever this
    machine's hostname resolves to, which in containers and sandboxes can be an address whose
    connections do not behave like loopback's."""
    lo = loopback_interface()
    if lo is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", lo)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def share(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous part of ``n`` rows, ``np.array_split``'s: the first ``n % world``
    ranks get one row more."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


@dataclass(frozen=True)
class Dist:
    """This process's place in the process group, and the collective steps of a training run."""

    rank: int
    world: int
    device: torch.device  # where collectives run: cuda:LOCAL_RANK for NCCL, cpu for gloo

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- batches ---------------------------------------------------------------------------------
    def local_batch(self, *arrays: np.ndarray) -> tuple[list[np.ndarray], float]:
        """This rank's share of a global batch and its weight ``|B_r| / |B|``. An empty share (a
        batch smaller than the world) takes the batch's first row with weight 0, so that every rank
        runs the same forward pass (same random draws, same graph rebuilds, same gradients present)."""
        n = len(arrays[0])
        part = share(n, self.rank, self.world)
        if part.stop > part.start:
            return [a[part] for a in arrays], (part.stop - part.start) / n
        return [a[:1] for a in arrays], 0.0

    def reduce_gradients(self, params: list[torch.nn.Parameter], terms: dict[str, torch.Tensor]) \
            -> dict[str, float]:
        """Sum the (already weighted) gradients of ``params`` and the loss ``terms`` over the ranks
        in one flat ``all_reduce``; returns the global terms. Parameters without a gradient stay
        without one (Adam skips them, as in one process); every rank runs the same forward pass, so
        the set of gradients present is the same on every rank."""
        grads = [p.grad for p in params if p.grad is not None]
        values = torch.stack([v.detach().reshape(()) for v in terms.values()]).to(self.device)
        flat = torch.cat([values.float(), *(g.reshape(-1).to(self.device) for g in grads)])
        dist.all_reduce(flat)
        offset = len(terms)
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
        return dict(zip(terms, flat[: len(terms)].tolist(), strict=True))

    # -- agreement and replication ---------------------------------------------------------------
    def agree(self, ok: bool) -> bool:
        """True when every rank passes ``ok``; a collective, so every rank must call it."""
        flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() == 1.0)

    def together(self, step: Callable[[], object]):
        """Run ``step`` on this rank, then learn whether every rank's step succeeded: a rank that
        fails raises its own error, the others a :class:`LatticeRecError`, so no rank waits in a
        collective for a rank that has stopped."""
        try:
            out = step()
        except BaseException:
            self.agree(False)
            raise
        if not self.agree(True):
            raise LatticeRecError(f"rank {self.rank}: another rank of the distributed run failed "
                                  "(its message is printed by that rank)")
        return out

    def check_replicated(self, module: torch.nn.Module) -> None:
        """Raise unless ``module``'s parameters and buffers are equal on every rank: a float64
        checksum ``(Σ x, Σ x·w)`` with fixed pseudo-random weights ``w``, compared by min/max."""
        sums = torch.zeros(2, dtype=torch.float64)
        for t in [*module.parameters(), *module.buffers()]:
            if t.layout != torch.strided or t.numel() == 0:  # sparse graphs: functions of the rest
                continue
            x = t.detach().reshape(-1).double().cpu()
            w = torch.sin(torch.arange(x.numel(), dtype=torch.float64) * 0.7071 + 0.3)
            sums += torch.stack([x.sum(), (x * w).sum()])
        low, high = sums.to(self.device), sums.clone().to(self.device)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise LatticeRecError(f"the model differs between ranks (checksums {low.tolist()} .. "
                                  f"{high.tolist()}): the replicas diverged")

    # -- state broadcast -------------------------------------------------------------------------
    def broadcast_state(self, payload: dict | None) -> dict:
        """Rank 0's ``payload`` (tensors, numbers, strings, lists and dicts of them) on every rank:
        ``torch.save`` to bytes, broadcast, ``torch.load(weights_only=True)``."""
        if self.is_main:
            buf = io.BytesIO()
            torch.save(payload, buf)
            data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
            size = torch.tensor([data.numel()], dtype=torch.int64)
        else:
            size = torch.zeros(1, dtype=torch.int64)
        size = size.to(self.device)
        dist.broadcast(size, src=0)
        if not self.is_main:
            data = torch.empty(int(size.item()), dtype=torch.uint8)
        data = data.to(self.device)
        dist.broadcast(data, src=0)
        if self.is_main:
            return payload
        return torch.load(io.BytesIO(data.cpu().numpy().tobytes()), map_location="cpu",
                          weights_only=True)

    # -- evaluation ------------------------------------------------------------------------------
    def gather_user_metrics(self, n_users: int, arrays: dict[str, np.ndarray]) \
            -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
        """Combine the ranks' per-user metrics (``arrays``: ``users`` and one array per metric, for
        this rank's block of the ``n_users`` evaluated users, see :func:`share`). Every rank gets
        the means (over all users); rank 0 also the per-user arrays in user order, the others None."""
        keys = list(arrays)
        blocks = [share(n_users, r, self.world) for r in range(self.world)]
        width = max(b.stop - b.start for b in blocks)
        local = torch.zeros(len(keys), width, dtype=torch.float64)
        for row, key in enumerate(keys):
            values = torch.as_tensor(np.asarray(arrays[key], np.float64))
            local[row, : values.numel()] = values
        local = local.to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.world)] if self.is_main else None
        dist.gather(local, parts, dst=0)
        gathered = None
        means = torch.zeros(len(keys), dtype=torch.float64, device=self.device)
        if self.is_main:
            full = torch.cat([p[:, : b.stop - b.start] for p, b in zip(parts, blocks, strict=True)],
                             dim=1).cpu().numpy()
            gathered = {key: full[row] for row, key in enumerate(keys)}
            gathered["users"] = gathered["users"].astype(np.int64)
            means = torch.as_tensor(full.sum(axis=1) / n_users, device=self.device)
        dist.broadcast(means, src=0)
        return {k: float(v) for k, v in zip(keys, means.tolist(), strict=True) if k != "users"}, gathered


def init(device: torch.device | str) -> Dist | None:
    """Join the process group torchrun described in the environment (``env://``): NCCL when
    ``device`` is CUDA (each rank on ``cuda:LOCAL_RANK``), gloo otherwise (on the loopback interface
    when ``MASTER_ADDR`` is a loopback address, :func:`pin_gloo_to_loopback`). None when this process
    was not launched as one of several ranks: the single-process path, unchanged."""
    if not launched():
        return None
    parent = os.environ.get(LAUNCHER_PID, "")
    if parent.isdigit():  # started by ``train --nproc``: end with that launcher, even if it is killed
        from latticerec.process import end_with

        end_with(int(parent))
    if not dist.is_available():
        raise LatticeRecError("this torch build has no torch.distributed: train with one process")
    cuda = torch.device(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
        if _is_loopback(os.environ["MASTER_ADDR"]):  # every rank on this machine
            pin_gloo_to_loopback()
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, init_method="env://")
        except (RuntimeError, ValueError) as exc:
            raise LatticeRecError(f"cannot join the distributed run ({backend}, "
                                  f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}): "
                                  f"{str(exc).splitlines()[0]}") from None
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=dev)


@contextmanager
def joined(ctx: Dist | None) -> Iterator[Dist | None]:
    """``with joined(init(device)) as ctx:`` the run, then leave the process group (nothing to do
    for ``None``, one process). A block that ends normally (every rank finished the run) first meets
    the other ranks in one last collective, so that no rank closes its connections while a peer
    still reads from them (gloo's transport aborts a process whose peer vanished mid-transfer). After
    an exception, which may be this rank's alone, it leaves at once: a last collective could meet
    another one of a peer still training; the others learn of it when their next collective fails."""
    try:
        yield ctx
    except BaseException:
        _leave(ctx, clean=False)
        raise
    _leave(ctx, clean=True)


def _leave(ctx: Dist | None, clean: bool) -> None:
    if ctx is None or not dist.is_initialized():
        return
    if clean:
        ctx.agree(True)
    dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """``latticerec train --nproc N``: start ``N`` ranks of ``python -m latticerec <argv>`` on this
    machine through torchrun's launcher (elastic agent, c10d rendezvous on a free local port), as
    ``torchrun --standalone --nproc-per-node N -m latticerec <argv>`` does. Each rank gets
    ``OMP_NUM_THREADS = cores / N`` unless it is set. The rendezvous names 127.0.0.1 as this node's
    address, so ``MASTER_ADDR`` is loopback and :func:`init` keeps gloo there. Returns rank 0's exit
    status."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the ranks print their own one-line errors; the agent's log lines about them would repeat them
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ[LAUNCHER_PID] = str(os.getpid())
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1",
                          max_restarts=0, monitor_interval=0.2)
    try:
        elastic_launch(config, sys.executable)("-m", "latticerec", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise LatticeRecError(f"rank {rank} of {nproc} failed (exit status {failure.exitcode}); "
                              "its message is printed above") from None
    except SignalException as exc:  # Ctrl-C or SIGTERM: the agent stopped the ranks
        print("latticerec: interrupted", file=sys.stderr)
        return 128 + int(exc.sigval)
    return 0
