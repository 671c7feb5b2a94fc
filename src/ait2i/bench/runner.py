"""The one benchmark runner: plan -> shard -> lock -> resume -> manifest -> images -> rows.

* **Plan**: a suite's items x the methods x the seeds, under one generation **protocol** (:data:`PROTOCOLS`:
  scheduler, steps, guidance scale, dtype, seeds, as the original benchmark ran them; ``--scheduler``, ``--dtype``
  ... override a field and are recorded). Images go to ``<out>/<method folder>/<suite layout path>``.
* **Shard by prompt**: the unit of work is one (method, prompt) with all its seeds; process ``i`` of ``n`` takes
  units ``i, i + n, ...`` of the fixed order, so a process's seeds of one prompt run as one batch and shards never
  overlap. ``n`` is ``--shard i/n`` times the launcher's world size (``torchrun``/``accelerate launch``).
* **Lock, manifest, rows**: the run folder (:mod:`ait2i.bench.rundir`): a process holds its shard's lock while it
  writes; the manifest (``manifest.json``, format 2: suite, protocol, model, each method's full config, seeds,
  prompt limit, library versions) refuses a folder of another run unless forced and is merged under a ``flock``
  by processes sharing the folder.
* **Resume**: an image whose PNG decodes and whose parameters (PNG text chunks, :mod:`ait2i.io`) match the
  manifest is never redone. ``force`` regenerates every image of this process's plan; it never relabels a
  folder while keeping old images.
* **Subjects** per method (:func:`method_subjects`): an item's boxed subjects (``"red circle@x0,y0,x1,y1"``) go
  as they are to methods that read boxes (``uses_boxes``), without their boxes to the others.
* **Rows** (``rows.jsonl``, :mod:`ait2i.bench.rundir`): one JSON line per scored image; each row names the PNG it
  read by path, ``image_id`` and ``sha256`` (of the file's bytes). A row counts only while its PNG is on disk
  unchanged and carries the parameters of the request (:func:`check_images`, :func:`matched_rows`), so a
  regenerated, truncated or replaced image is never summarised with another image's scores. An image saved but
  not scored (a kill between the two) is scored on resume; a half-written last line (a kill or a full disk) is
  dropped with a warning before the next append, and its image is scored again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..boxes import split_box_spec
from ..generate import generate as guided_generate
from ..hosts import host_for
from ..hosts.schedulers import check_scheduler_name
from ..io import save_png
from ..models import DTYPES, load_model
from ..version import __version__
from .rundir import (
    FORMAT,
    ROWS,
    append_rows,
    file_sha256,
    load_rows,
    lock,
    png_record,
    read_manifest,
    row_index,
    row_key,
    shard_lock,
    write_manifest,
)
from .specs import config_dict, method_dir, parse_method
from .suites import Item, Suite, load_suite


@dataclass(frozen=True)
class Protocol:
    """How images are generated, as a benchmark's original scripts did.

    Args:
        name (`str`): the preset's name, shown in every table.
        scheduler (`str`): ``"default"`` (the model's own) or a name of :mod:`ait2i.hosts.schedulers`.
        num_inference_steps (`int`), guidance_scale (`float`), dtype (`str`): sampling settings.
        seeds (`str`): the default seeds.
        generator_device (`str`): where seeded noise is drawn (``"cuda"`` as the AnE scripts; falls back to
            ``"cpu"`` on a machine without CUDA, recorded as an override).
        reference (`str`): where the settings come from.
    """

    name: str
    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    dtype: str
    seeds: str
    generator_device: str = "cpu"
    reference: str = ""


PROTOCOLS = {
    "compbench": Protocol("compbench", "ddim", 30, 7.5, "float16", "42-51", "cpu", "T2I-CompBench inference_eval.py"),
    "ane": Protocol("ane", "default", 50, 7.5, "float32", "0-63", "cuda", "Attend-and-Excite run.py (SD 1.4)"),
    "shapes": Protocol("shapes", "ddim", 20, 7.5, "float32", "0-31", "cpu", "ShapesWorld (this repository)"),
}
#: Protocol fields a command line may override.
OVERRIDABLE = ("scheduler", "num_inference_steps", "guidance_scale", "dtype", "generator_device", "height", "width")


def resolve_protocol(name: str, device: str | None = None, **overrides) -> dict:
    """The protocol ``name`` with ``overrides`` (None values ignored) as the dict the manifest records."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    d = {k: getattr(p, k) for k in ("name", "scheduler", "num_inference_steps", "guidance_scale", "dtype")}
    d.update(generator_device=p.generator_device, height=None, width=None, overrides=[])
    if d["generator_device"] == "cuda" and device is not None and not str(device).startswith("cuda"):
        overrides["generator_device"] = overrides.get("generator_device") or "cpu"
    for k, v in overrides.items():
        if k not in OVERRIDABLE:
            raise ValueError(f"protocol field {k!r} cannot be overridden; expected one of {', '.join(OVERRIDABLE)}")
        if v is not None and v != d[k]:
            d[k] = v
            d["overrides"].append(k)
    if d["num_inference_steps"] < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {d['num_inference_steps']}")
    if not math.isfinite(d["guidance_scale"]):
        raise ValueError(f"guidance_scale must be a finite number, got {d['guidance_scale']}")
    check_scheduler_name(d["scheduler"])
    return d


@dataclass
class Run:
    """A checked plan: suite, methods ``[(label, config)]``, seeds, protocol dict, model name, folder."""

    suite: Suite
    methods: list
    seeds: tuple[int, ...]
    protocol: dict
    model: str
    out: Path
    data_dir: str | None = None
    extra: dict = field(default_factory=dict)

    def units(self) -> list[tuple[str, object, Item]]:
        """(method, prompt) units in the fixed order every process agrees on (prompt-major); an item that names
        its methods (``Item.methods``) runs with those only."""
        return [
            (label, cfg, it)
            for it in self.suite.items
            for label, cfg in self.methods
            if it.methods is None or cfg.name in it.methods
        ]

    def path(self, label: str, item: Item, seed: int) -> str:
        return f"{method_dir(label)}/{self.suite.image_path(item, seed, self.seeds)}"

    def manifest(self) -> dict:
        return {
            "format": FORMAT,
            "suite": self.suite.name,
            "limit": self.suite.limit,
            "protocol": self.protocol,
            "model": self.model,
            "methods": {label: config_dict(cfg) for label, cfg in self.methods},
            "seeds": list(self.seeds),
            "versions": versions(),
            **self.extra,
        }


def versions() -> dict[str, str]:
    """Versions of the libraries that shape the images and scores."""
    out = {"python": platform.python_version(), "ait2i": __version__}
    for mod in ("torch", "diffusers", "transformers", "accelerate"):
        with contextlib.suppress(Exception):
            out[mod] = __import__(mod).__version__
    return out


def shard(units: Sequence, rank: int, world: int) -> list:
    """The share of process ``rank`` of ``world``: ``units[rank::world]``."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard {rank}/{world} is invalid; need 0 <= i < n")
    return list(units[rank::world])


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` (0-based ``i``); ``None`` -> ``(0, 1)``."""
    if spec is None:
        return 0, 1
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {spec!r}: need 0 <= i < n")
    return i, n


def launcher_rank() -> tuple[int, int]:
    """``(rank, world_size)`` under ``torchrun``/``accelerate launch`` (``(0, 1)`` otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else (0, 1)


def run_from_manifest(out: Path, data_dir=None) -> Run:
    """The full plan a folder's manifest describes (for scoring and summaries)."""
    m = read_manifest(out)
    suite = load_suite(m["suite"], data_dir).head(m.get("limit"))
    methods = []
    for label, cfg in m["methods"].items():
        _, c = parse_method(label)
        if config_dict(c) != cfg:  # a label whose preset changed since: the recorded config is the truth
            c = c.replace(**{k: v for k, v in cfg.items() if k not in ("class", "name")})
        methods.append((label, c))
    return Run(suite, methods, tuple(m["seeds"]), m["protocol"], m["model"], out, data_dir)


# -- generation --------------------------------------------------------------------------------------------------
def method_subjects(item: Item, cfg) -> list:
    """The subjects ``cfg`` is given for ``item``: as the suite has them for a method that reads boxes
    (``uses_boxes``), with the boxes dropped for the others (``"red circle@0,0,.5,.5"`` -> ``"red circle"``), so
    one item list serves vanilla, token methods and layout methods alike."""
    subjects = list(item.subjects)
    if getattr(cfg, "uses_boxes", False):
        return subjects
    return [_unboxed(s) for s in subjects]


def _unboxed(subject):
    if isinstance(subject, str):
        return split_box_spec(subject)[0] if "@" in subject else subject
    if isinstance(subject, dict):
        return {k: v for k, v in subject.items() if k != "box"}
    if dataclasses.is_dataclass(subject) and getattr(subject, "box", None) is not None:
        return dataclasses.replace(subject, box=None)
    return subject


def expected_params(run: Run, label: str, item: Item, seed: int) -> dict:
    """What a PNG of (``label``, ``item``, ``seed``) must carry (its ``image_id`` apart)."""
    return {
        "prompt": item.prompt,
        "subjects": method_subjects(item, dict(run.methods)[label]),
        "suite": run.suite.name,
        "category": item.category,
        "index": item.index,
        "seed": seed,
        "method": label,
        "method_config": config_dict(dict(run.methods)[label]),
        "model": run.model,
        "protocol": {k: v for k, v in run.protocol.items() if k != "overrides"},
        "ait2i_version": __version__,
        **({"generate_kwargs": dict(item.generate_kwargs)} if item.generate_kwargs else {}),
    }


#: Parameters a PNG must agree on with the manifest (the version of ait2i may differ); ``generate_kwargs`` only
#: where an item has them (a PNG without the key made none).
CHECKED = ("prompt", "seed", "method", "method_config", "model", "protocol", "generate_kwargs")


def mismatch(params: dict | None, expected: dict) -> list[str]:
    """The parameters of a PNG that differ from ``expected`` (``["unreadable"]`` for a broken PNG)."""
    if params is None:
        return ["unreadable"]
    return [
        k for k in CHECKED if json.dumps(params.get(k), sort_keys=True) != json.dumps(expected.get(k), sort_keys=True)
    ]


@dataclass
class Images:
    """The planned images of a run as its folder holds them (paths relative to the folder).

    Args:
        present (`list`): ``(label, item, seed, path, image_id, sha256)`` of each PNG that decodes and carries the
            parameters of the run.
        missing (`list[str]`): absent or unreadable (truncated) PNGs.
        wrong (`list[str]`): PNGs made with other parameters (``"path (field, ...)"``).
    """

    present: list = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    def refuse_wrong(self, out: Path) -> None:
        if self.wrong:
            raise ValueError(
                f"{len(self.wrong)} image(s) in {out} were not made by the run its manifest describes: "
                + "; ".join(self.wrong[:5])
                + ". Regenerate them with --force."
            )


def check_images(run: Run) -> Images:
    """Read every planned PNG of ``run`` once: its parameters against the plan, and its SHA-256."""
    images = Images()
    for label, _, item in run.units():
        for seed in run.seeds:
            rel = run.path(label, item, seed)
            params, sha = png_record(run.out / rel)
            if params is None:
                images.missing.append(rel)
                continue
            bad = mismatch(params, expected_params(run, label, item, seed))
            if bad:
                images.wrong.append(f"{rel} ({', '.join(bad)})")
            else:
                images.present.append((label, item, seed, rel, params.get("image_id"), sha))
    return images


def matched_rows(run: Run, keys: Sequence[str]) -> tuple[list[dict], list[str]]:
    """The rows of the planned images of ``run`` exactly as they are on disk, and the planned images that have
    none (absent, unreadable, or saved but not scored), paths relative to the folder.

    Raises:
        `ValueError`: a PNG of the plan was made with other parameters than ``run`` (another request).
    """
    images = check_images(run)
    images.refuse_wrong(run.out)
    have = row_index(load_rows(run.out), keys)
    rows, missing = [], list(images.missing)
    for *_, rel, iid, sha in images.present:
        row = have.get(row_key(rel, iid, sha))
        if row is None:
            missing.append(rel)
        else:
            rows.append(row)
    return rows, missing


def rescore_rows(run: Run, rows: Sequence[dict], scorers: dict) -> list[dict]:
    """``rows`` with every value of the scorers that say ``rescore = True`` (deterministic and cheap: the ShapesWorld
    checker) read again from the row's PNG, so that a summary never reports a checker that has since changed; other
    scorers' values are kept as stored."""
    from PIL import Image

    again = [sc for sc in scorers.values() if getattr(sc, "rescore", False)]
    if not again:
        return list(rows)
    items = {(it.category, it.index): it for it in run.suite.items}
    out = []
    for row in rows:
        item = items[(row["category"], row["index"])]
        with Image.open(run.out / row["image"]) as im:
            image = im.convert("RGB")
        fresh = dict(row)
        for sc in again:
            fresh.update({k: v for k, v in sc.score([image], item)[0].items() if k in sc.keys})
        out.append(fresh)
    return out


@dataclass
class Report:
    """What one process did (paths relative to the run folder); ``scored``: images saved by an earlier run that
    was stopped before scoring them, scored now."""

    rank: int
    world: int
    assigned: int = 0
    skipped: int = 0
    generated: list[str] = field(default_factory=list)
    regenerated: list[str] = field(default_factory=list)
    scored: list[str] = field(default_factory=list)
    seconds: float = 0.0


def generate(
    pipe,
    run: Run,
    *,
    rank: int = 0,
    world: int = 1,
    batch_size: int | None = None,
    force: bool = False,
    progress: bool = True,
    scorers: dict | None = None,
    generate_fn: Callable | None = None,
    on_saved: Callable[[str], None] | None = None,
) -> Report:
    """Generate this process's share of ``run`` (see the module docstring), scoring each batch with ``scorers``
    (cheap ones such as the ShapesWorld checker) as it goes.

    Args:
        pipe: a loaded diffusers pipeline supported by :func:`ait2i.generate`.
        run (`Run`): the plan (see :func:`plan`).
        rank, world (`int`): this process's shard.
        batch_size (`int`, *optional*): seeds per pipeline call; all the seeds of a prompt by default.
        force (`bool`, *optional*, defaults to `False`): regenerate every image of this share and accept a folder
            of another run (its manifest is replaced).
        scorers (`dict`, *optional*): name -> scorer, run on each batch; rows go to ``rows.jsonl``.
        generate_fn (`Callable`, *optional*): :func:`ait2i.generate` by default (tests pass a fake).
        on_saved (`Callable[[str], None]`, *optional*): called with each saved image's relative path.
    """
    import torch  # the runner reads and writes files without torch; generating needs it

    if generate_fn is None:
        generate_fn = guided_generate
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = run.out
    out.mkdir(parents=True, exist_ok=True)
    report = Report(rank, world)
    with shard_lock(out, rank, world):
        write_manifest(out, run.manifest(), force)
        todo, done = [], []
        for label, cfg, item in shard(run.units(), rank, world):
            seeds = []
            for seed in run.seeds:
                report.assigned += 1
                rel = run.path(label, item, seed)
                path = out / rel
                if path.exists() and not force:
                    params, sha = png_record(path)
                    bad = mismatch(params, expected_params(run, label, item, seed))
                    if not bad:
                        report.skipped += 1
                        done.append((label, item, seed, rel, params.get("image_id"), sha))
                        continue
                    if bad != ["unreadable"]:
                        raise ValueError(
                            f"{rel} was made with other {', '.join(bad)} than this run; --force regenerates it"
                        )
                    report.regenerated.append(rel)
                seeds.append(seed)
            if seeds:
                todo.append((label, cfg, item, seeds))
        if report.regenerated:
            print(f"[ait2i bench] {len(report.regenerated)} unreadable image(s) regenerated", file=sys.stderr)
        if scorers and done:  # saved by a run stopped before it scored them (or whose row was torn)
            have = row_index(load_rows(out), [k for sc in scorers.values() for k in sc.keys])
            unscored = [p for p in done if row_key(*p[3:]) not in have]
            if unscored:
                print(
                    f"[ait2i bench] {len(unscored)} image(s) saved earlier but not scored: scoring them",
                    file=sys.stderr,
                )
                _score_present(out, scorers, unscored, batch_size or len(run.seeds))
                report.scored = [p[3] for p in unscored]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(len(s) for *_, s in todo), unit="img", desc=f"{run.suite.name} [{rank}/{world}]")
        t0 = time.perf_counter()
        try:
            for label, cfg, item, seeds in todo:
                step = batch_size or len(seeds)
                item_pipe = pipe if run.suite.prepare is None else run.suite.prepare(pipe, item)  # e.g. its concepts
                for k in range(0, len(seeds), step):
                    batch = seeds[k : k + step]
                    images = _generate_batch(item_pipe, run, cfg, item, batch, generate_fn, torch)
                    saved = []
                    for seed, image in zip(batch, images):
                        rel = run.path(label, item, seed)
                        (out / rel).parent.mkdir(parents=True, exist_ok=True)
                        params = dict(expected_params(run, label, item, seed), image_id=uuid.uuid4().hex)
                        save_png(image, out / rel, params)
                        saved.append((rel, seed, params["image_id"], file_sha256(out / rel)))
                        report.generated.append(rel)
                        if on_saved is not None:
                            on_saved(rel)
                    if scorers:
                        append_rows(out / ROWS, score_images(scorers, images, label, item, saved))
                    if bar is not None:
                        bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
            report.seconds = time.perf_counter() - t0
    return report


