"""Writing files: the one atomic writer, and generation parameters stored inside PNG files.

Every image written by ``ait2i generate`` carries the parameters that made it as PNG ``tEXt``/``iTXt`` chunks:
one chunk per parameter (strings as they are, anything else as JSON) for tools that show PNG text, plus one
``ait2i`` chunk holding all of them as a single JSON object, which :func:`read_png_params` reads back exactly.

Files are written atomically: the bytes go to a temporary file in the destination folder, which then replaces
the destination with ``os.replace``. A failure at any point leaves the destination as it was (absent or the
previous complete file) and removes the temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

#: Name of the PNG text chunk holding every parameter as one JSON object.
JSON_KEY = "ait2i"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on normal exit it replaces ``path``, on error it is removed.

    Args:
        path (`str` or `os.PathLike`):
            The destination. Its folder must exist (a missing folder is a `FileNotFoundError`, raised before
            anything is written).
        suffix (`str`, *optional*, defaults to `""`):
            Suffix of the temporary file, e.g. ``".png"`` so that writers that infer the format from the name
            still work.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {str(folder)!r} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets the mode a plain open() gives
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_path`: the writer of every non-image file
    (manifests, score tables, reports)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def check_destination(path: str | os.PathLike) -> bool:
    """Check, before any work, that :func:`atomic_path` can write ``path``; returns whether a file is there already.

    Raises:
        `ValueError`: the folder is missing, is not a folder or is not writable, or ``path`` is a folder.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise ValueError(f"output folder {str(folder)!r} does not exist; create it first")
    if not folder.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {str(path)!r}: the folder {str(folder)!r} is not writable")
    if path.is_dir():
        raise ValueError(f"output {str(path)!r} is a folder; name a file in it instead")
    return path.exists()


def _to_jsonable(value: Any) -> Any:
    """Convert tuples, paths, numpy/torch scalars and dataclass-like values to plain JSON types."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(value, "tolist") and callable(value.tolist):  # small arrays / tensors
        return value.tolist()
    raise TypeError(
        f"cannot store a value of type {type(value).__name__} as PNG metadata; pass str, numbers, lists or dicts"
    )


def save_png(image, path: str | os.PathLike, params: Mapping[str, Any]) -> Path:
    """Save ``image`` as a PNG carrying ``params`` as text chunks, atomically.

    Args:
        image (`PIL.Image.Image`):
            The picture to save.
        path (`str` or `os.PathLike`):
            Destination file; it should end in ``.png``. An existing file is replaced only once the new one is
            complete.
        params (`Mapping[str, Any]`):
            The generation parameters (prompt, subjects, method and its config, seed, steps, model, ...). Keys
            must be non-empty strings without NUL bytes; values must be JSON-serialisable (tuples, paths and
            numeric scalars are converted). The key ``"ait2i"`` is reserved.

    Returns:
        `Path`: the path written.
    """
    from PIL import Image, PngImagePlugin

    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of parameter names to values, got {type(params).__name__}")
    plain = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key or "\0" in key or len(key.encode("latin-1", "replace")) > 79:
            raise ValueError(f"metadata key {key!r} must be a non-empty string of at most 79 characters")
        if key == JSON_KEY:
            raise ValueError(f"metadata key {JSON_KEY!r} is reserved for the JSON chunk holding all parameters")
        plain[key] = _to_jsonable(value)

    info = PngImagePlugin.PngInfo()
    for key, value in plain.items():
        text = value if isinstance(value, str) else json.dumps(value)
        info.add_itxt(key, text)  # iTXt: UTF-8, any prompt text survives
    info.add_itxt(JSON_KEY, json.dumps(plain, sort_keys=True))

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def read_png_params(path: str | os.PathLike) -> dict[str, Any]:
    """Read the generation parameters written by :func:`save_png`.

    Args:
        path (`str` or `os.PathLike`): a PNG written by :func:`save_png` (or by ``ait2i generate``).

    Returns:
        `dict`: the parameters, with the JSON types they were saved with (tuples come back as lists).
    """
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # text chunks after the image data are read only once the image is loaded
        text = dict(getattr(im, "text", {}) or {})
    if JSON_KEY not in text:
        raise ValueError(f"{os.fspath(path)!r} carries no {JSON_KEY!r} metadata chunk (not written by ait2i?)")
    return json.loads(text[JSON_KEY])
