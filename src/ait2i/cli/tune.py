"""``ait2i tune`` and ``ait2i tune report``: the command line of :func:`ait2i.tuning.tune` and the study report.

ait2i tune --method ait2i --suite shapes:two+three --trials 60 --seeds 0-7 --holdout-seeds 1000-1031 \\
    --storage sqlite:///runs/tune.db --study unet-ait2i --workers 2 --out unet-ait2i.toml
ait2i tune --method ait2i --objectives reward,time --space from_where="down|down+mid|up+down" ...
ait2i tune report --storage sqlite:///runs/tune.db --study unet-ait2i --out runs/tune-report

Bad input ends with one "ait2i: error: ..." line and exit code 2, before any model is loaded.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

from ..io import write_atomic
from ..tuning import open_storage, redact, require_optuna, tune

#: Options passed on to the worker processes of ``--workers`` (dest -> flag).
_FORWARD = {
    "method": "--method", "suite": "--suite", "model": "--model", "trials": "--trials", "seeds": "--seeds",
    "holdout_seeds": "--holdout-seeds", "storage": "--storage", "study": "--study", "workdir": "--workdir",
    "objectives": "--objectives", "reward": "--reward", "chunks": "--chunks", "limit": "--limit",
    "protocol": "--protocol", "steps": "--steps", "scheduler": "--scheduler", "guidance_scale": "--guidance-scale",
    "dtype": "--dtype", "height": "--height", "width": "--width", "device": "--device", "clock": "--clock",
    "sampler_seed": "--sampler-seed", "heartbeat": "--heartbeat",
}  # fmt: skip


def add_parser(subparsers) -> None:
    """Register ``ait2i tune`` (and ``ait2i tune report``) on an ``argparse`` sub-parser collection."""
    t = subparsers.add_parser(
        "tune",
        help="find a method's settings for a model and task (Optuna), confirmed on held-out seeds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("action", nargs="?", choices=("report",), help="'report': tables and plots of a study")
    t.add_argument("--method", default="ait2i", help="registered method or preset file to start from")
    t.add_argument("--suite", default="shapes", help="shapes[:cats], layout[:cats] or a prompt file")
    t.add_argument("--model", default=None, help="hub id or local folder (default: the shipped ShapesWorld model)")
    t.add_argument("--trials", type=int, default=40, help="total finished trials, all workers together")
    t.add_argument("--seeds", default="0-7", help="search seeds (default 0-7)")
    t.add_argument("--holdout-seeds", default="1000-1031", help="held-out seeds, disjoint from --seeds")
    t.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///<workdir>/study.db)")
    t.add_argument("--study", default=None, help="study name (default <method>-<suite>)")
    t.add_argument("--workdir", default=None, help="trial and held-out images (default runs/tune/<study>)")
    t.add_argument("--workers", type=int, default=1, help="processes sharing the study on this machine")
    t.add_argument("--join", action="store_true", help="only run trials of the study (no held-out check, no preset)")
    t.add_argument("--out", default=None, help="preset file to write (.toml); report: the output folder")
    t.add_argument("--objectives", default="reward", help="reward (TPE, pruning) or reward,time (NSGA-II)")
    t.add_argument("--reward", default=None, help="score key (clean_binding, iou, blip_vqa, ...) or module:function")
    t.add_argument("--space", action="append", default=[], metavar="FIELD=LOW:HIGH[:log]|a|b", help="(repeatable)")
    t.add_argument("--fix", action="append", default=[], metavar="FIELD=VALUE", help="fix a field (repeatable)")
    t.add_argument("--only", default=None, metavar="FIELD,...", help="search only these declared fields")
    t.add_argument("--chunks", type=int, default=4, help="seed chunks per trial, reward reported after each")
    t.add_argument("--limit", type=int, default=None, help="first N prompts of each category")
    t.add_argument("--protocol", default=None, help="generation protocol (default: the suite's)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--scheduler", default=None)
    t.add_argument("--guidance-scale", type=float, default=None)
    t.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    t.add_argument("--height", type=int, default=None)
    t.add_argument("--width", type=int, default=None)
    t.add_argument("--device", default=None)
    t.add_argument("--clock", default=None, choices=("cpu", "wall"), help="time objective: CPU or wall time")
    t.add_argument("--tolerance", type=float, default=0.03, help="reward,time: fastest within this of the default")
    t.add_argument("--sampler-seed", type=int, default=0)
    t.add_argument("--heartbeat", type=int, default=10, help="seconds between trial heartbeats")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    require_optuna()
    if args.action == "report":
        if not args.storage or not args.study or not args.out:
            raise ValueError("ait2i tune report needs --storage, --study and --out (a folder)")
        for path in write_report(args.storage, args.study, args.out):
            print(f"wrote {path}")
        return 0
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    over = {"num_inference_steps": args.steps, "scheduler": args.scheduler, "guidance_scale": args.guidance_scale,
            "dtype": args.dtype, "height": args.height, "width": args.width}  # fmt: skip
    kwargs = dict(
        suite=args.suite, model=args.model, trials=args.trials, seeds=args.seeds, holdout_seeds=args.holdout_seeds,
        storage=args.storage, study=args.study, workdir=args.workdir, out=args.out,
        objectives=[o.strip() for o in args.objectives.split(",") if o.strip()], reward=args.reward,
        space=args.space, fix=args.fix, only=args.only.split(",") if args.only else None, chunks=args.chunks,
        limit=args.limit, protocol=args.protocol, protocol_overrides={k: v for k, v in over.items() if v is not None},
        device=args.device, clock=args.clock, tolerance=args.tolerance, sampler_seed=args.sampler_seed,
        heartbeat=args.heartbeat, join=args.join, progress=not args.quiet,
    )  # fmt: skip
    procs = [] if args.workers == 1 else _start_workers(args)
    try:
        tune(args.method, **kwargs)
    finally:
        _wait(procs)
    return 0


def _start_workers(args) -> list:
    """Workers 1..K-1 (this process is worker 0): the same study, ``--join``, no progress bar, their CPU share."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    procs = []
    for i in range(1, args.workers):
        argv = [sys.executable, "-m", "ait2i.cli", "tune"]
        for dest, flag in _FORWARD.items():
            v = getattr(args, dest, None)
            if v is not None:
                argv += [flag, str(v + i if dest == "sampler_seed" else v)]
        for dest, flag in (("space", "--space"), ("fix", "--fix")):
            for v in getattr(args, dest):
                argv += [flag, v]
        if args.only:
            argv += ["--only", args.only]
        argv += ["--join", "--quiet", "--threads", str(threads)]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    if not args.threads:
        import torch

        torch.set_num_threads(threads)
    return procs


