"""``ait2i tokens PROMPT``: the prompt's tokens with their indices, for ``--subjects``."""

from __future__ import annotations

from ..models import load_tokenizer
from ..tokens import format_token_table


def cmd_tokens(args) -> int:
    print(format_token_table(load_tokenizer(args.model), args.prompt))
    return 0


def add_parser(subparsers) -> None:
    """Register ``ait2i tokens`` on an ``argparse`` sub-parser collection."""
    t = subparsers.add_parser("tokens", help="print a prompt's tokens with their indices (for --subjects)")
    t.add_argument("prompt")
    t.add_argument(
        "--model",
        default=None,
        help="hub id or local diffusers folder whose tokenizer to use (default: SD 1.x CLIP)",
    )
    t.set_defaults(func=cmd_tokens)