def _generate_batch(pipe, run: Run, cfg, item: Item, seeds: list[int], generate_fn, torch) -> list:
    p = run.protocol
    kwargs = {
        "generator": [torch.Generator(p["generator_device"]).manual_seed(s) for s in seeds],
        "num_images_per_prompt": len(seeds),
        "num_inference_steps": p["num_inference_steps"],
        "guidance_scale": p["guidance_scale"],
        "output_type": "pil",
        **{k: p[k] for k in ("height", "width") if p.get(k)},
        **dict(item.generate_kwargs),
    }
    images = generate_fn(pipe, item.prompt, method_subjects(item, cfg), method=cfg, **kwargs).images
    if len(images) != len(seeds):
        raise RuntimeError(f"expected {len(seeds)} images for {item.prompt!r}, got {len(images)}")
    return images


def score_images(scorers: dict, images, label: str, item: Item, saved) -> list[dict]:
    """One row per image: its identity (``saved``: ``(path, seed, image_id, sha256)`` of each PNG), then every
    scorer's values."""
    rows = [
        {
            "method": label,
            "category": item.category,
            "index": item.index,
            "prompt": item.prompt,
            "seed": seed,
            "image": rel,
            "image_id": image_id,
            "sha256": sha,
        }
        for rel, seed, image_id, sha in saved
    ]
    for scorer in scorers.values():
        for row, vals in zip(rows, scorer.score(images, item)):
            row.update(vals)
    return rows


