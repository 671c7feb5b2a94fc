"""Pictures for the transfer question: the same prompt and seed on several ShapesWorld models, unguided and guided.

One PNG, one row per (model, method): the final image with the checker's verdict, then each subject's attention map
at the recorded steps drawn over the final image (each map normalised by its own maximum; the title gives the
maximum and the map's lift, its share on the subject's colour pixels over their area share, 1 = uniform). Under the
picture, per guided row, the loss at the first guided step and at the last one. It shows whether a model's maps
point at the objects at all (the UNet's do; the shipped MM-DiT's do not) and what the update does to them. Usage::

    python benchmarks/transfer_pictures.py --prompt "a red circle and a blue square" --seed 1 --out pictures.png
    python benchmarks/transfer_pictures.py --model shapesworld --model train-runs/x/pipeline --methods none,ait2i
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from map_quality import map_scores  # noqa: E402


def objects_of(prompt: str) -> list[tuple[str, str]]:
    """The ``(colour, shape)`` pairs a ShapesWorld prompt asks for, in order (a prompt of another form is refused)."""
    from ait2i.shapes.render import COLORS, SHAPES

    pattern = rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b"
    found = re.findall(pattern, prompt)
    if not found:
        raise SystemExit(f"--prompt {prompt!r}: names no ShapesWorld object (colours {list(COLORS)}, "
                         f"shapes {list(SHAPES)})")  # fmt: skip
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="shipped name or folder; repeat (default: both shipped models)")
    p.add_argument("--prompt", default="a red circle and a blue square")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--methods", default="none,ait2i", help="comma-separated method names or preset files")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--map-steps", default="0,2,5,10")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/transfer-pictures.png")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import ait2i
    from ait2i.io import atomic_path
    from ait2i.models import load_model
    from ait2i.shapes.check import check, match
    from ait2i.viz import _upsample, new_figure

    objects = objects_of(args.prompt)
    subjects = [f"{c} {s}" for c, s in objects]
    map_steps = tuple(int(s) for s in args.map_steps.split(","))
    out = Path(args.out)
    if not out.parent.is_dir():
        raise SystemExit(f"--out {out}: folder {out.parent} does not exist")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows, t0 = [], time.time()
    for model in args.model or ["shapesworld", "shapesworld-mmdit"]:
        pipe = load_model(model, scheduler="default")
        pipe.set_progress_bar_config(disable=True)
        for method in methods:
            g = torch.Generator().manual_seed(args.seed)
            res = ait2i.generate(pipe, args.prompt, subjects, method, record_maps=map_steps, generator=g,
                                 num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                                 output_type="np")  # fmt: skip
            image = (np.asarray(res.images[0]) * 255).round().astype(np.uint8)
            verdict = match(check(image), objects)
            steps = [s for s in res.diagnostics.steps if s.guided and s.loss]
            rows.append((model, method, image, res.diagnostics.maps, verdict, steps))
            print(f"{model} | {method}: clean {verdict['clean_binding']}, extra {verdict['extra']}"
                  f"  [{time.time() - t0:.0f} s]", flush=True)  # fmt: skip

    cols = 1 + len(map_steps) * len(subjects)
    fig = new_figure(figsize=(1.6 * cols, 1.8 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (model, method, image, maps, verdict, steps) in enumerate(rows):
        ax = axes[r][0]
        ax.imshow(image, interpolation="nearest")
        tag = "clean" if verdict["clean_binding"] else ("exact" if verdict["exact_binding"] else "wrong")
        loss = ""
        if steps:
            loss = f"\nloss {steps[0].loss[0]:.2f} (step {steps[0].step}) -> {steps[-1].loss[0]:.2f}"
        ax.set_title(f"{Path(model).name[:18]}\n{method}: {tag}, +{verdict['extra']}{loss}", fontsize=6)
        c = 1
        for s in map_steps:
            lifts, _ = map_scores(maps[s][0], image, [col for col, _ in objects])
            for gi, name in enumerate(subjects):
                ax = axes[r][c]
                m = maps[s][0][gi]
                ax.imshow(image, interpolation="nearest")
                ax.imshow(_upsample(m, image.shape[:2]), cmap="jet", alpha=0.55)
                lift = "-" if not np.isfinite(lifts[gi]) else f"{lifts[gi]:.1f}"
                ax.set_title(f"step {s}: {name}\nmax {float(m.max()):.3f}, lift {lift}", fontsize=6)
                c += 1
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{args.prompt!r}, seed {args.seed}, {args.steps} steps, CFG {args.guidance_scale}", fontsize=8)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
