"""T2I-CompBench++ validation prompts: download at a pinned commit, verify, load.

The prompt files are not shipped with the package; ``ait2i bench fetch t2i-compbench`` downloads them from the
benchmark's repository at a fixed commit and checks each file's SHA-256 before it is kept. Loading checks the
hashes again, so a run always uses exactly the published prompts.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from ..chunks import subjects_of
from .base import Item, Suite

#: Repository and commit the files are taken from (path ``examples/dataset/<file>``).
REPO = "Karine-Huang/T2I-CompBench"
COMMIT = "1b7094991a57f3c22abdd4f6e8ba6c1a15517073"
BASE_URL = f"https://raw.githubusercontent.com/{REPO}/{COMMIT}/examples/dataset"

#: The 8 categories of T2I-CompBench++ and their 300-prompt validation files.
CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "numeracy", "non_spatial", "complex")
#: SHA-256 of every file we fetch (the category files, and the singular/plural list used for numeracy).
SHA256 = {
    "color_val.txt": "1634259756dbc77d13093d907d414480080ec9790a8c97ad09efaea7b2534f2d",
    "shape_val.txt": "37e1a276906c7ea9516cbd7ac8501be896006c0c17ca7344f260562834455bae",
    "texture_val.txt": "fbb5363515b4a28009e360afaaaf389d2dd2289e50dbb0c6ef4ea0c7fe4f3d4f",
    "spatial_val.txt": "8707a1d7e42ce3002d95363cf55f74bd043c843ae27108f5125aaaa7840ca988",
    "3d_spatial_val.txt": "c9953597315f36a5fcb41291bb19bdc6ab5f64a0fa760d691b4854a73f5d1fe9",
    "numeracy_val.txt": "dad8df141604b70ba7554bec724e3db0a80023680769b5c514854ea2d2527bbe",
    "non_spatial_val.txt": "04c56cc9ac441dc9ea6c5157652058bd1635b5308526dd31bb29a1caab9a758d",
    "complex_val.txt": "1b808018b8d9916db3d47d5aa2ef18377a3549a56901a474156f799824cdf3b4",
    "new_objects.txt": "f39a3d2ff6067d7738673cbf465dc659ccc750776162989a5d9916f1d5f3e231",
}
#: Environment variable naming the folder of the fetched files.
ENV_DIR = "AIT2I_COMPBENCH_DIR"


def default_dir() -> Path:
    """Where fetched files live: ``$AIT2I_COMPBENCH_DIR``, else ``$XDG_CACHE_HOME/ait2i/t2i-compbench`` (or
    ``~/.cache/ait2i/t2i-compbench``)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ait2i" / "t2i-compbench"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(dest: str | os.PathLike | None = None, base_url: str = BASE_URL, force: bool = False) -> Path:
    """Download the T2I-CompBench++ prompt files into ``dest`` and verify their SHA-256.

    Args:
        dest (`str` or `os.PathLike`, *optional*): target folder, defaults to :func:`default_dir`.
        base_url (`str`, *optional*): where ``<file>`` is fetched from, defaults to the pinned commit on GitHub; a
            mirror (or a ``file://`` folder) serving the same bytes works too.
        force (`bool`, *optional*, defaults to `False`): download again files that are present and valid.

    Returns:
        `Path`: the folder holding the verified files.

    Raises:
        `ValueError`: a downloaded file does not have the pinned hash (nothing is kept for that file).
        `OSError`: the download failed.
    """
    dest = Path(dest) if dest is not None else default_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name, digest in SHA256.items():
        target = dest / name
        if target.is_file() and not force and _sha256(target.read_bytes()) == digest:
            continue
        url = f"{base_url.rstrip('/')}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                data = r.read()
        except OSError as e:
            raise OSError(f"could not download {url}: {e}") from e
        if _sha256(data) != digest:
            raise ValueError(
                f"{url} has SHA-256 {_sha256(data)}, expected {digest} (commit {COMMIT}); not saved. "
                "Is the mirror serving a different version?"
            )
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return dest


def _read_verified(name: str, data_dir: str | os.PathLike | None) -> list[str]:
    folder = Path(data_dir) if data_dir is not None else default_dir()
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(
            f"T2I-CompBench file {str(path)!r} not found; run `ait2i bench fetch t2i-compbench` "
            f"(or set {ENV_DIR} to a folder holding the files)"
        )
    data = path.read_bytes()
    if _sha256(data) != SHA256[name]:
        raise ValueError(
            f"{str(path)!r} does not match the pinned T2I-CompBench file (commit {COMMIT}); "
            "run `ait2i bench fetch t2i-compbench --force`"
        )
    # Some files use CRLF endings and some lack a final newline.
    return [line for line in data.decode("utf-8").replace("\r", "").splitlines() if line.strip()]


def compbench_prompts(
    category: str, data_dir: str | os.PathLike | None = None
) -> list[tuple[str, str, tuple[str, ...]]]:
    """The validation prompts of one category as ``(category, prompt, subjects)``, in file order.

    Args:
        category (`str`): one of :data:`CATEGORIES`.
        data_dir (`str` or `os.PathLike`, *optional*): folder of the fetched files, defaults to :func:`default_dir`.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown T2I-CompBench category {category!r}; expected one of {', '.join(CATEGORIES)}")
    return [(category, p, subjects_of(p)) for p in _read_verified(f"{category}_val.txt", data_dir)]


def plural_nouns(data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """``{plural: singular}`` from ``new_objects.txt`` (lines "bottle - bottles"), for counting objects."""
    out = {}
    for line in _read_verified("new_objects.txt", data_dir):
        if " - " in line:
            singular, plural = (s.strip() for s in line.split(" - ", 1))
            out[plural] = singular
    return out


#: The published metric of each category (3d_spatial's UniDet + depth and complex's 3-in-1 are not reproduced).
DEFAULT_SCORERS = {
    "color": ("vqa",),
    "shape": ("vqa",),
    "texture": ("vqa",),
    "spatial": ("detect",),
    "numeracy": ("detect",),
    "non_spatial": ("clipscore",),
    "complex": ("vqa", "clipscore"),
    "3d_spatial": (),
}


def official_prompts(data_dir=None) -> list[str]:
    """Every prompt of the 8 T2I-CompBench++ validation files, first occurrence order (the prompts of the shipped
    noun-chunk table, :mod:`ait2i.bench.chunks`)."""
    return list(dict.fromkeys(p for c in CATEGORIES for _, p, _ in compbench_prompts(c, data_dir)))


def suite(category: str | None, data_dir=None):
    """One T2I-CompBench++ category (one per output folder, as the official scripts expect), protocol
    ``compbench``; subjects and BLIP-VQA questions from the shipped spaCy noun-chunk table."""

    if not category:
        raise ValueError(
            "t2i-compbench needs one category per output folder: " + ", ".join(f"t2i-compbench:{c}" for c in CATEGORIES)
        )
    items = tuple(Item(c, k, p, s) for k, (c, p, s) in enumerate(compbench_prompts(category, data_dir)))
    scorers = DEFAULT_SCORERS[category]
    applicable = tuple(dict.fromkeys([*scorers, "clipscore"]))
    return Suite(f"t2i-compbench:{category}", items, "compbench", "compbench", scorers, applicable)
