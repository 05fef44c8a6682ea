"""Run-time shim for the released LATTICE/MICRO code: torch 1.5's ``zero_grad`` on current torch.

Put this folder first on PYTHONPATH and ``../shared/tools/original-on-cpu`` after it: this file runs
that folder's ``sitecustomize.py`` (CPU shims) and then makes ``Optimizer.zero_grad()`` default to
``set_to_none=False``, as in torch 1.5 (the version the released code was written for; the default
became ``True`` in torch 2.0). The difference matters to the released training loop: parameters
that get a gradient only on the first batch of an epoch (the graph learner's projections, the
trainable raw features, LATTICE's modality weights) still receive a zero gradient on later batches,
so Adam keeps moving them with its momentum; with ``None`` gradients Adam skips them. The released
source itself is not modified.
"""

import runpy
import sys
from pathlib import Path

import torch

for entry in sys.path:
    shim = Path(entry) / "sitecustomize.py"
    if entry and shim.is_file() and shim.resolve() != Path(__file__).resolve():
        runpy.run_path(str(shim))
        break
else:
    raise ImportError("put ../shared/tools/original-on-cpu on PYTHONPATH after this folder")

_zero_grad = torch.optim.Optimizer.zero_grad


def _zero_grad_torch15(self, set_to_none: bool = False):
    return _zero_grad(self, set_to_none=set_to_none)


torch.optim.Optimizer.zero_grad = _zero_grad_torch15
