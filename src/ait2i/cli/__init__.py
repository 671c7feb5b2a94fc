"""The ``ait2i`` command line: ``generate`` images with guidance, list a prompt's ``tokens``, run ``bench``, ``tune``
a method, serve the ``demo``. One module per command (each adds its parser and runs it); :mod:`.errors` is the one
error policy.

Examples::

    ait2i tokens "a photo of a surfboard"
    ait2i generate "a red car and a blue bench" --subjects "red car" "blue bench" --method ait2i \\
        --model runwayml/stable-diffusion-v1-5 --seed 0-3 --steps 50 --out car.png --attention car-att.png

Bad input (an unknown subject word, a model that cannot be loaded, a missing output folder, an output that exists
without ``--overwrite``, ...) ends with one ``ait2i: error: ...`` message on stderr and exit code 2, before any
model is loaded where the input alone shows it (set ``AIT2I_DEBUG=1`` for the traceback). Each image is written
atomically as soon as its batch is done: after an error or Ctrl-C, every file reported as written is complete.
The policy of every command is in docs/errors.md.
"""

from __future__ import annotations

import argparse
import sys

from ..version import __version__
from . import demo, generate, tokens, tune
from .errors import run_command


# -- bench --------------------------------------------------------------------------------------------------------
def _add_bench(sub, wanted: bool) -> None:
    """Register ``ait2i bench`` (the public-benchmark runner). Imported only when asked for, and guarded, so that
    a problem there never breaks ``generate`` or ``tokens``."""
    if wanted:
        try:
            from .bench import add_parser  # guarded: a broken `ait2i bench` leaves the other commands working

            add_parser(sub)
            return
        except Exception as e:  # noqa: BLE001 - report instead of crashing the whole CLI
            err = f"ait2i bench is unavailable in this installation ({type(e).__name__}: {e})"
    else:
        err = None
    p = sub.add_parser(
        "bench", help="run the public benchmarks (AnE, T2I-CompBench++); see `ait2i bench -h`", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda a: _fail(err or "ait2i bench is unavailable"))


def _fail(msg: str) -> int:
    raise ValueError(msg)


# -- entry point ----------------------------------------------------------------------------------------------------
def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ait2i",
        description="AI-T2I and Attend-and-Excite cross-attention guidance on diffusers pipelines.",
    )
    parser.add_argument("--version", action="version", version=f"ait2i {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    generate.add_parser(sub)
    tokens.add_parser(sub)
    demo.add_parser(sub)
    args = sys.argv[1:] if argv is None else argv
    _add_bench(sub, wanted=bool(args) and args[0] == "bench")
    tune.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``ait2i`` command; returns the exit code (0 success, 2 bad input, 130 interrupted; docs/errors.md)."""
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or an argparse usage error (already printed)
        return e.code if isinstance(e.code, int) else 2
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return run_command(lambda: args.func(args))
