"""Benchmark image generation: one PNG per (prompt, seed), sharded, resumable, with a manifest.

* **Work items** are the suite's (prompt, seed) pairs in a fixed order (category, prompt index, seed); process
  ``i`` of ``n`` takes ``items[i::n]``. ``n`` is the product of ``--shard i/n`` (Slurm arrays, separate machines)
  and the launcher's world size (``accelerate launch`` / ``torchrun``: ``RANK``/``WORLD_SIZE``), so shards never
  overlap and together cover everything.
* **Resumable**: an image whose PNG exists and decodes is never recomputed; a PNG that does not decode (a killed
  write from another tool, a truncated copy) is regenerated and reported. Images are written to a temporary file
  then renamed, so a killed run never leaves a half-written PNG under the final name.
* **Manifest** (``manifest.json``): model, method and its full config, sampling settings, versions, and the plan
  (seeds per category). A folder made with another model, method, config or sampling settings is refused unless
  ``force=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .suites import BenchPrompt, Suite

MANIFEST = "manifest.json"
#: Manifest fields that must agree for two runs to share an output folder.
IDENTITY = (
    "suite_family",
    "category",
    "model",
    "method",
    "method_config",
    "num_inference_steps",
    "guidance_scale",
    "height",
    "width",
    "dtype",
    "generator_device",
)


@dataclass(frozen=True)
class WorkItem:
    """One image to make: a prompt, a seed and its path relative to the output folder."""

    prompt: BenchPrompt
    seed: int
    path: str


@dataclass
class GenerationReport:
    """What one process did. ``generated`` and ``regenerated`` hold relative paths."""

    rank: int
    world: int
    assigned: int = 0
    skipped: int = 0
    generated: list[str] = field(default_factory=list)
    regenerated: list[str] = field(default_factory=list)
    seconds: float = 0.0


def work_items(suite: Suite, seeds: Sequence[int]) -> list[WorkItem]:
    """All (prompt, seed) pairs of ``suite`` in the fixed order every process agrees on."""
    seeds = tuple(seeds)
    order = {c: k for k, c in enumerate(suite.categories)}
    prompts = sorted(suite.prompts, key=lambda p: (order[p.category], p.index))
    return [WorkItem(p, s, suite.image_path(p, s, seeds)) for p in prompts for s in seeds]


def shard_items(items: Sequence[WorkItem], rank: int, world: int) -> list[WorkItem]:
    """The share of process ``rank`` of ``world``: ``items[rank::world]``."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard {rank}/{world} is invalid; need 0 <= i < n")
    return list(items[rank::world])


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


