"""A run folder: its manifest, its locks, and its rows tied to the PNGs they scored.

* **Manifest** (``manifest.json``, format 2): suite, protocol, model, each method's full config, seeds, prompt
  limit and library versions (:func:`read_manifest`, :func:`check_manifest`). Processes sharing a folder read,
  merge and write it under one short ``flock`` (:func:`write_manifest`: atomic replace, not rewritten when
  unchanged), so shards starting together merge their methods and seeds instead of overwriting each other.
* **Locks**: a process holds ``.locks/<i>-of-<n>.lock`` while it writes (:func:`shard_lock`); a second run of the
  same shard (or of another sharding) is refused while the holder lives; the lock of a dead process is taken over,
  with a message.
* **Rows** (``rows.jsonl``): one JSON line per scored image, appended with one ``O_APPEND`` write under the
  folder's ``flock`` (:func:`append_rows`); each row names the PNG it read by path, ``image_id`` and ``sha256`` (of
  the file's bytes), so a row counts only while its PNG is on disk unchanged (:func:`row_index`). A half-written
  last line (a kill or a full disk) is dropped with a warning before the next append.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from ..io import read_png_params, write_atomic
from .specs import method_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

MANIFEST, ROWS, LOCKS, FORMAT = "manifest.json", "rows.jsonl", ".locks", 2


# -- rows --------------------------------------------------------------------------------------------------------
TORN = "half-written last line"


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Append rows with one ``O_APPEND`` write under the folder's ``flock``, so processes sharing a folder never
    interleave lines. A half-written last line left by a killed process is dropped first (with a warning), so the
    new rows never join it."""
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with folder_lock(path.parent):
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _drop_torn_tail(fd, path)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def _drop_torn_tail(fd: int, path: Path) -> None:
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return
    keep, chunk = size, 1 << 16
    while keep > 0:  # the last newline: everything after it is the torn line
        start = max(0, keep - chunk)
        pos = os.pread(fd, keep - start, start).rfind(b"\n")
        if pos >= 0:
            keep = start + pos + 1
            break
        keep = start
    os.ftruncate(fd, keep)
    print(
        f"[ait2i bench] {path}: dropped a {TORN} ({size - keep} bytes; a run killed while writing it); its image "
        "is scored again",
        file=sys.stderr,
    )


def load_rows(out: str | os.PathLike) -> list[dict]:
    """The rows of ``rows.jsonl``. A half-written last line (a process killed mid-write) is left out with a
    warning; the next run that appends drops it and scores its image again.

    Raises:
        `ValueError`: a line other than the last is not JSON (the file was damaged by something else).
    """
    path = Path(out) / ROWS
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(lines) - 1:
                    raise ValueError(
                        f"{path}: line {i + 1} is not JSON; the file is damaged. Move it away and rerun the same "
                        "command: every image without a row is scored again"
                    ) from None
    if text and not text.endswith("\n"):
        print(
            f"[ait2i bench] {path} ends with a {TORN} (a run killed while writing it): left out; the next run "
            "scores its image again",
            file=sys.stderr,
        )
    return rows


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (what ties a row to the PNG it scored)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def png_params(path: Path) -> dict | None:
    """The parameters of a PNG that decodes completely, else None."""
    return png_record(path)[0]


def png_record(path: Path) -> tuple[dict | None, str | None]:
    """``(parameters, sha256)`` of a PNG read once: ``(None, None)`` if it is missing or does not decode
    completely."""
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                return None, None
            im.load()
        return read_png_params(io.BytesIO(data)), hashlib.sha256(data).hexdigest()
    except Exception:  # noqa: BLE001 - any decoding failure means "regenerate"
        return None, None


# -- lock --------------------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def lock(out: Path, name: str, conflicts: Callable[[str], bool] = lambda other: False):
    """Hold ``<out>/.locks/<name>.lock`` for the block.

    Raises:
        `ValueError`: the lock (or one for which ``conflicts(other_name)`` is true) is held by a live process.
    """
    folder = out / LOCKS
    folder.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = folder / f"{name}.lock"
    for other in sorted(folder.glob("*.lock")):
        if other == path or not conflicts(other.stem):
            continue
        info = _read_lock(other)
        if info and _holder_alive(info):
            raise ValueError(f"{out} is being written by another run ({_who(info)}, shard {other.stem}); wait for it")
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = _read_lock(path)
            if info and _holder_alive(info):
                raise ValueError(
                    f"{out} is being written by another run ({_who(info)}); wait for it to finish, or use another --out"
                ) from None
            print(f"[ait2i bench] taking over the stale lock {path} ({_who(info or {})} is gone)", file=sys.stderr)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if (_read_lock(path) or {}).get("pid") == os.getpid():
                path.unlink()


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _holder_alive(info: dict) -> bool:
    if info.get("host") != socket.gethostname():
        return True  # another machine: we cannot tell, so we do not take it over
    return _alive(int(info.get("pid", -1)))


