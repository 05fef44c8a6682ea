"""``python -m latticerec`` (and ``torchrun -m latticerec``): the ``latticerec`` command."""

import os
import sys

from latticerec.cli import main
from latticerec.errors import LatticeRecError


def _exit(status: int) -> None:
    """Exit with ``status``. A rank of a multi-process run (``train --nproc``, ``torchrun``) ends
    with ``os._exit`` once its output is flushed: it has left the process group by then, but gloo's
    threads may still be alive during the interpreter's teardown, and a joinable thread destroyed
    there aborts the process ("terminate called without an active exception", exit status -6)
    after the run was fully written, which torchrun reports as a failed rank."""
    ranks = sys.modules.get("latticerec.train.distributed")
    try:
        rank = ranks is not None and ranks.launched()
    except LatticeRecError:  # a malformed torchrun environment, already reported by main()
        rank = False
    if rank:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    else:
        sys.exit(status)


if __name__ == "__main__":
    _exit(main())
