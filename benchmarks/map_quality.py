"""Do a model's subject maps point at their own objects? Measured without guidance, per read choice.

Guidance can only steer with maps that tell the subjects apart. On two-object ShapesWorld prompts, with no guidance
(method ``none``, maps recorded at ``--map-steps``), for every subject whose colour is in the final image:

- **lift**: the share of the subject's map on its colour's pixels, over the area share of those pixels
  (1 = no better than a uniform map);
- **own favoured**: for images where both colours are present, the share of subject maps whose density (mass per
  pixel) is higher on their own object's pixels than on the other object's.

The bar used before tuning anything on a model (issue 15): lift >= 2 and own favoured >= 85%. The UNet is the
reference. For an SD3-family model every read choice of its host is measured (each joint block alone, blocks 0-1,
all blocks; normalisation within the joint softmax, over the text keys, over the CLIP keys); for a UNet the
``from_where`` choices at the method's ``attn_res``. Usage::

    python benchmarks/map_quality.py --model shapesworld --model shapesworld-mmdit --seeds 0-3 --per-category 4
    python benchmarks/map_quality.py --model train-runs/shapes-mmdit-v2/pipeline --out table.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd3_read_choice import colour_mask, emit  # noqa: E402


def map_scores(maps: torch.Tensor, image: np.ndarray, colours: list[str]) -> tuple[list[float], list[bool]]:
    """Lift per subject (NaN where its colour is absent) and, when every colour is present, own-favoured flags.

    Args:
        maps (`torch.Tensor` of shape `(G, h, w)`): one map per subject (any non-negative scale).
        image (`np.ndarray` of shape `(H, W, 3)`, uint8): the final image.
        colours (`list[str]`): each subject's colour name (``ait2i.shapes.render.COLORS``).
    """
    from ait2i.shapes.render import COLORS

    h, w = image.shape[:2]
    up = torch.nn.functional.interpolate(maps[None].float(), size=(h, w), mode="nearest")[0].clamp_min(0).numpy()
    masks = [colour_mask(image, COLORS[c]) for c in colours]
    lifts, favoured = [], []
    for g, mask in enumerate(masks):
        m = up[g]
        total = max(float(m.sum()), 1e-12)
        lifts.append(float((m * mask).sum() / total / mask.mean()) if mask.any() else float("nan"))
    if all(mask.any() for mask in masks):
        for g, mask in enumerate(masks):
            own = (up[g] * mask).sum() / mask.sum()
            others = [(up[g] * o).sum() / o.sum() for k, o in enumerate(masks) if k != g]
            favoured.append(bool(own > max(others)))
    return lifts, favoured


def read_choices(pipe):
    """``(label, context manager factory, method config)`` per read choice of this pipeline's host."""
    from contextlib import contextmanager

    import ait2i

    base = ait2i.get_method("none")
    if hasattr(pipe, "transformer") and type(pipe).__name__.startswith("StableDiffusion3"):
        from ait2i.capture.joint import MAP_NORMALISATIONS
        from ait2i.hosts.sd3 import StableDiffusion3Host

        n = len(pipe.transformer.transformer_blocks)

        @contextmanager
        def patched(blocks, norm):
            saved = StableDiffusion3Host.__dict__["read_blocks"], StableDiffusion3Host.normalise
            StableDiffusion3Host.read_blocks = staticmethod(lambda num, b=tuple(blocks): list(b))
            StableDiffusion3Host.normalise = norm
            try:
                yield
            finally:
                StableDiffusion3Host.read_blocks, StableDiffusion3Host.normalise = saved

        for blocks in [[i] for i in range(n)] + [[0, 1], list(range(n))]:
            for norm in MAP_NORMALISATIONS:
                label = f"blocks {','.join(map(str, blocks))}, {norm}"
                yield label, (lambda b=blocks, nm=norm: patched(b, nm)), base
        return
    from contextlib import nullcontext

    default = ait2i.get_method("ait2i")
    for places in (("down",), ("up",), ("down", "up"), ("down", "mid", "up")):
        cfg = base.replace(from_where=places, attn_res=default.attn_res)
        res = "the host's read resolution" if default.attn_res is None else default.attn_res
        yield f"{'+'.join(places)} @ {res}", nullcontext, cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="shipped name or folder; repeat for several (default: both)")
    p.add_argument("--seeds", default="0-3")
    p.add_argument("--per-category", type=int, default=4, help="'two' prompts")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--map-steps", default="2,5,10")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--choice",
        action="append",
        help="measure only the read choices whose label is this (e.g. 'blocks 0,1, text'); repeat for several",
    )
    p.add_argument("--out", default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import ait2i
    from ait2i.bench.suites.shapes import shapes_items
    from ait2i.models import load_model
    from ait2i.parsing import parse_seeds

    models = args.model or ["shapesworld", "shapesworld-mmdit"]
    seeds = parse_seeds(args.seeds)
    map_steps = tuple(int(s) for s in args.map_steps.split(","))
    items = shapes_items(["two"], args.per_category)
    kw = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale, output_type="np")
    rows, t0 = [], time.time()
    for model in models:
        pipe = load_model(model, scheduler="default")
        pipe.set_progress_bar_config(disable=True)
        choices = list(read_choices(pipe))
        if args.choice:
            unknown = sorted(set(args.choice) - {label for label, _, _ in choices})
            if unknown:
                raise SystemExit(f"--choice {unknown}: not a read choice of {model}; it has {[c[0] for c in choices]}")
            choices = [c for c in choices if c[0] in args.choice]
        for label, ctx, cfg in choices:
            lifts = {s: [] for s in map_steps}
            fav = {s: [] for s in map_steps}
            with ctx():
                for it in items:
                    colours = [c for c, _ in it.data["objects"]]
                    for seed in seeds:
                        g = torch.Generator().manual_seed(seed)
                        out = ait2i.generate(pipe, it.prompt, list(it.subjects), cfg, record_maps=map_steps,
                                             generator=g, **kw)  # fmt: skip
                        image = (np.asarray(out.images[0]) * 255).round().astype(np.uint8)
                        for s in map_steps:
                            lf, fv = map_scores(out.diagnostics.maps[s][0], image, colours)
                            lifts[s] += [v for v in lf if np.isfinite(v)]
                            fav[s] += fv
            cells = [(float(np.mean(lifts[s])) if lifts[s] else float("nan"),
                      float(np.mean(fav[s])) if fav[s] else float("nan"), len(fav[s])) for s in map_steps]  # fmt: skip
            rows.append((model, label, cells))
            print(f"{model} | {label}: " + "; ".join(
                f"step {s}: lift {c[0]:.2f}, own {c[1]:.0%} (n={c[2]})" for s, c in zip(map_steps, cells)
            ) + f"  [{time.time() - t0:.0f} s]", flush=True)  # fmt: skip

    command = "python benchmarks/map_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    head = " | ".join(f"step {s}: lift / own" for s in map_steps)
    lines = [
        f"`{command}`", "",
        f"{len(items)} 'two' prompts x seeds {seeds}, {args.steps} steps, guidance scale {args.guidance_scale}, no "
        "guidance. lift: map share on the subject's colour over its area share; own: share of maps denser on their "
        "own object than on the other (images with both colours present; n maps).", "",
        f"| model | read choice | {head} |", "|---|---|" + "---|" * len(map_steps),
    ]  # fmt: skip
    for model, label, cells in rows:
        lines.append(
            f"| {model} | {label} | " + " | ".join(f"{c[0]:.2f} / {c[1]:.0%} (n={c[2]})" for c in cells) + " |"
        )
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
