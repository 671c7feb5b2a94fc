"""``ait2i generate``: images with attention guidance, each PNG carrying its parameters, written as soon as its
batch is done."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import math
import os
import re
import sys
from pathlib import Path

import ait2i

from ..hosts import host_for
from ..hosts.schedulers import SCHEDULER_NAMES, check_scheduler_name
from ..io import check_destination, save_png
from ..methods import available_methods, get_method
from ..models import SHIPPED_MODEL, load_model
from ..parsing import parse_seeds, parse_settings, parse_subject
from ..tokens import format_token_table
from ..viz import save_attention


# -- arguments ---------------------------------------------------------------------------------------------------
def parse_steps_list(text: str, steps: int) -> list[int]:
    """``"0,10,24"`` -> [0, 10, 24]: step indices in ``[0, steps - 1]``, each once."""
    parts = [x.strip() for x in str(text).split(",")]
    if not all(re.fullmatch(r"-?\d+", x) for x in parts):
        raise ValueError(f"cannot read --attention-steps {text!r}; give step indices like 0,10,24")
    out = [int(x) for x in parts]
    bad = [i for i in out if not 0 <= i < steps]
    if bad:
        raise ValueError(f"--attention-steps must be step indices in [0, {steps - 1}] (--steps {steps}), got {bad}")
    twice = sorted({i for i in out if out.count(i) > 1})
    if twice:
        raise ValueError(f"--attention-steps {text!r} names step(s) {twice} twice; name each step once")
    return sorted(out)


def method_config(method: str, settings: list[str] | None):
    """The config of ``method`` with the ``--set FIELD=VALUE`` ``settings`` applied (values read by the field's type,
    as ``ait2i bench`` reads them); an unknown field is a `ValueError` listing the valid ones."""
    cfg = get_method(method)
    overrides = parse_settings(cfg, settings)
    if not overrides:
        return cfg
    try:
        return cfg.replace(**overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--set {' '.join(settings or [])}: {e}") from None


def output_paths(out: Path, seeds: list[int]) -> list[Path]:
    """``out.png`` for one seed, ``out-<seed>.png`` for several."""
    if len(seeds) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{s}{out.suffix}") for s in seeds]


def method_arg(name: str) -> str:
    """``--method``: a registered method or a preset file (``*.toml``, checked when it is loaded)."""
    if name in available_methods() or name.lower().endswith(".toml"):
        return name
    raise argparse.ArgumentTypeError(
        f"invalid choice: {name!r} (choose from {', '.join(available_methods())}, or a preset file .toml)"
    )


# -- generate ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _loading_bars(enabled: bool):
    """Turn diffusers' and transformers' model-loading progress bars off for the block (``--quiet``), then
    restore them."""
    from diffusers.utils import logging as diffusers_logging  # heavy: only when a model is loaded
    from transformers.utils import logging as transformers_logging

    mods = [m for m in (diffusers_logging, transformers_logging) if hasattr(m, "is_progress_bar_enabled")]
    was_enabled = [m.is_progress_bar_enabled() for m in mods]
    if not enabled:
        for m in mods:
            m.disable_progress_bar()
    try:
        yield
    finally:
        for m, on in zip(mods, was_enabled):
            if on:
                m.enable_progress_bar()


def default_attention_steps(cfg, steps: int) -> list[int]:
    """First, middle and last guided step (``0, 12, 24`` for 25 of 50); unguided methods: spread over the run."""
    g = min(cfg.guided_steps(steps), steps)
    if g == 0:
        g = steps
    return sorted({0, (g - 1) // 2, g - 1})


def _check_device(device: str | None) -> str:
    """``--device`` as given (``None``: cuda if available, else cpu), refused unless this machine has it."""
    import torch  # heavy: only once the arguments are read

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        kind = None
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device!r} is not a device ait2i runs on; use cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: no MPS device is available here; use --device cpu")
    return device


def _check_guidance(args) -> None:
    """Finite guidance scales, and a negative prompt only where classifier-free guidance reads it."""
    for option, value in (("--guidance-scale", args.guidance_scale), ("--true-cfg-scale", args.true_cfg_scale)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{option} must be a finite number, got {value}")
    if not args.negative_prompt:
        return
    if args.true_cfg_scale is not None and args.true_cfg_scale <= 1:
        raise ValueError(
            f"--negative-prompt is read only with --true-cfg-scale > 1 (got {args.true_cfg_scale}); raise it or "
            "drop the negative prompt"
        )
    if args.true_cfg_scale is None and args.guidance_scale is not None and args.guidance_scale <= 1:
        raise ValueError(
            f"--negative-prompt needs classifier-free guidance, which --guidance-scale {args.guidance_scale} (<= 1) "
            "turns off: the negative prompt would be ignored. Pass --guidance-scale > 1 (Flux: --true-cfg-scale > 1) "
            "or drop --negative-prompt"
        )


def _check_outputs(paths: list[Path], overwrite: bool) -> set[Path]:
    """Refuse outputs that collide within the run, that cannot be written, or that exist (unless ``overwrite``);
    returns those that exist and will be replaced."""
    seen: dict[str, Path] = {}
    for p in paths:
        key = os.path.normcase(str(p.resolve()))
        if key in seen:
            raise ValueError(
                f"{str(p)!r} would be written twice in this run (as {str(seen[key])!r} too): --out and --attention "
                "must name different files"
            )
        seen[key] = p
    existing = {p for p in paths if check_destination(p)}
    if existing and not overwrite:
        names = ", ".join(repr(str(p)) for p in sorted(existing)[:3]) + (", ..." if len(existing) > 3 else "")
        raise ValueError(
            f"{len(existing)} output file(s) already exist ({names}); pass --overwrite to replace them, or choose "
            "another --out/--attention"
        )
    return existing


def _plan(args) -> argparse.Namespace:
    """Validate every ``generate`` argument that needs no model, so that bad input fails before any loading."""
    plan = argparse.Namespace(
        seeds=parse_seeds(args.seed),
        cfg=method_config(args.method, args.set),
        subjects=[parse_subject(s) for s in args.subjects] if args.subjects else None,
    )
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file (the parameters are stored as PNG text), got {args.out!r}")
    if args.attention and Path(args.attention).suffix.lower() != ".png":
        raise ValueError(f"--attention must be a .png file, got {args.attention!r}")
    if args.attention_steps is not None and not args.attention:
        raise ValueError(
            "--attention-steps chooses the steps of the --attention figure; pass --attention PNG too, or drop "
            "--attention-steps"
        )
    if args.attention and not args.subjects:
        raise ValueError(
            "--attention draws the subjects' attention maps; name them with --subjects (see `ait2i tokens PROMPT`)"
        )
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if (args.height is None) != (args.width is None):
        raise ValueError("--height and --width go together: pass both (e.g. --height 512 --width 512) or neither")
    for option, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    _check_guidance(args)
    plan.device = _check_device(args.device)
    if args.dtype == "float16" and not plan.device.startswith("cuda"):
        raise ValueError("--dtype float16 needs --device cuda; on the CPU use float32")
    check_scheduler_name(args.scheduler)
    plan.att_steps = parse_steps_list(args.attention_steps, args.steps) if args.attention_steps else None
    if args.attention and plan.att_steps is None:
        plan.att_steps = default_attention_steps(plan.cfg, args.steps)
    plan.paths = output_paths(out, plan.seeds)
    plan.att_paths = output_paths(Path(args.attention), plan.seeds) if args.attention else []
    plan.replaced = _check_outputs([*plan.paths, *plan.att_paths], args.overwrite)
    return plan


def cmd_generate(args) -> int:
    """Generate batch after batch; each image (and its attention figure) is written, atomically, as soon as its
    batch is done, so an interrupt or a full disk keeps every image reported as written."""
    import torch  # heavy: only when images are generated

    plan = _plan(args)
    with _loading_bars(enabled=not args.quiet):
        pipe = load_model(args.model, args.dtype, args.scheduler)
    if plan.subjects is None and plan.cfg.name != "none":
        raise ValueError(
            "no --subjects given; name the words to guide. Tokens of the prompt:\n"
            + format_token_table(host_for(pipe).subject_tokenizer(pipe), args.prompt)
        )
    pipe.to(plan.device)
    pipe.set_progress_bar_config(disable=args.quiet, leave=False)

    guidance_scale = args.guidance_scale
    if guidance_scale is None:  # the pipeline's own default (7.5 for SD 1.x, 5.0 for SDXL, 3.5 for Flux, ...)
        default = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
        guidance_scale = default.default if default is not None else 7.5
    call = {"num_inference_steps": args.steps, "guidance_scale": guidance_scale}
    optional = ("height", "width", "negative_prompt", "true_cfg_scale")
    call.update({k: getattr(args, k) for k in optional if getattr(args, k) is not None})
    if "true_cfg_scale" in call and "true_cfg_scale" not in inspect.signature(pipe.__call__).parameters:
        raise ValueError(f"--true-cfg-scale: {type(pipe).__name__} has no true_cfg_scale (Flux pipelines have)")
    params = {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt or "",
        "true_cfg_scale": args.true_cfg_scale,
        "subjects": list(args.subjects or []),
        "method": plan.cfg.name,
        "method_config": {f.name: getattr(plan.cfg, f.name) for f in dataclasses.fields(plan.cfg)},
        "steps": args.steps,
        "guidance_scale": guidance_scale,
        "scheduler": type(pipe.scheduler).__name__,
        "model": args.model or SHIPPED_MODEL,
        "dtype": args.dtype,
        "device": plan.device,
        "ait2i_version": ait2i.__version__,
    }

    def wrote(path: Path) -> None:
        print(f"wrote {path}" + (" (replaced the existing file)" if path in plan.replaced else ""), flush=True)

    batch = args.batch_size or len(plan.seeds)
    notes: list[str] = []
    for start in range(0, len(plan.seeds), batch):
        chunk = plan.seeds[start : start + batch]
        gens = [torch.Generator("cpu").manual_seed(s) for s in chunk]  # same noise on every device
        res = ait2i.generate(
            pipe, args.prompt, subjects=plan.subjects, method=plan.cfg, record_maps=plan.att_steps or (),
            generator=gens, num_images_per_prompt=len(chunk), **call,
        )  # fmt: skip
        d = res.diagnostics
        for note in d.notes:
            if note not in notes:
                notes.append(note)
                print(f"note: {note}", file=sys.stderr)
        subject_tokens = [s.to_dict() for s in d.subjects]
        for k, (seed, img) in enumerate(zip(chunk, res.images)):
            meta = dict(params, seed=seed, height=img.height, width=img.width, subject_tokens=subject_tokens)
            save_png(img, plan.paths[start + k], meta)
            wrote(plan.paths[start + k])
            if args.attention:
                save_attention(plan.att_paths[start + k], img, d, sample=k)
                wrote(plan.att_paths[start + k])
    return 0


def add_parser(subparsers) -> None:
    """Register ``ait2i generate`` on an ``argparse`` sub-parser collection."""
    g = subparsers.add_parser(
        "generate",
        help="generate images with attention guidance",
        description="Generate images with attention guidance; the PNGs carry their parameters.",
    )
    g.add_argument("prompt")
    g.add_argument(
        "--subjects",
        nargs="+",
        metavar="SUBJECT",
        help='subjects to guide: words of the prompt ("red car": attribute + noun; "cat#2": 2nd "cat") '
        "or token indices (5 or 5,6); see `ait2i tokens PROMPT`",
    )
    g.add_argument(
        "--method",
        default="ait2i",
        type=method_arg,
        help=f"guidance method: {', '.join(available_methods())}, or a preset file written by `ait2i tune` "
        "(.toml) (default: ait2i)",
    )
    g.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="override a field of the method's config, e.g. --set scale_factor=30 (repeatable)",
    )
    g.add_argument(
        "--model",
        default=None,
        help="hub id or local diffusers folder (default: the shipped ShapesWorld model)",
    )
    g.add_argument("--seed", default="0", help="seed, range or list: 0, 0-3, 0,2,5 (default: 0)")
    g.add_argument("--batch-size", type=int, default=None, help="images per pipeline call (default: all seeds)")
    g.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    g.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance scale; for Flux, the distilled guidance embedding (default: the pipeline's own)",
    )
    g.add_argument("--negative-prompt", default=None)
    g.add_argument(
        "--true-cfg-scale",
        type=float,
        default=None,
        help="Flux: true classifier-free guidance with --negative-prompt (the pipeline uses the negative prompt only "
        "when this is > 1)",
    )
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument(
        "--scheduler",
        default="default",
        choices=("default", *SCHEDULER_NAMES),
        help="replace the model's scheduler (default: keep it)",
    )
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    g.add_argument("--out", default="out.png", help="output PNG; several seeds give OUT-<seed>.png")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files left by an earlier run (default: refuse them, before loading the model)",
    )
    g.add_argument(
        "--attention",
        default=None,
        metavar="PNG",
        help="also write the subjects' attention maps and the loss plot to this PNG",
    )
    g.add_argument(
        "--attention-steps",
        default=None,
        metavar="I,J,...",
        help="steps shown in --attention (default: first, middle and last guided step)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)
