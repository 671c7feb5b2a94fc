"""``ait2i bench``: fetch prompts, generate, score and compare benchmark runs; the ShapesWorld benchmark.

ait2i bench fetch t2i-compbench
ait2i bench generate --suite ane --methods ait2i --model CompVis/stable-diffusion-v1-4 --out runs/ane
accelerate launch --num_processes 8 -m ait2i.cli bench generate --suite ane ...   # 8 GPUs, no overlap
ait2i bench generate ... --shard 3/16                                         # Slurm array task 3 of 16
ait2i bench score runs/ane                                                    # the suite's published metrics
ait2i bench compare runs/ane-none runs/ane-ait2i
ait2i bench shapes --methods default --seeds 0-31 --out runs/shapes           # generate + check + summary
ait2i bench layout --out runs/layout                                          # boxes: none + 3 layout methods
ait2i bench personalization --out runs/personalization                        # the shipped star and ring concepts
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

from ..bench import grid, rundir, runner
from ..bench.chunks import shipped_table, verify, write_table
from ..bench.report import compare, markdown, write_scores
from ..bench.scorers import LayoutScorer, ShapesScorer, load_scorers
from ..bench.specs import parse_methods
from ..bench.suites import compbench, load_suite
from ..io import write_atomic
from ..models import model_identity
from ..parsing import parse_seeds
from .errors import RunFailed, run_command

GEN_SKIP = {"func", "command", "bench_command", "shard", "workers", "threads", "quiet", "_parser", "grid"}


def _generation_args(g: argparse.ArgumentParser, kind: str) -> None:
    """Options of ``generate`` (``kind="generate"``) and of the one-command ``shapes``/``layout`` benchmarks."""
    shapes = kind != "generate"
    g.add_argument(
        "--methods",
        "--method",
        dest="methods",
        default={"generate": "ait2i", "shapes": "default", "layout": "layout", "personalization": "default"}[kind],
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

    pe = sub.add_parser("personalization", help="the shipped star and ring concepts (LoRA, textual inversion), checked")
    pe.add_argument("--sets", default=None, help="comma-separated concept sets of star,ring,star+ring (default all)")
    pe.add_argument("--kinds", default=None, help="comma-separated kinds of ti,lora,base (default all)")
    pe.add_argument("--concepts", default=None, help="folder of star-lora/, ring-ti/ ... (default: the shipped)")
    pe.add_argument("--adapter-weight", type=float, default=1.0, help="weight of each LoRA in set_adapters")
    pe.add_argument(
        "--regional",
        action="store_true",
        help="star+ring LoRA items: each adapter acts only where its subject is (generate's regional_adapters)",
    )
    pe.add_argument("--summarize-only", action="store_true", help="generate nothing; summarise what the folder holds")
    pe.add_argument("--grid", default=None, metavar="PNG", help="also draw seeds 0-7 of some prompts")
    pe.add_argument("--grid-prompts", default=None, metavar="SET:INDEX,...", help="e.g. star:2,star+ring:0")
    pe.add_argument("--grid-kinds", default=None, help="comma-separated kinds of the grid's rows (default all)")
    _generation_args(pe, "personalization")
    pe.set_defaults(func=cmd_personalization)

    v = sub.add_parser("verify-chunks", help="recompute the shipped T2I-CompBench noun-chunk table with spaCy")
    v.add_argument("--data-dir", default=None, help="folder of the fetched T2I-CompBench files")
    v.add_argument(
        "--write",
        default=None,
        metavar="JSON",
        help="write the table recomputed with the installed spaCy to this file instead (the shipped one is "
        "src/ait2i/bench/data/compbench_chunks.json)",
    )
    v.add_argument("--source", default="", help="with --write: where the spaCy model came from (recorded)")
    v.set_defaults(func=cmd_verify_chunks)


def cmd_fetch(args) -> int:
    try:
        dest = compbench.fetch(args.dest, base_url=args.base_url or compbench.BASE_URL, force=args.force)
    except OSError as e:
        raise ValueError(str(e)) from None
    print(f"T2I-CompBench prompt files (commit {compbench.COMMIT[:10]}) verified in {dest}")
    return 0


def plan(args, suite_spec: str):
    """The :class:`~ait2i.bench.runner.Run` of a ``generate``/``shapes`` command line (checked, nothing loaded)."""
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
    import torch  # heavy: only once the arguments are read

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    protocol = runner.resolve_protocol(args.protocol or suite.protocol, device, **over)
    seeds = tuple(sorted(parse_seeds(args.seeds or suite.seeds or runner.PROTOCOLS[protocol["name"]].seeds, "--seeds")))
    if args.model is not None and not Path(args.model).exists() and (args.model.startswith((".", "/", "~"))):
        raise ValueError(f"could not load the model {args.model!r}: no such folder")
    check_out_folder(Path(args.out))
    run = runner.Run(suite, methods, seeds, protocol, model_identity(args.model), Path(args.out), args.data_dir)
    return run, device


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
    rundir.check_manifest(run.out, run.manifest(), args.force)  # refuse before any worker starts or any model loads
    if args.workers > 1 and args.shard is None:
        _run_workers(args)
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    shard, nshards = runner.parse_shard(args.shard)
    rank, world = runner.launcher_rank()
    rank, world = shard * world + rank, nshards * world
    pipe = runner.load_pipeline(args.model, run.protocol, device)
    rep = runner.generate(
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
    argv = [sys.executable, "-m", "ait2i.cli", "bench", args.bench_command]
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
            raise RunFailed(
                f"worker {i}/{n} exited with status {p.returncode}; the folder keeps every finished "
                "image (rerun the same command to resume). Its last lines:\n" + "\n".join(text.splitlines()[-15:])
            )
        print("\n".join(ln for ln in text.splitlines() if "assigned" in ln))


def cmd_generate(args) -> int:
    if args.suite.partition(":")[0] == "personalization":
        raise ValueError(
            "the personalization suite runs with `ait2i bench personalization` (it loads each item's concepts and "
            "records their files' hashes and the adapter weight with the model)"
        )
    run, device = plan(args, args.suite)
    _generate(args, run, device)
    return 0


def cmd_score(args) -> int:
    out = Path(args.run_dir)
    manifest = rundir.read_manifest(out)
    run = runner.run_from_manifest(out, args.data_dir)
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
    rows = runner.score(
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
    if args.out:
        check_out_file(Path(args.out))
    table = compare(args.run_dirs, args.allow_mismatch)
    print(table)  # first: the table is never lost to a failed write
    if args.out:
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
    run, device = plan(args, spec)
    if args.reference and args.reference not in [m for m, _ in run.methods]:
        raise ValueError(f"reference {args.reference!r} is not among the methods {[m for m, _ in run.methods]}")
    if args.summarize_only:
        rundir.read_manifest(run.out)  # a run folder of this version
        rundir.check_manifest(run.out, run.manifest(), False)  # a request unlike the folder is refused, not relabelled
    else:
        _generate(args, run, device, scorers)
    if args.shard is not None:
        return run, None
    # only rows of the PNGs on disk, byte for byte, made as this request asks
    rows, missing = runner.matched_rows(run, [k for sc in scorers.values() for k in sc.keys])
    if not rows:
        raise ValueError(f"{run.out} holds no checked images of this run yet")
    rows = runner.rescore_rows(run, rows, scorers)  # the checker's values read again: never a stale checker
    scope = rundir.read_manifest(run.out)
    scope.update({k: v for k, v in run.manifest().items() if k in ("limit", "seeds", "methods")})  # what was asked
    scores = write_scores(run.out, rows, scope, scorers, missing, args.reference)
    print(markdown(scores))
    return run, scores


def cmd_shapes(args) -> int:
    """Generate (resumable, sharded), check every image as it is made, summarise with paired differences."""
    run, scores = _run_and_summarize(args, _suite_spec("shapes", args.categories), {"shapes": ShapesScorer()})
    if scores is not None and args.grid:
        grid.save_grid(run.out, args.grid, methods=[m for m, _ in run.methods], seeds=list(run.seeds)[:8])
        print(f"grid: {args.grid}")
    return 0


def cmd_layout(args) -> int:
    """The layout benchmark: generate (boxes for box methods), score each image's boxes and binding, summarise."""
    _run_and_summarize(args, _suite_spec("layout", args.categories), {"layout": LayoutScorer()})
    return 0