def launcher_rank() -> tuple[int, int, object]:
    """``(rank, world_size, device)`` of this process under ``accelerate launch``/``torchrun`` (``(0, 1, None)``
    when not launched that way). Uses :class:`accelerate.PartialState` when available."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, None
    env_rank = int(os.environ.get("RANK", "0") or 0)
    try:
        import torch
        from accelerate import PartialState
    except ImportError:
        return env_rank, world, None
    # Without CUDA, accelerate only sets up a multi-process CPU state when asked to (cpu=True, gloo).
    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    state = PartialState(cpu=cpu)
    if state.num_processes != world:  # never trust a state that disagrees with the launcher
        return env_rank, world, None
    return state.process_index, state.num_processes, state.device


def png_is_valid(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG that decodes completely."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                return False
            im.load()
        return True
    except Exception:  # noqa: BLE001 - any decoding failure means "regenerate"
        return False


def versions() -> dict[str, str]:
    """Versions of the libraries that shape the images."""
    out = {"python": platform.python_version()}
    for mod in ("ait2i", "torch", "diffusers", "transformers", "accelerate"):
        with contextlib.suppress(Exception):
            out[mod] = __import__(mod).__version__
    return out


def build_manifest(suite: Suite, seeds: Sequence[int], model: str, cfg, **sampling) -> dict:
    """The manifest of a run (see the module docstring)."""
    method_config = json.loads(json.dumps(dataclasses.asdict(cfg), default=list))
    return {
        "format": 1,
        "suite_family": suite.family,
        "category": suite.category if suite.family != "ane" else None,
        "model": model,
        "method": cfg.name,
        "method_config": method_config,
        **{k: sampling.get(k) for k in ("num_inference_steps", "guidance_scale", "height", "width", "dtype")},
        "generator_device": sampling.get("generator_device", "cpu"),
        "plan": {c: list(seeds) for c in suite.categories},
        # prompts per category when only the first ones were asked for (--limit); None: all
        "prompt_limit": {c: suite.limit for c in suite.categories},
        "versions": versions(),
    }


def check_manifest(out: Path, manifest: dict, force: bool = False) -> dict:
    """Compare ``manifest`` with the one in ``out`` and return the manifest to write (plans merged).

    Raises:
        `ValueError`: the folder was made with another model, method, config or sampling settings (or, for
            T2I-CompBench, other seeds, since the image index depends on them), and ``force`` is false.
    """
    path = out / MANIFEST
    if not path.is_file():
        return manifest
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        if force:
            return manifest
        raise ValueError(f"{path} is not a readable manifest ({e}); pass --force to overwrite it") from None
    keys = IDENTITY + (("plan",) if manifest["suite_family"] == "t2i-compbench" else ())
    diff = [k for k in keys if old.get(k) != manifest.get(k)]
    if diff and not force:
        lines = "; ".join(f"{k}: folder has {old.get(k)!r}, this run {manifest.get(k)!r}" for k in diff)
        raise ValueError(
            f"{out} holds images of a different run ({lines}). Use another --out, or --force to add to it anyway."
        )
    if diff:
        return manifest
    merged = dict(manifest)
    plan = {c: list(s) for c, s in (old.get("plan") or {}).items()}
    for c, s in manifest["plan"].items():
        plan[c] = sorted(set(plan.get(c, [])) | set(s))
    merged["plan"] = plan
    limits = dict(old.get("prompt_limit") or {})
    for c, new in manifest["prompt_limit"].items():
        if c in limits and c in (old.get("plan") or {}):
            limits[c] = None if new is None or limits[c] is None else max(limits[c], new)
        else:
            limits[c] = new
    merged["prompt_limit"] = limits
    return merged


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON through a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _save(image, path: Path, params: dict) -> None:
    from ..metadata import save_png

    save_png(image, path, params)


def _clean_temp(path: Path) -> None:
    """Remove leftovers of a killed write of ``path`` (temporary files named ``.<name>.*.tmp``)."""
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def run_generation(
    pipe,
    suite: Suite,
    seeds: Sequence[int],
    out: str | os.PathLike,
    *,
    method="ait2i",
    model: str = "",
    rank: int = 0,
    world: int = 1,
    batch_size: int = 4,
    force: bool = False,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    dtype: str | None = None,
    generator_device: str = "cpu",
    progress: bool = True,
    on_saved: Callable[[str], None] | None = None,
) -> GenerationReport:
    """Generate this process's share of ``suite`` x ``seeds`` into ``out``, skipping finished images.

    Args:
        pipe: a loaded diffusers pipeline supported by :func:`ait2i.generate`.
        suite (`Suite`): from :func:`ait2i.bench.suites.load_suite`.
        seeds (`Sequence[int]`): seeds per prompt (AnE: 0-63; T2I-CompBench: 42-51).
        out (`str` or `os.PathLike`): output folder (created if needed).
        method (`str` or `GuidanceConfig`, *optional*, defaults to `"ait2i"`): the guidance method.
        model (`str`): the model id or path, recorded in the manifest and the PNG metadata.
        rank, world (`int`): this process's shard, ``0 <= rank < world``.
        batch_size (`int`, *optional*, defaults to 4): seeds of one prompt generated in one call (1-16 typical,
            as GPU memory allows).
        force (`bool`, *optional*, defaults to `False`): write into a folder made by a different run.
        num_inference_steps, guidance_scale, height, width: sampling settings (50 and 7.5 in both papers).
        dtype (`str`, *optional*): the pipeline's dtype as recorded in the manifest; read from ``pipe`` if omitted.
        generator_device (`str`, *optional*, defaults to `"cpu"`): where the seeded generators live; CPU
            generators give the same noise on every machine, ``"cuda"`` draws it as the AnE scripts did.
        progress (`bool`): show a progress bar (images/s and ETA).
        on_saved (`Callable[[str], None]`, *optional*): called with each saved image's relative path.
    """
    import torch
    from tqdm.auto import tqdm

    import ait2i

    from ..config import get_config

    cfg = get_config(method)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seeds = tuple(seeds)
    out = Path(out)
    if dtype is None:
        dtype = str(getattr(pipe, "dtype", getattr(pipe.unet, "dtype", ""))).removeprefix("torch.")
    sampling = {
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "height": height,
        "width": width,
        "dtype": dtype,
    }
    manifest = check_manifest(out, build_manifest(suite, seeds, model, cfg, **sampling), force)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / MANIFEST, manifest)

    report = GenerationReport(rank, world)
    mine = shard_items(work_items(suite, seeds), rank, world)
    report.assigned = len(mine)
    todo = []
    for item in mine:
        path = out / item.path
        _clean_temp(path)
        if path.exists():
            if png_is_valid(path):
                report.skipped += 1
                continue
            report.regenerated.append(item.path)
            path.unlink()
        todo.append(item)
    if report.regenerated:
        print(
            f"[ait2i bench] rank {rank}: {len(report.regenerated)} corrupt image(s) will be regenerated: "
            + ", ".join(report.regenerated[:10])
            + (" ..." if len(report.regenerated) > 10 else "")
        )

    batches: list[list[WorkItem]] = []
    for item in todo:
        if batches and batches[-1][0].prompt == item.prompt and len(batches[-1]) < batch_size:
            batches[-1].append(item)
        else:
            batches.append([item])

    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", disable=not progress, desc=f"{suite.name} [{rank}/{world}]")
    try:
        for batch in batches:
            prompt = batch[0].prompt
            gens = [torch.Generator(device=generator_device).manual_seed(it.seed) for it in batch]
            result = ait2i.generate(
                pipe,
                prompt.text,
                subjects=list(prompt.subjects),
                method=cfg,
                generator=gens,
                num_images_per_prompt=len(batch),
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                output_type="pil",
            )
            for it, image in zip(batch, result.images):
                path = out / it.path
                path.parent.mkdir(parents=True, exist_ok=True)
                params = {
                    "prompt": prompt.text,
                    "subjects": list(prompt.subjects),
                    "suite": suite.family,
                    "category": prompt.category,
                    "prompt_index": prompt.index,
                    "seed": it.seed,
                    "method": cfg.name,
                    "method_config": manifest["method_config"],
                    "model": model,
                    "num_inference_steps": num_inference_steps,
                    "guidance_scale": guidance_scale,
                    "height": image.height,
                    "width": image.width,
                    "dtype": dtype,
                    "generator_device": generator_device,
                    "ait2i_version": ait2i.__version__,
                }
                _save(image, path, params)
                report.generated.append(it.path)
                if on_saved is not None:
                    on_saved(it.path)
            bar.update(len(batch))
    finally:
        bar.close()
        report.seconds = time.perf_counter() - t0
    return report


DTYPES = ("float16", "bfloat16", "float32")


def load_pipeline(model: str, dtype: str | None = None, device=None):
    """Load a diffusers text-to-image pipeline from a Hub id or a local folder (safetensors weights only).

    Args:
        model (`str`): e.g. ``"CompVis/stable-diffusion-v1-4"`` or a folder written by ``save_pretrained``.
        dtype (`str`, *optional*): ``"float16"``, ``"bfloat16"`` or ``"float32"``; defaults to float16 on CUDA
            and float32 elsewhere.
        device (*optional*): where to run; defaults to CUDA when available.

    Raises:
        `ValueError`: the model cannot be loaded (the message says why); nothing is written anywhere.
    """
    import torch
    from diffusers import DiffusionPipeline

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = "float16" if str(device).startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=getattr(torch, dtype), use_safetensors=True)
    except Exception as e:  # noqa: BLE001 - any loading failure gets the same clear message
        raise ValueError(
            f"could not load the model {model!r}: {type(e).__name__}: {e}. Give a diffusers model id from the Hub "
            "(e.g. CompVis/stable-diffusion-v1-4) or a folder written by save_pretrained, with safetensors weights."
        ) from None
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
