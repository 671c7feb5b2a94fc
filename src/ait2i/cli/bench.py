"""``ait2i bench``: fetch prompts, generate, score and compare benchmark runs; the ShapesWorld benchmark.

ait2i bench fetch t2i-compbench
ait2i bench generate --suite ane --methods ait2i --model CompVis/stable-diffusion-v1-4 --out runs/ane
accelerate launch --num_processes 8 -m ait2i.bench generate --suite ane ...   # 8 GPUs, no overlap
ait2i bench generate ... --shard 3/16                                         # Slurm array task 3 of 16
ait2i bench score runs/ane                                                    # the suite's published metrics
ait2i bench compare runs/ane-none runs/ane-ait2i
ait2i bench shapes --methods default --seeds 0-31 --out runs/shapes           # generate + check + summary
ait2i bench layout --out runs/layout                                          # boxes: none + 3 layout methods
ait2i bench verify-chunks                                                     # spaCy table of T2I-CompBench

Bad input ends with one "ait2i: error: ..." line and exit code 2; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

GEN_SKIP = {"func", "command", "bench_command", "shard", "workers", "threads", "quiet", "_parser", "grid"}


def _generation_args(g: argparse.ArgumentParser, kind: str) -> None:
    """Options of ``generate`` (``kind="generate"``) and of the one-command ``shapes``/``layout`` benchmarks."""
    shapes = kind != "generate"
    g.add_argument(
        "--methods",
        "--method",
        dest="methods",
        default={"generate": "ait2i", "shapes": "default", "layout": "layout"}[kind],
        help="comma-separated methods and variants: none,attend-and-excite,ait2i:w_isolation=0 or the sets "
        "'default', 'ablation' and 'layout' (see ait2i.bench.specs)",
    )
    g.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="setting for every guided method that has it, e.g. --set max_guided_steps=0.5 (repeatable)",
    )
    g.add_argument(
        "--model",
        default=None,
        help="diffusers model id or local folder (safetensors)"
        + ("; default: the shipped ShapesWorld model" if shapes else ""),
    )
    g.add_argument("--protocol", default=None, help="compbench, ane or shapes (default: the suite's)")
    g.add_argument("--seeds", default=None, help="seeds per prompt (default: the suite's, else the protocol's)")
    g.add_argument("--out", required=not shapes, default=f"runs/{kind}" if shapes else None, help="output folder")
    g.add_argument(
        "--limit",
        type=int,
        default=8 if kind == "shapes" else None,
        metavar="N",
        help="only the first N prompts (layout: items) of each category"
        + (" (default 8 of 12)" if kind == "shapes" else ""),
    )
    g.add_argument("--shard", default=None, metavar="I/N", help="take (method, prompt) units I, I+N, ... (0-based)")
    g.add_argument("--workers", type=int, default=1, help="processes sharing the work on this machine (default 1)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    g.add_argument("--batch-size", type=int, default=None, help="seeds per pipeline call (default: all of a prompt)")
    g.add_argument(
        "--force", action="store_true", help="regenerate this run's images (and accept a folder of another run)"
    )
    g.add_argument("--scheduler", default=None, help="override the protocol's scheduler (recorded)")
    g.add_argument(
        "--dtype", default=None, choices=("float16", "bfloat16", "float32"), help="override the protocol's dtype"
    )
    g.add_argument("--steps", type=int, default=None, help="override the protocol's steps (recorded)")
    g.add_argument("--guidance-scale", type=float, default=None, help="override the protocol's CFG scale (recorded)")
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--generator-device", default=None, choices=("cpu", "cuda"), help="where seeded noise is drawn")
    g.add_argument("--device", default=None, help="default: cuda if available")
    g.add_argument("--data-dir", default=None, help="folder of the fetched T2I-CompBench files")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(_parser=g)


def add_parser(subparsers) -> None:
    """Register the ``bench`` command and its sub-commands on an ``argparse`` sub-parser collection."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: AnE, T2I-CompBench++, ShapesWorld",
        description=__doc__,
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

    g = sub.add_parser("generate", help="generate one PNG per (method, prompt, seed); sharded and resumable")
    g.add_argument(
        "--suite",
        required=True,
        help="ane[:<set>], t2i-compbench:<category>, shapes[:<categories>] or layout[:<categories>]",
    )
    _generation_args(g, "generate")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("score", help="score a run folder (checks every PNG's parameters against the manifest)")
    s.add_argument("run_dir")
    s.add_argument(
        "--metrics",
        default=None,
        help="comma list of clip,blip,vqa,clipscore,detect,shapes,layout (default: the suite's published metrics)",
    )
    s.add_argument("--allow-missing", action="store_true", help="score the images present, list the missing")
    s.add_argument("--reference", default=None, help="method the others are compared with (default: the first)")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--detect-threshold", type=float, default=0.1)
    s.add_argument("--data-dir", default=None, help="folder of the fetched T2I-CompBench files")
    s.add_argument("--device", default=None)
    for m in ("clip", "blip", "vqa", "clipscore", "detect"):
        s.add_argument(f"--{m}-model", default=None, help=f"checkpoint for {m} (default: see docs/benchmarks.md)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_score)

    c = sub.add_parser("compare", help="put several scored runs side by side (markdown)")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--out", default=None, help="also write the table to this file")
    c.add_argument("--allow-mismatch", action="store_true", help="compare runs of different protocols/seeds/limits")
    c.set_defaults(func=cmd_compare)

    sh = sub.add_parser("shapes", help="the ShapesWorld benchmark: generate, check every image, summarise")
    sh.add_argument("--categories", default=None, help="comma-separated subset of the ShapesWorld categories")
    sh.add_argument("--reference", default=None, help="method the others are compared with (default: the first)")
    sh.add_argument("--summarize-only", action="store_true", help="generate nothing; summarise what the folder holds")
    sh.add_argument("--grid", default=None, metavar="PNG", help="also draw the first prompt of each category")
    _generation_args(sh, "shapes")
    sh.set_defaults(func=cmd_shapes)

    la = sub.add_parser("layout", help="the ShapesWorld layout benchmark: objects in their boxes, checked, summarised")
    la.add_argument("--categories", default=None, help="comma-separated subset of two,three,corners")
    la.add_argument("--reference", default=None, help="method the others are compared with (default: the first)")
    la.add_argument("--summarize-only", action="store_true", help="generate nothing; summarise what the folder holds")
    _generation_args(la, "layout")
    la.set_defaults(func=cmd_layout)

    v = sub.add_parser("verify-chunks", help="recompute the shipped T2I-CompBench noun-chunk table with spaCy")
    v.add_argument("--data-dir", default=None, help="folder of the fetched T2I-CompBench files")
    v.set_defaults(func=cmd_verify_chunks)


def cmd_fetch(args) -> int:
    from .suites import compbench

    try:
        dest = compbench.fetch(args.dest, base_url=args.base_url or compbench.BASE_URL, force=args.force)
    except OSError as e:
        raise ValueError(str(e)) from None
    print(f"T2I-CompBench prompt files (commit {compbench.COMMIT[:10]}) verified in {dest}")
    return 0


def plan(args, suite_spec: str):
    """The :class:`~ait2i.bench.runner.Run` of a ``generate``/``shapes`` command line (checked, nothing loaded)."""
    from .runner import Run, model_identity, resolve_protocol
    from .specs import parse_methods
    from .suites import load_suite, parse_seeds

    try:
        suite = load_suite(suite_spec, args.data_dir).head(args.limit)
    except OSError as e:
        raise ValueError(str(e)) from None
    methods = parse_methods(args.methods, ",".join(args.set) if args.set else None)
    over = {
        "scheduler": args.scheduler,
        "dtype": args.dtype,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "height": args.height,
        "width": args.width,
        "generator_device": args.generator_device,
    }
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    protocol = resolve_protocol(args.protocol or suite.protocol, device, **over)
    from .runner import PROTOCOLS

    seeds = parse_seeds(args.seeds or suite.seeds or PROTOCOLS[protocol["name"]].seeds)
    if args.model is not None and not Path(args.model).exists() and (args.model.startswith((".", "/", "~"))):
        raise ValueError(f"could not load the model {args.model!r}: no such folder")
    check_out_folder(Path(args.out))
    return Run(suite, methods, seeds, protocol, model_identity(args.model), Path(args.out), args.data_dir), device


def check_out_folder(out: Path) -> None:
    """Refuse a run folder path that names a file (or lies under one) before anything is loaded."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"lies under the file {p}"
                raise ValueError(f"--out {out} {what}; give a folder (it is created if missing)")
            return


def check_out_file(out: Path) -> None:
    """Refuse an output file whose folder is missing, or that names a folder, before anything is computed."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, e.g. {out / 'compare.md'}")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} is missing; create it first")