def cmd_personalization(args) -> int:
    """Personalized concepts: generate (each item with its concepts loaded; resumable, sharded), check every
    image, write ``summary.md`` per concept set (docs/results/personalization.md)."""
    import dataclasses

    from ..bench.rundir import check_manifest, read_manifest
    from ..bench.runner import matched_rows
    from ..bench.specs import config_dict
    from ..bench.suites import personalization as P

    def listed(text):
        return [x.strip() for x in (text or "").split(",") if x.strip()]

    if args.model is not None:
        raise ValueError("the concepts were trained on the shipped ShapesWorld model; drop --model")
    cats = P.categories(listed(args.sets) or P.CONCEPT_SETS, listed(args.kinds) or P.MEASURE_KINDS)
    picks = P.parse_picks(listed(args.grid_prompts)) if args.grid_prompts else None
    grid_kinds = listed(args.grid_kinds) or None
    P.categories(P.CONCEPT_SETS, grid_kinds or ())  # an unknown kind is refused before anything loads
    run, device = plan(args, "personalization:" + ",".join(cats))
    suite = P.suite(
        ",".join(cats), concepts=args.concepts, adapter_weight=args.adapter_weight, regional=args.regional
    ).head(args.limit)
    model = P.model_identity(run.model, cats, args.concepts, args.adapter_weight)  # concept files checked here
    run = dataclasses.replace(run, suite=suite, model=model)
    if args.summarize_only:
        read_manifest(run.out)  # a run folder of this version
        check_manifest(run.out, run.manifest(), False)  # a request unlike the folder is refused, not relabelled
    else:
        _generate(args, run, device, {"personalization": P.PersonalizationScorer()})
    if args.shard is not None:
        return 0
    rows, missing = matched_rows(run, P.METRICS)
    if not rows:
        raise ValueError(f"{run.out} holds no checked images of this run yet")
    rows = P.rescore(run.out, rows)  # every image read again by the current checker
    methods = {label: config_dict(cfg) for label, cfg in run.methods}
    print(P.write_summary(run.out, rows, methods, args.adapter_weight, missing, regional=args.regional))
    if args.grid:
        _, legend = P.save_grid(run.out, args.grid, rows, picks, list(run.seeds)[:8], kinds=grid_kinds, methods=methods)
        print("\n".join([f"grid: {args.grid}", *legend]))
    return 0


def cmd_verify_chunks(args) -> int:
    if args.write:
        check_out_file(Path(args.write))
    try:
        prompts = compbench.official_prompts(args.data_dir)
    except OSError as e:
        raise ValueError(str(e)) from None
    if args.write:
        n = write_table(args.write, prompts, args.source)
        print(f"wrote the chunks of {n} prompts to {args.write}")
        return 0
    diffs = verify(prompts)
    print(f"shipped table: {shipped_table()['provenance']}")
    for d in diffs:
        print(d)
    print(f"{len(diffs)} prompt(s) differ from the installed spaCy")
    return 1 if diffs else 0


def main(argv: list[str] | None = None) -> int:
    """``ait2i bench ...`` run on its own (``argv`` without ``bench``; ``python -m ait2i.cli bench ...`` is what
    ``accelerate launch``/``torchrun`` run).
    One error policy: bad input is one ``ait2i: error:`` line and exit code 2, a failed worker exit code 1."""
    parser = argparse.ArgumentParser(prog="ait2i")
    add_parser(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    return run_command(lambda: args.func(args))
