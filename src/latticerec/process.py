"""Child processes that end with their parent (Linux): a pool worker of ``latticerec experiment``, a
rank started by ``latticerec train --nproc``."""

from __future__ import annotations

import os
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with(parent: int) -> None:
    """Linux: this process gets SIGTERM when ``parent`` ends, however it ends (SIGTERM or SIGKILL
    included): otherwise a worker would go on training, holding its run folder's lock, after the
    process that started it is gone. Nothing elsewhere, or when ``parent`` is not this process's
    parent (the request would watch the wrong process)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the request took effect (or is not ours)
        os.kill(os.getpid(), signal.SIGTERM)