def _generate(args, run, device, scorers=None) -> None:
    from .runner import check_manifest, generate, launcher_rank, load_pipeline, parse_shard

    check_manifest(run.out, run.manifest(), args.force)  # refuse before any worker starts or any model loads
    if args.workers > 1 and args.shard is None:
        _run_workers(args)
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    shard, nshards = parse_shard(args.shard)
    rank, world = launcher_rank()
    rank, world = shard * world + rank, nshards * world
    pipe = load_pipeline(args.model, run.protocol, device)
    rep = generate(
        pipe,
        run,
        rank=rank,
        world=world,
        batch_size=args.batch_size,
        force=args.force,
        progress=not args.quiet,
        scorers=scorers,
    )
    rate = len(rep.generated) / rep.seconds if rep.seconds > 0 else 0.0
    print(
        f"[{rank}/{world}] {run.suite.name}: {rep.assigned} assigned, {rep.skipped} already done, "
        f"{len(rep.generated)} generated ({rate:.2f} img/s), {len(rep.regenerated)} unreadable regenerated"
        + (f", {len(rep.scored)} saved earlier but unscored, scored now" if rep.scored else "")
    )


def worker_argv(args, i: int, n: int, threads: int) -> list[str]:
    """The command line of worker ``i`` of ``n``: this command's settings, its shard, no progress bar."""
    p = args._parser
    argv = [sys.executable, "-m", "ait2i.bench", args.bench_command]
    for a in p._actions:
        if not a.option_strings or a.dest in GEN_SKIP or a.dest == "help":
            continue
        v = getattr(args, a.dest, None)
        if v is None or v is False:
            continue
        if v is True:
            argv.append(a.option_strings[0])
        elif isinstance(v, list):
            for x in v:
                argv += [a.option_strings[0], str(x)]
        else:
            argv += [a.option_strings[0], str(v)]
    if getattr(args, "suite", None):
        argv += ["--suite", args.suite]
    return argv + ["--shard", f"{i}/{n}", "--threads", str(threads), "--quiet"]


