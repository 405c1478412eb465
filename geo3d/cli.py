"""The ``geo3d`` console script.

Subcommands live next to the code they drive. Each entry of :data:`SUBCOMMANDS` names a
module exposing ``add_parser(subparsers)`` which registers an :mod:`argparse` sub-parser
and sets ``func`` (called with the parsed namespace, returns an exit code or ``None``).
Heavy imports belong inside ``func`` so that ``geo3d --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module, attribute) pairs; order is the order shown by ``geo3d --help``.
SUBCOMMANDS: list[str] = [
    "geo3d._demo",
    "geo3d.datasets._cli",
    "geo3d.apps.assembly.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geo3d",
        description="geo3d: practical equivariance for 3D geometry and robotics.",
    )
    from geo3d import __version__

    parser.add_argument("--version", action="version", version=f"geo3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            # Only tolerate the subcommand module itself being absent (not yet built);
            # a missing dependency inside it is a real error.
            if err.name == name or (err.name and name.startswith(err.name + ".")):
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    code = args.func(args)
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