# -- scoring -----------------------------------------------------------------------------------------------------
def score(
    out: str | os.PathLike,
    scorers: dict,
    *,
    data_dir=None,
    allow_missing: bool = False,
    batch_size: int = 16,
    progress: bool = True,
) -> list[dict]:
    """Score every planned image of a run folder that has no row tied to its current bytes (path, image id and
    SHA-256); returns the rows of the planned images present.

    Each PNG's parameters are checked against the manifest first; a PNG made by another run is an error.

    Raises:
        `ValueError`: missing images (unless ``allow_missing``), or PNGs whose parameters differ.
    """
    out = Path(out)
    run = run_from_manifest(out, data_dir)
    images = check_images(run)
    images.refuse_wrong(out)
    planned = len(images.present) + len(images.missing)
    if images.missing and not allow_missing:
        raise ValueError(
            f"{len(images.missing)} of {planned} planned images are missing or unreadable in {out}: "
            + ", ".join(images.missing[:10])
            + (" ..." if len(images.missing) > 10 else "")
            + ". Rerun the same `ait2i bench generate` command (it resumes), or pass --allow-missing."
        )
    if not images.present:
        raise ValueError(f"no images to score in {out}")
    keys = [k for s in scorers.values() for k in s.keys]
    with lock(out, "score", lambda other: other == "score"):
        have = row_index(load_rows(out), keys)
        todo = [p for p in images.present if row_key(*p[3:]) not in have]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), unit="img", desc=f"scoring {out.name}")
        try:
            have.update(row_index(_score_present(out, scorers, todo, batch_size, bar), keys))
        finally:
            if bar is not None:
                bar.close()
    return [have[row_key(*p[3:])] for p in images.present]