def _wait(procs) -> None:
    failed = []
    for i, p in enumerate(procs, start=1):
        _, err = p.communicate()
        if p.returncode != 0:
            failed.append(f"worker {i} exited with {p.returncode}: {err.decode(errors='replace').strip()[-800:]}")
    if failed:
        raise RuntimeError("; ".join(failed) + " (the study keeps every finished trial; rerun to resume)")


# -- report --------------------------------------------------------------------------------------------------------
def trial_rows(study) -> list[dict]:
    """One row per finished or running trial: number, state, reward, time per image, parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("over_cap"):
            continue
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "reward": t.user_attrs.get("reward"),
                "seconds_per_image": t.user_attrs.get("seconds_per_image"),
                "images": t.user_attrs.get("n_images"),
                "default": bool(t.user_attrs.get("default")),
                "retry_of": t.user_attrs.get("retry_of", t.system_attrs.get("failed_trial")),
                **{f"param:{k}": v for k, v in t.params.items()},
            }
        )
    return rows


def pareto(points: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """The non-dominated ``(reward, seconds, trial)``: no other point has a higher reward and a lower time."""
    front = []
    for r, s, n in sorted(points, key=lambda p: (p[1], -p[0])):
        if not front or r > front[-1][0]:
            front.append((r, s, n))
    return front


def write_report(storage: str, study_name: str, out: str | os.PathLike) -> list[Path]:
    """``trials.csv``, ``trials.md``, ``pareto.png`` (reward vs time per image) and ``importances.md``."""
    import matplotlib  # heavy: only when a report is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna  # optional (the tune extra): only when a report is written

    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise ValueError(f"no study {study_name!r} in {redact(storage)}") from None
    rows = trial_rows(study)
    if not rows:
        raise ValueError(f"study {study_name!r} has no trials yet")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    written = [out / "trials.csv", out / "trials.md", out / "pareto.png", out / "importances.md"]
    write_atomic(written[0], buf.getvalue())
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    md = ["| " + " | ".join(k.removeprefix("param:") for k in keys) + " |", "|---" * len(keys) + "|"]
    md += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    write_atomic(written[1], f"Study {study_name} ({redact(storage)}), {len(rows)} trials\n\n" + "\n".join(md) + "\n")

    pts = [(r["reward"], r["seconds_per_image"], r["trial"]) for r in rows
           if r["state"] == "complete" and r["reward"] is not None and r["seconds_per_image"] is not None]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if pts:
        ax.scatter([p[1] for p in pts], [p[0] for p in pts], c="0.6", s=18, label="complete trials")
        front = pareto(pts)
        ax.plot([p[1] for p in front], [p[0] for p in front], "o-", c="tab:red", label="Pareto front")
        for r, s, n in front:
            ax.annotate(str(n), (s, r), textcoords="offset points", xytext=(4, 4), fontsize=7)
        default = [r for r in rows if r["default"] and r["state"] == "complete"]
        if default:
            ax.scatter([default[0]["seconds_per_image"]], [default[0]["reward"]], marker="*", s=140, c="tab:blue",
                       label="default", zorder=3)  # fmt: skip
    ax.set_xlabel("seconds per image")
    ax.set_ylabel("reward")
    ax.set_title(f"{study_name}: reward vs time")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(written[2], dpi=120)
    plt.close(fig)
    write_atomic(written[3], _importances(study))
    return written


def _importances(study) -> str:
    """Optuna's parameter importances for a high reward (its default evaluator), as markdown."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    head = f"Parameter importances for a high reward (Optuna's default evaluator, {len(done)} complete trials)\n\n"
    try:  # the evaluator ranks what makes the target low: the target is minus the reward
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PED-ANOVA's notes on the target
            imp = optuna.importance.get_param_importances(
                study, target=lambda t: -t.user_attrs.get("reward", t.values[0] if t.values else float("nan"))
            )
    except (ValueError, RuntimeError) as e:
        return head + f"not available: {e}\n"
    lines = ["| parameter | importance |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in imp.items()]
    return head + "\n".join(lines) + "\n\n" + json.dumps(imp) + "\n"