def _run_workers(args) -> None:
    n = args.workers
    threads = args.threads or max(1, (os.cpu_count() or 1) // n)
    logs = [tempfile.TemporaryFile() for _ in range(n)]
    procs = [
        subprocess.Popen(worker_argv(args, i, n, threads), stdout=logs[i], stderr=subprocess.STDOUT) for i in range(n)
    ]
    try:
        for p in procs:
            p.wait()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    for i, p in enumerate(procs):
        logs[i].seek(0)
        text = logs[i].read().decode(errors="replace").strip()
        if p.returncode != 0:
            from ..cliparse import RunFailed

            raise RunFailed(
                f"worker {i}/{n} exited with status {p.returncode}; the folder keeps every finished "
                "image (rerun the same command to resume). Its last lines:\n" + "\n".join(text.splitlines()[-15:])
            )
        print("\n".join(ln for ln in text.splitlines() if "assigned" in ln))


def cmd_generate(args) -> int:
    run, device = plan(args, args.suite)
    _generate(args, run, device)
    return 0


def cmd_score(args) -> int:
    from .report import markdown, write_scores
    from .runner import read_manifest, run_from_manifest, score
    from .scorers import load_scorers

    out = Path(args.run_dir)
    manifest = read_manifest(out)
    run = run_from_manifest(out, args.data_dir)
    suite = run.suite
    names = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else list(suite.scorers)
    if not names:
        raise ValueError(
            f"no implemented metric reproduces {suite.name}'s published score; ask for --metrics "
            f"{','.join(suite.applicable)} for an indicative number"
        )
    wrong = [m for m in names if m not in suite.applicable]
    if wrong:
        raise ValueError(f"metric(s) {wrong} do not apply to {suite.name}; use {', '.join(suite.applicable)}")
    models = {
        m: getattr(args, f"{m}_model")
        for m in ("clip", "blip", "vqa", "clipscore", "detect")
        if getattr(args, f"{m}_model")
    }
    scorers = load_scorers(names, args.device, models, data_dir=args.data_dir, detect_threshold=args.detect_threshold)
    rows = score(
        out,
        scorers,
        data_dir=args.data_dir,
        allow_missing=args.allow_missing,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    scored = {r["image"] for r in rows}
    missing = [run.path(lab, it, s) for lab, _, it in run.units() for s in run.seeds]
    missing = [rel for rel in missing if rel not in scored]
    print(markdown(write_scores(out, rows, manifest, scorers, missing, args.reference)))
    return 0


def cmd_compare(args) -> int:
    from .report import compare

    if args.out:
        check_out_file(Path(args.out))
    table = compare(args.run_dirs, args.allow_mismatch)
    print(table)  # first: the table is never lost to a failed write
    if args.out:
        from .runner import write_atomic

        try:
            write_atomic(Path(args.out), table)
        except OSError as e:
            raise ValueError(f"could not write {args.out} ({e}); the table is printed above") from None
    return 0


def _suite_spec(family: str, categories: str | None) -> str:
    cats = [c.strip() for c in (categories or "").split(",") if c.strip()]
    return family + (":" + "+".join(cats) if cats else "")


def _run_and_summarize(args, spec: str, scorers: dict) -> tuple:
    """Generate ``spec`` with ``scorers`` run on each batch (resumable, sharded), then summarise the folder's rows
    of this plan into ``scores.json``/``scores.md``; returns ``(run, scores)`` (``scores`` None for a shard)."""
    from .report import markdown, write_scores
    from .runner import check_manifest, matched_rows, read_manifest

    run, device = plan(args, spec)
    if args.reference and args.reference not in [m for m, _ in run.methods]:
        raise ValueError(f"reference {args.reference!r} is not among the methods {[m for m, _ in run.methods]}")
    if args.summarize_only:
        read_manifest(run.out)  # a run folder of this version
        check_manifest(run.out, run.manifest(), False)  # a request unlike the folder is refused, not relabelled
    else:
        _generate(args, run, device, scorers)
    if args.shard is not None:
        return run, None
    # only rows of the PNGs on disk, byte for byte, made as this request asks
    rows, missing = matched_rows(run, [k for sc in scorers.values() for k in sc.keys])
    if not rows:
        raise ValueError(f"{run.out} holds no checked images of this run yet")
    scope = read_manifest(run.out)
    scope.update({k: v for k, v in run.manifest().items() if k in ("limit", "seeds", "methods")})  # what was asked
    scores = write_scores(run.out, rows, scope, scorers, missing, args.reference)
    print(markdown(scores))
    return run, scores


def cmd_shapes(args) -> int:
    """Generate (resumable, sharded), check every image as it is made, summarise with paired differences."""
    from .scorers import ShapesScorer

    run, scores = _run_and_summarize(args, _suite_spec("shapes", args.categories), {"shapes": ShapesScorer()})
    if scores is not None and args.grid:
        from ..shapes.bench import save_grid

        save_grid(run.out, args.grid, methods=[m for m, _ in run.methods], seeds=list(run.seeds)[:8])
        print(f"grid: {args.grid}")
    return 0


def cmd_layout(args) -> int:
    """The layout benchmark: generate (boxes for box methods), score each image's boxes and binding, summarise."""
    from .scorers import LayoutScorer

    _run_and_summarize(args, _suite_spec("layout", args.categories), {"layout": LayoutScorer()})
    return 0


def cmd_verify_chunks(args) -> int:
    from .chunks import verify
    from .suites.compbench_chunks import PROVENANCE

    try:
        diffs = verify(args.data_dir)
    except OSError as e:
        raise ValueError(str(e)) from None
    print(f"shipped table: {PROVENANCE}")
    for d in diffs:
        print(d)
    print(f"{len(diffs)} prompt(s) differ from the installed spaCy")
    return 1 if diffs else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ait2i.bench ...`` (what ``accelerate launch``/``torchrun`` run): same as ``ait2i bench ...``.
    One error policy: bad input is one ``ait2i: error:`` line and exit code 2, a failed worker exit code 1."""
    parser = argparse.ArgumentParser(prog="ait2i")
    add_parser(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    from ..cliparse import run_command  # the one error policy (docs/errors.md)

    return run_command(lambda: args.func(args))
