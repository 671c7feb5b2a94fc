"""``ait2i bench``: fetch prompts, generate, score and compare the public benchmarks; run the ShapesWorld bench.

ait2i bench fetch t2i-compbench
ait2i bench generate --suite ane --method ait2i --model CompVis/stable-diffusion-v1-4 --seeds 0-63 --out runs/ane
accelerate launch --num_processes 8 -m ait2i.bench generate --suite ane ...   # 8 GPUs, no overlap
ait2i bench generate ... --shard 3/16                                         # Slurm array task 3 of 16
ait2i bench score runs/ane --metrics clip,blip
ait2i bench compare runs/ane-none runs/ane-ait2i
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    """Register the ``bench`` command and its sub-commands on an ``argparse`` sub-parser collection."""
    bench = subparsers.add_parser(
        "bench",
        help="public benchmarks (AnE, T2I-CompBench++) and the ShapesWorld benchmark",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    bench.set_defaults(func=lambda a: (bench.print_help(sys.stderr), 2)[1])

    f = sub.add_parser("fetch", help="download benchmark prompt files at their pinned commit and verify hashes")
    f.add_argument("name", choices=("t2i-compbench",))
    f.add_argument("--dest", default=None, help="target folder (default: $AIT2I_COMPBENCH_DIR or ~/.cache/ait2i)")
    f.add_argument("--base-url", default=None, help="mirror serving the same files (default: GitHub, pinned)")
    f.add_argument("--force", action="store_true", help="download again even if valid copies exist")
    f.set_defaults(func=cmd_fetch)

    g = sub.add_parser("generate", help="generate one PNG per (prompt, seed); sharded and resumable")
    g.add_argument(
        "--suite", required=True, help="ane, ane:animals, ane:animals_objects, ane:objects, or t2i-compbench:<category>"
    )
    g.add_argument("--method", default="ait2i", help="ait2i, ait2i-paper, attend-and-excite or none")
    g.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="override a method config field, e.g. --set scale_factor=30 (repeatable; recorded in the manifest)",
    )
    g.add_argument("--model", required=True, help="diffusers model id or local folder (safetensors)")
    g.add_argument("--seeds", default=None, help="e.g. 0-63 (AnE default) or 42-51 (T2I-CompBench default)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument(
        "--limit", type=int, default=None, metavar="N", help="only the first N prompts of each category (smoke tests)"
    )
    g.add_argument("--shard", default=None, metavar="I/N", help="take work items I, I+N, ... (0-based I)")
    g.add_argument("--batch-size", type=int, default=4, help="seeds per pipeline call (default: 4)")
    g.add_argument("--force", action="store_true", help="write into a folder made by a different run")
    g.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    g.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance (default: 7.5)")
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument(
        "--dtype",
        default=None,
        choices=("float16", "bfloat16", "float32"),
        help="default: float16 on CUDA, float32 on CPU",
    )
    g.add_argument("--device", default=None, help="default: the launcher's device, else cuda if available")
    g.add_argument(
        "--generator-device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where seeded noise is drawn: cpu (portable, default) or cuda (as the AnE scripts)",
    )
    g.add_argument("--data-dir", default=None, help="folder of the fetched T2I-CompBench files")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("score", help="score a run folder with the published metrics")
    s.add_argument("run_dir")
    s.add_argument(
        "--metrics",
        default=None,
        help="comma list of clip,blip,vqa,clipscore,detect (default: the suite's published metrics)",
    )
    s.add_argument("--allow-missing", action="store_true", help="score the images present, list the missing")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--detect-threshold", type=float, default=0.1)
    s.add_argument("--data-dir", default=None, help="folder of the fetched T2I-CompBench files")
    s.add_argument("--device", default=None)
    for m in ("clip", "blip", "vqa", "clipscore", "detect"):
        s.add_argument(f"--{m}-model", default=None, help=f"model id for {m} (default: see docs/benchmarks.md)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_score)

    c = sub.add_parser("compare", help="put several scored runs side by side (markdown)")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--out", default=None, help="also write the table to this file")
    c.set_defaults(func=cmd_compare)

    sh = sub.add_parser("shapes", help="the ShapesWorld benchmark on the shipped model (ground-truth checker)")
    try:
        from ..shapes import bench as shapes_bench

        shapes_bench.add_arguments(sh)
        sh.set_defaults(func=shapes_bench.run)
    except Exception as e:  # noqa: BLE001 - the other sub-commands stay usable
        msg = f"ait2i bench shapes is unavailable ({type(e).__name__}: {e})"
        sh.add_argument("rest", nargs=argparse.REMAINDER)
        sh.set_defaults(func=lambda a: _fail(msg))


def _fail(msg: str) -> int:
    raise ValueError(msg)


def cmd_fetch(args) -> int:
    from . import compbench

    try:
        dest = compbench.fetch(args.dest, base_url=args.base_url or compbench.BASE_URL, force=args.force)
    except OSError as e:
        raise ValueError(str(e)) from None
    print(f"T2I-CompBench prompt files (commit {compbench.COMMIT[:10]}) verified in {dest}")
    return 0


def cmd_generate(args) -> int:
    import torch

    from ..config import get_config
    from .generation import (
        build_manifest,
        check_manifest,
        launcher_rank,
        load_pipeline,
        parse_shard,
        run_generation,
    )
    from .suites import DEFAULT_SEEDS, load_suite, parse_seeds

    try:
        suite = load_suite(args.suite, args.data_dir).head(args.limit)
    except OSError as e:
        raise ValueError(str(e)) from None
    seeds = parse_seeds(args.seeds) if args.seeds else DEFAULT_SEEDS[suite.family]
    from ..cli import method_config, parse_overrides

    cfg = method_config(args.method, parse_overrides(args.set)) if args.set else get_config(args.method)
    shard, nshards = parse_shard(args.shard)
    rank, world, device = launcher_rank()
    rank, world = shard * world + rank, nshards * world
    device = args.device or device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float16" if str(device).startswith("cuda") else "float32")
    sampling = {
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "height": args.height,
        "width": args.width,
        "dtype": dtype,
        "generator_device": args.generator_device,
    }
    # Refuse a folder of another run before the (slow) model load; nothing is written until the model loads.
    check_manifest(Path(args.out), build_manifest(suite, seeds, args.model, cfg, **sampling), args.force)
    pipe = load_pipeline(args.model, dtype, device)
    rep = run_generation(
        pipe,
        suite,
        seeds,
        args.out,
        method=cfg,
        model=args.model,
        rank=rank,
        world=world,
        batch_size=args.batch_size,
        force=args.force,
        progress=not args.quiet,
        **sampling,
    )
    rate = len(rep.generated) / rep.seconds if rep.seconds > 0 else 0.0
    print(
        f"[{rank}/{world}] {suite.name}: {rep.assigned} assigned, {rep.skipped} already done, "
        f"{len(rep.generated)} generated ({rate:.2f} img/s), {len(rep.regenerated)} corrupt regenerated"
    )
    return 0


def cmd_score(args) -> int:
    from .scoring import markdown, score_run

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    names = {
        m: getattr(args, f"{m}_model")
        for m in ("clip", "blip", "vqa", "clipscore", "detect")
        if getattr(args, f"{m}_model")
    }
    try:
        out = score_run(
            args.run_dir,
            metrics,
            data_dir=args.data_dir,
            allow_missing=args.allow_missing,
            batch_size=args.batch_size,
            detect_threshold=args.detect_threshold,
            progress=not args.quiet,
            model_names=names,
            device=args.device,
        )
    except OSError as e:
        raise ValueError(str(e)) from None
    print(markdown([out]))
    return 0


def cmd_compare(args) -> int:
    from .scoring import compare_runs

    table = compare_runs(args.run_dirs)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table)
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ait2i.bench ...`` (what ``accelerate launch``/``torchrun`` run): same as ``ait2i bench ...``."""
    import os

    parser = argparse.ArgumentParser(prog="ait2i")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as e:
        if os.environ.get("AIT2I_DEBUG"):
            raise
        print(f"ait2i: error: {e}", file=sys.stderr)
        return 2
