"""``latticerec data ...``: build, import, encode, split, download and describe datasets."""

from __future__ import annotations

import argparse


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``data`` command group on the top-level CLI's subparsers."""
    d = sub.add_parser("data", help="build, import, encode, split, download and describe datasets")
    d.add_subparsers(dest="data_command", required=True)
