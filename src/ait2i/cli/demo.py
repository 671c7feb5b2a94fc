"""``ait2i demo``: the web page on this machine (needs ``pip install -e ".[demo]"``)."""

from __future__ import annotations

from ..demo import serve


def cmd_demo(args) -> int:
    """``ait2i demo``: serve the web page (a `ValueError` naming what to install when Gradio is missing)."""
    serve(args.model, args.host, args.port)
    return 0


def add_parser(subparsers) -> None:
    """Register ``ait2i demo`` on an ``argparse`` sub-parser collection."""
    d = subparsers.add_parser("demo", help='serve the web demo on this machine (needs pip install -e ".[demo]")')
    d.add_argument("--model", default=None, help="model selected when the page opens (default: shipped ShapesWorld)")
    d.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    d.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    d.set_defaults(func=cmd_demo)
