"""``python -m latticerec.serve MODEL_DIR [options]``: ``latticerec serve`` without the rest of the
command line (whose model registry imports torch), so the process imports numpy, safetensors and
FastAPI only."""

from __future__ import annotations

import argparse
import sys

from latticerec.errors import LatticeRecError
from latticerec.serve.commands import cmd_serve, serve_arguments


def main(argv: list[str] | None = None) -> int:
    args = serve_arguments(argparse.ArgumentParser(prog="python -m latticerec.serve",
                                                   description=__doc__)).parse_args(argv)
    try:
        return cmd_serve(args)
    except (LatticeRecError, OSError, ValueError) as exc:
        print(f"latticerec serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
