"""``ait2i demo``: a local web page showing what attention guidance does to a prompt (``pip install -e ".[demo]"``).

:mod:`ait2i.demo.core` holds what the page does (plain Python, testable without a browser); :mod:`ait2i.demo.app`
lays it out with Gradio. Importing this package does not import Gradio; :func:`serve` does.
"""

from __future__ import annotations

#: What ``ait2i demo`` needs beyond the library, as the refusal names it.
INSTALL_HINT = 'pip install -e ".[demo]"'


def missing() -> str | None:
    """``None`` when the demo's packages are installed, else a message naming what is missing and how to get it."""
    import importlib.util

    absent = [m for m in ("gradio", "gradio_image_annotation") if importlib.util.find_spec(m) is None]
    if absent:
        verb = "is" if len(absent) == 1 else "are"
        return f"ait2i demo needs {' and '.join(absent)}, which {verb} not installed; {INSTALL_HINT}"
    return None


def serve(model: str | None = None, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Start the demo page (see :func:`ait2i.demo.app.serve`); `ValueError` when Gradio is not installed."""
    why = missing()
    if why:
        raise ValueError(why)
    from .app import serve as _serve

    return _serve(model, host, port, block)
