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


def _add_demo(sub: argparse._SubParsersAction) -> None:
    """``geo3d demo``: the README's main job.

    It runs the shape-assembly demo (``geo3d assembly demo``: synthetic fractures, training of
    the equivariant model and the Global baseline, evaluation, pictures). The CLI is the top
    of the layer stack, so it may reach into ``geo3d.apps``; the core never does.
    """
    p = sub.add_parser(
        "demo",
        help="the main job: synthetic fracture data -> train equivariant + Global assembly "
        "models -> metrics table and pictures (same as `geo3d assembly demo`)",
        add_help=False,
    )
    # argparse's REMAINDER cannot capture a leading "--help": take it explicitly.
    p.add_argument("-h", "--help", action="store_true", dest="demo_help")
    p.add_argument("args", nargs=argparse.REMAINDER)

    def run(ns: argparse.Namespace) -> int:
        from geo3d.apps.assembly.cli import main as assembly_main

        return assembly_main(["demo", *(["--help"] if ns.demo_help else []), *ns.args])

    p.set_defaults(func=run)


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
        if name == "geo3d.apps.assembly.cli":
            _add_demo(sub)
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
