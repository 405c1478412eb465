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
    "geo3d.apps.arteq.cli",
    "geo3d.apps.multiview_corr.cli",
    "geo3d.body._cli",
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
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of errors (also: GEO3D_DEBUG=1)")
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


def is_user_error(err: BaseException) -> bool:
    """Errors caused by the user's input (bad arguments, files, data), reported by the CLI
    as one line: ``ValueError`` (and its geo3d subclasses such as ``MeshReadError``),
    ``FileNotFoundError``/``NotADirectoryError``/``IsADirectoryError``, and any exception
    class defined in a ``geo3d`` module (e.g. the checkpoint reader's ``CheckpointError``)."""
    if isinstance(err, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return True
    return any(c.__module__.startswith("geo3d.") for c in type(err).__mro__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``geo3d`` command line; returns the exit code.

    User errors (see :func:`is_user_error`) print one line ``geo3d: error: ...`` to
    stderr and return 2; with ``--debug`` (or ``GEO3D_DEBUG=1``) their full traceback is
    printed instead, and the exit code is still 2. Ctrl-C (``KeyboardInterrupt``) prints
    ``geo3d: interrupted`` and returns 130 (128 + SIGINT, the shell's convention; with
    ``--debug`` the traceback is printed first). Other exceptions always propagate (they are
    bugs: Python exits with 1).
    """
    import os

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    debug = args.debug or os.environ.get("GEO3D_DEBUG", "") not in ("", "0")
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        if debug:
            import traceback

            traceback.print_exc()
        print("geo3d: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not is_user_error(err):
            raise
        if debug:
            import traceback

            traceback.print_exc()
            return 2
        msg = " ".join(str(err).split()) or type(err).__name__
        print(f"geo3d: error: {msg} (run with --debug for the traceback)", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