def _who(info: dict) -> str:
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"


def shard_lock(out: Path, rank: int, world: int):
    """The lock of shard ``rank/world``: conflicts with the same shard and with any other sharding."""
    return lock(out, f"{rank}-of-{world}", lambda other: not other.endswith(f"-of-{world}") and "-of-" in other)


# -- manifest ----------------------------------------------------------------------------------------------------
def read_manifest(out: str | os.PathLike) -> dict:
    """The format-2 manifest of a run folder (``ValueError`` if it is none or an older one)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{out} has no {MANIFEST}; is it a folder written by `ait2i bench generate`?")
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable manifest ({e})") from None
    if m.get("format") != FORMAT:
        raise ValueError(
            f"{out} was written by an older ait2i bench (manifest format {m.get('format', 1)}, images without a "
            f"method folder, no protocol); this version cannot resume or score it. Start a new --out folder."
        )
    lacking = [k for k, t in REQUIRED.items() if not isinstance(m.get(k), t)]
    if lacking:
        raise ValueError(
            f"{path} lacks {', '.join(lacking)} (or has the wrong type: expected "
            + ", ".join(f"{k} {t.__name__}" for k, t in REQUIRED.items())
            + "); it was not written by `ait2i bench` or was edited. Restore it, or start a new --out folder."
        )
    return m


#: Fields every format-2 manifest has, with their JSON types.
REQUIRED = {"suite": str, "protocol": dict, "model": str, "methods": dict, "seeds": list}


def check_manifest(out: Path, new: dict, force: bool = False) -> dict:
    """Compare ``new`` with the folder's manifest; return the manifest to write (seeds, limit, methods merged).

    Raises:
        `ValueError`: another suite, protocol, model, method config, or (T2I-CompBench, whose image index depends
            on them) other seeds, unless ``force``; an older folder even when forced.
    """
    if not (out / MANIFEST).is_file():
        return new
    old = read_manifest(out)
    diff = [
        f"{k}: folder has {old.get(k)!r}, this run {new[k]!r}"
        for k in ("suite", "protocol", "model")
        if old.get(k) != new[k]
    ]
    diff += [
        f"method {lab!r} was run with another config: {old['methods'][lab]}"
        for lab, cfg in new["methods"].items()
        if lab in old.get("methods", {}) and old["methods"][lab] != cfg
    ]
    folders = {method_dir(lab): lab for lab in old.get("methods", {})}
    diff += [
        f"method {lab!r} would write into the folder {method_dir(lab)!r} of the method {folders[method_dir(lab)]!r}"
        for lab in new["methods"]
        if folders.get(method_dir(lab), lab) != lab
    ]
    if new["suite"].startswith("t2i-compbench") and old.get("seeds") != new["seeds"]:
        diff.append(f"seeds: folder has {old.get('seeds')}, this run {new['seeds']} (they fix the image index)")
    if diff and not force:
        raise ValueError(
            f"{out} holds images of a different run ({'; '.join(diff)}). Use another --out, or --force to "
            "regenerate them."
        )
    if diff:
        return new
    merged = dict(new, methods={**old["methods"], **new["methods"]})
    merged["seeds"] = sorted(set(old["seeds"]) | set(new["seeds"]))
    merged["limit"] = None if old.get("limit") is None or new["limit"] is None else max(old["limit"], new["limit"])
    return merged


@contextlib.contextmanager
def folder_lock(out: Path):
    """Serialise read-merge-write of the manifest and appends to ``rows.jsonl`` between processes sharing ``out``
    (a blocking ``flock``, released by the kernel if the holder dies, so it is never stale; a no-op where
    ``fcntl`` is missing)."""
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    folder = out / LOCKS
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.flock", "a") as f:  # not *.lock: the shard locks' glob must not see it
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_manifest(out: Path, new: dict, force: bool = False) -> dict:
    """Check ``new`` against the folder (:func:`check_manifest`) and write the merged manifest, under a lock that
    every process of the folder takes for this, so shards starting together merge rather than overwrite each
    other. Atomic (``os.replace``) and idempotent: a manifest that would not change is not rewritten."""
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        merged = check_manifest(out, new, force)
        text = json.dumps(merged, indent=1)
        path = out / MANIFEST
        try:
            same = path.read_text() == text
        except OSError:
            same = False
        if not same:
            write_atomic(path, text)
    return merged


def row_key(image: str, image_id: str | None, sha: str | None) -> tuple:
    return image, image_id, sha


def row_index(rows: Sequence[dict], keys: Sequence[str]) -> dict:
    """The rows that carry every value of ``keys``, by (path, image id, SHA-256) of the PNG they scored (the
    latest row of each); rows without a hash (written before rows were tied to bytes) are left out."""
    return {
        row_key(r.get("image"), r.get("image_id"), r["sha256"]): r
        for r in rows
        if r.get("sha256") and all(k in r for k in keys)
    }