def _score_present(out: Path, scorers: dict, present: Sequence, batch_size: int, bar=None) -> list[dict]:
    """Score PNGs of the folder (``(label, item, seed, path, image_id, sha256)`` each), a prompt's images in
    batches of ``batch_size``; append and return their rows."""
    by_unit: dict = {}
    for p in present:
        by_unit.setdefault((p[0], p[1].category, p[1].index), []).append(p)
    out_rows = []
    for ps in by_unit.values():
        label, item = ps[0][0], ps[0][1]
        for k in range(0, len(ps), batch_size):
            chunk = ps[k : k + batch_size]
            images = []
            for *_, rel, _, _ in chunk:
                with Image.open(out / rel) as im:
                    images.append(im.convert("RGB"))
            saved = [(rel, seed, iid, sha) for _, _, seed, rel, iid, sha in chunk]
            rows = score_images(scorers, images, label, item, saved)
            append_rows(out / ROWS, rows)
            out_rows += rows
            if bar is not None:
                bar.update(len(chunk))
    return out_rows


def load_pipeline(model: str | None, protocol: dict, device=None):
    """The one model loader (:func:`ait2i.models.load_model`: safetensors only, ``None`` = the shipped ShapesWorld
    model), with the protocol's scheduler and dtype, moved to ``device`` (CUDA when available)."""
    import torch  # the runner reads and writes files without torch; loading a model needs it

    if protocol["dtype"] not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {protocol['dtype']!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if protocol["dtype"] == "float16" and not str(device).startswith("cuda"):
        raise ValueError("float16 needs a CUDA device; pass --dtype float32 on CPU (it is recorded)")
    pipe = load_model(model, protocol["dtype"], protocol["scheduler"]).to(device)
    pipe.set_progress_bar_config(disable=True)
    allowed = getattr(host_for(pipe), "schedulers", None)
    name = type(pipe.scheduler).__name__
    if allowed is not None and name not in allowed:
        raise ValueError(
            f"the {protocol['name']} protocol samples with {name}, which {type(pipe).__name__} cannot run (it "
            f"supports {', '.join(allowed)}); pass --scheduler default for the model's own scheduler (recorded in "
            "the manifest)"
        )
    return pipe
