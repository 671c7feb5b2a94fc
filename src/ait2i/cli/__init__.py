"""The ``ait2i`` command line: ``generate`` images with guidance, list a prompt's ``tokens``, run ``bench``.

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
import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path

from .cliparse import parse_seeds, parse_settings, run_command
from .hosts.schedulers import check_scheduler_name

SHIPPED_MODEL = "shapesworld"  # what --model defaults to, as recorded in the metadata
#: ``--model`` names of the shipped ShapesWorld models (a local folder of that name wins): the SD 1.x UNet (the
#: default) and its SD3-family sibling, the MM-DiT.
SHIPPED_MODELS = (SHIPPED_MODEL, "shapesworld-mmdit")


# -- argument parsing helpers -------------------------------------------------------------------------------------
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


def parse_subject(text: str) -> str | list[int]:
    """A subject argument: token indices (``"5"``, ``"5,6"``) or a phrase of the prompt (``"red car"``)."""
    if re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", text):
        return [int(x) for x in text.split(",")]
    return text


def method_config(method: str, settings: list[str] | None):
    """The config of ``method`` with the ``--set FIELD=VALUE`` ``settings`` applied (values read by the field's type,
    as ``ait2i bench`` reads them); an unknown field is a `ValueError` listing the valid ones."""
    from .config import get_config

    cfg = get_config(method)
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


# -- tokens -------------------------------------------------------------------------------------------------------
def token_table(tokenizer, prompt: str) -> list[tuple[int, str, str]]:
    """``(index, token, word)`` for each token the text encoder sees, start and end tokens included.

    ``word`` is the prompt word the token is a piece of (CLIP splits "surfboard" into "surf" + "board"), or
    ``"<start>"`` / ``"<end>"``. The index is what ``--subjects`` and ``token_indices`` expect.
    """
    from .subjects import prompt_tokens

    toks = prompt_tokens(tokenizer, prompt)
    added = set(tokenizer.get_added_vocab()) if hasattr(tokenizer, "get_added_vocab") else set()
    rows: list[tuple[int, str, str]] = []
    last = len(toks) - 1
    pending: list[tuple[int, str]] = []

    def flush():
        word = "".join(t.removesuffix("</w>") for _, t in pending)
        rows.extend((i, t.removesuffix("</w>"), word) for i, t in pending)
        pending.clear()

    for i, tok in toks:
        if i == 0 or i == last:
            flush()
            rows.append((i, tok, "<start>" if i == 0 else "<end>"))
            continue
        pending.append((i, tok))
        if tok.endswith("</w>") or tok in added:
            flush()
    flush()
    return sorted(rows)


def _format_token_table(tokenizer, prompt: str) -> str:
    rows = token_table(tokenizer, prompt)
    width = max(len(t) for _, t, _ in rows)
    lines = [f"{'index':>5}  {'token':<{width}}  word"]
    lines += [f"{i:>5}  {t:<{width}}  {w}" for i, t, w in rows]
    words = [(i, t, w) for i, t, w in rows if w not in ("<start>", "<end>")]
    if words:
        word = words[-1][2]
        last = []
        for i, _, w in reversed(words):  # the pieces of the prompt's last word
            if w != word:
                break
            last.insert(0, str(i))
        lines.append(
            f'\nPass subjects as words of the prompt, e.g. --subjects "{word}" (an adjective before the noun binds '
            f'to it: --subjects "red car"; a repeated word: "cat#2"), or as token indices, e.g. '
            f"--subjects {','.join(last)}."
        )
    full = tokenizer(prompt, truncation=False).input_ids
    if len(full) > len(rows):
        lines.append(
            f"warning: the prompt has {len(full)} tokens; the text encoder reads only the first "
            f"{tokenizer.model_max_length} (the rest is cut off)."
        )
    return "\n".join(lines)


def _tokenizer_component(model_index: Path) -> str:
    """The subfolder of the tokenizer the subjects resolve on, from a folder's ``model_index.json`` (Flux: T5's)."""
    from .hosts import host_named

    if not model_index.is_file():
        return "tokenizer"
    host = host_named(json.loads(model_index.read_text()).get("_class_name", ""))
    return host.tokenizer_component if host is not None else "tokenizer"


def _load_tokenizer(model: str | None):
    from transformers import AutoTokenizer

    if model is None or (model in SHIPPED_MODELS and not Path(model).exists()):
        from .shapes.model import pretrained_dir, pretrained_mmdit_dir

        folder = pretrained_mmdit_dir() if model == "shapesworld-mmdit" else pretrained_dir()
        return AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    try:
        path = Path(model).expanduser()
        if path.is_dir():
            sub = path / _tokenizer_component(path / "model_index.json")
            return AutoTokenizer.from_pretrained(str(sub if sub.is_dir() else path))
        _check_hub_id(model)
        from huggingface_hub import hf_hub_download

        component = _tokenizer_component(Path(hf_hub_download(model, "model_index.json")))
        return AutoTokenizer.from_pretrained(model, subfolder=component)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear message
        raise ValueError(_load_error(model, e)) from None


def cmd_tokens(args) -> int:
    print(_format_token_table(_load_tokenizer(args.model), args.prompt))
    return 0


# -- generate -----------------------------------------------------------------------------------------------------
def _check_hub_id(model: str) -> None:
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model:
        raise ValueError(f"model folder {model!r} does not exist; pass an existing diffusers folder or a hub id")


def _load_error(model: str, e: Exception) -> str:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return (
        f"cannot load model {model!r} ({type(e).__name__}: {reason[:300]}). Pass a local diffusers folder "
        "(model_index.json inside) or a hub id whose files are cached or downloadable from this machine."
    )


def _absent_components(model_index: Path) -> dict:
    """Components a local folder saved as absent (``[null, null]``, e.g. SD3 without T5): passed as ``None``, which
    diffusers requires for the ones that are not optional in the pipeline class."""
    if not model_index.is_file():
        return {}
    entries = json.loads(model_index.read_text())
    return {k: None for k, v in entries.items() if not k.startswith("_") and v == [None, None]}


def load_model(model: str | None, dtype: str = "float32", scheduler: str = "default"):
    """Load a diffusers pipeline (``None``: the shipped ShapesWorld model) and set its scheduler.

    Args:
        model (`str`, *optional*): a local diffusers folder, a hub id (safetensors weights only), or the name of a
            shipped ShapesWorld model (:data:`SHIPPED_MODELS`).
        dtype (`str`, *optional*, defaults to `"float32"`): ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        scheduler (`str`, *optional*, defaults to `"default"`): a short name of
            ``ait2i.hosts.schedulers.SCHEDULER_NAMES`` (``"ddim"``, ``"euler"``, ...) or ``"default"`` (the
            model's own).
    """
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    torch_dtype = dtypes[dtype]
    if model == "shapesworld-mmdit" and not Path(model).exists():
        from .shapes.model import load_sd3_pipeline

        try:
            pipe = load_sd3_pipeline(None, dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the shipped ShapesWorld MM-DiT ({e})") from None
    elif model is None or (model == SHIPPED_MODEL and not Path(model).exists()):
        try:
            from .shapes.model import load_pipeline
        except ImportError as e:
            raise ValueError(
                f"the shipped ShapesWorld model is not available in this installation ({e}); "
                "pass --model <hub id or local diffusers folder>"
            ) from None
        try:
            pipe = load_pipeline(dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"cannot load the shipped ShapesWorld model ({e}); pass --model <hub id or local diffusers folder>"
            ) from None
    else:
        from diffusers import DiffusionPipeline

        path = Path(model).expanduser()
        if not path.exists():
            _check_hub_id(model)
        elif not (path / "model_index.json").is_file():
            raise ValueError(f"{model!r} is not a diffusers pipeline folder (no model_index.json in it)")
        try:
            with warnings.catch_warnings():  # diffusers >= 0.36 renames torch_dtype; older ones know only it
                warnings.simplefilter("ignore", FutureWarning)
                pipe = DiffusionPipeline.from_pretrained(
                    str(path) if path.exists() else model,
                    torch_dtype=torch_dtype,
                    use_safetensors=True,
                    **_absent_components(path / "model_index.json"),
                )
        except Exception as e:  # noqa: BLE001 - network, missing files, wrong format: one clear message
            raise ValueError(_load_error(model, e)) from None
    if scheduler != "default":
        from .hosts.schedulers import scheduler_from_name

        pipe.scheduler = scheduler_from_name(scheduler, pipe.scheduler.config)
    return pipe


@contextlib.contextmanager
def _loading_bars(enabled: bool):
    """Turn diffusers' and transformers' model-loading progress bars off for the block (``--quiet``), then
    restore them."""
    from diffusers.utils import logging as diffusers_logging
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


#: ``--scheduler`` choices that need a package the installation may lack (not a dependency of ait2i).


def _check_device(device: str | None) -> str:
    """``--device`` as given (``None``: cuda if available, else cpu), refused unless this machine has it."""
    import torch

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
    from .metadata import check_destination

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
    import torch

    import ait2i

    from . import __version__, hosts
    from .metadata import save_png
    from .viz import save_attention

    plan = _plan(args)
    with _loading_bars(enabled=not args.quiet):
        pipe = load_model(args.model, args.dtype, args.scheduler)
    if plan.subjects is None and plan.cfg.name != "none":
        raise ValueError(
            "no --subjects given; name the words to guide. Tokens of the prompt:\n"
            + _format_token_table(hosts.host_for(pipe).subject_tokenizer(pipe), args.prompt)
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
        "ait2i_version": __version__,
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


def cmd_demo(args) -> int:
    """``ait2i demo``: serve the web page (a `ValueError` naming what to install when Gradio is missing)."""
    from .demo import serve

    serve(args.model, args.host, args.port)
    return 0


# -- bench --------------------------------------------------------------------------------------------------------
def _add_bench(sub, wanted: bool) -> None:
    """Register ``ait2i bench`` (the public-benchmark runner). Imported only when asked for, and guarded, so that
    a problem there never breaks ``generate`` or ``tokens``."""
    if wanted:
        try:
            from .bench.cli import add_parser

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
    from . import __version__
    from .hosts.schedulers import SCHEDULER_NAMES
    from .methods import available_methods

    parser = argparse.ArgumentParser(
        prog="ait2i",
        description="AI-T2I and Attend-and-Excite cross-attention guidance on diffusers pipelines.",
    )
    parser.add_argument("--version", action="version", version=f"ait2i {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser(
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
        type=_method_arg,
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

    t = sub.add_parser("tokens", help="print a prompt's tokens with their indices (for --subjects)")
    t.add_argument("prompt")
    t.add_argument(
        "--model",
        default=None,
        help="hub id or local diffusers folder whose tokenizer to use (default: SD 1.x CLIP)",
    )
    t.set_defaults(func=cmd_tokens)

    d = sub.add_parser("demo", help='serve the web demo on this machine (needs pip install -e ".[demo]")')
    d.add_argument("--model", default=None, help="model selected when the page opens (default: shipped ShapesWorld)")
    d.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    d.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    d.set_defaults(func=cmd_demo)

    args = sys.argv[1:] if argv is None else argv
    _add_bench(sub, wanted=bool(args) and args[0] == "bench")
    from .tune_cli import add_parser as add_tune  # Optuna is imported only when a study runs

    add_tune(sub)
    return parser


def _method_arg(name: str) -> str:
    """``--method``: a registered method or a preset file (``*.toml``, checked when it is loaded)."""
    from .methods import available_methods

    if name in available_methods() or name.lower().endswith(".toml"):
        return name
    raise argparse.ArgumentTypeError(
        f"invalid choice: {name!r} (choose from {', '.join(available_methods())}, or a preset file .toml)"
    )


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


if __name__ == "__main__":
    sys.exit(main())
