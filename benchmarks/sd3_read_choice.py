"""Which joint-attention blocks, and which normalisation, give SD3's host its subject maps: measured on the
ShapesWorld MM-DiT.

For every read choice (blocks x normalisation of ``ait2i.hosts.sd3``), on two- and three-object ShapesWorld prompts:

- **reduction**: how much guidance can act through those maps: the relative drop of the summed AI-T2I loss over
  steps 1-4 when guiding at ``--scale`` against step size 0 (same seeds; 1 - guided / unguided);
- **lift**: whether the maps point at the right object: from the unguided run, the share of a subject's map
  (recorded at steps 2 and 5) that lies on the pixels of its colour in the final image, over the area share of those
  pixels (1 = no better than a uniform map), averaged over subjects whose colour is in the image.

The read choice is set on the host class for the measurement and restored afterwards. Usage::

    python benchmarks/sd3_read_choice.py                         # the shipped ShapesWorld MM-DiT
    python benchmarks/sd3_read_choice.py --model FOLDER --seeds 0-3 --out table.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch


def colour_mask(image: np.ndarray, rgb, tol: float = 60.0) -> np.ndarray:
    """Pixels of ``image`` (H, W, 3 uint8) within ``tol`` (Euclidean, RGB) of colour ``rgb``."""
    return np.linalg.norm(image.astype(np.float32) - np.asarray(rgb, np.float32), axis=-1) < tol


def lift(maps: torch.Tensor, image: np.ndarray, colours: list) -> list[float]:
    """Per subject: (map mass on its colour's pixels / total mass) / (those pixels' area share); NaN if absent."""
    from ait2i.shapes.render import COLORS

    h, w = image.shape[:2]
    up = torch.nn.functional.interpolate(maps[None].float(), size=(h, w), mode="nearest")[0].numpy()
    out = []
    for g, colour in enumerate(colours):
        mask = colour_mask(image, COLORS[colour])
        if not mask.any():
            out.append(float("nan"))
            continue
        m = np.clip(up[g], 0, None)
        out.append(float((m * mask).sum() / max(m.sum(), 1e-12) / mask.mean()))
    return out


def emit(lines: list[str], out: str | None) -> None:
    """Print the markdown table (one string per line) and, with ``out``, write it there too."""
    md = "\n".join(lines) + "\n"
    print(md)
    if out:
        with open(out, "w") as f:
            f.write(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapesworld-mmdit", help="SD3-family ShapesWorld folder (default: shipped)")
    p.add_argument("--seeds", default="0-1")
    p.add_argument("--per-category", type=int, default=4, help="prompts of each of 'two' and 'three'")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance-scale", type=float, default=4.0)
    p.add_argument("--scale", type=float, default=20.0, help="ait2i scale_factor of the guided runs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import ait2i
    from ait2i.bench.suites.shapes import shapes_items
    from ait2i.capture.joint import MAP_NORMALISATIONS
    from ait2i.hosts.sd3 import StableDiffusion3Host
    from ait2i.models import load_model
    from ait2i.parsing import parse_seeds
    from ait2i.testing import unmoved

    pipe = load_model(args.model)
    pipe.set_progress_bar_config(disable=True)
    n = len(pipe.transformer.transformer_blocks)
    block_sets = [[i] for i in range(n)] + [[0, 1], list(range(n))]
    items = shapes_items(["two", "three"], args.per_category)
    seeds = parse_seeds(args.seeds)
    base = ait2i.get_method("ait2i").replace(max_guided_steps=1.0)
    kw = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale, output_type="np")
    saved = StableDiffusion3Host.__dict__["read_blocks"], StableDiffusion3Host.normalise
    rows, t0 = [], time.time()
    try:
        for blocks in block_sets:
            for norm in MAP_NORMALISATIONS:
                StableDiffusion3Host.read_blocks = staticmethod(lambda num, b=tuple(blocks): list(b))
                StableDiffusion3Host.normalise = norm
                red, lifts = [], []
                for it in items:
                    colours = [c for c, _ in it.data["objects"]]
                    for s in seeds:
                        runs = {}
                        for scale in (0.0, args.scale):
                            g = torch.Generator().manual_seed(s)
                            runs[scale] = ait2i.generate(
                                pipe, it.prompt, list(it.subjects),
                                base.replace(scale_factor=scale) if scale else unmoved(base),
                                record_maps=(2, 5) if scale == 0.0 else (), generator=g, **kw,
                            )  # fmt: skip
                        loss = {k: sum(r.diagnostics.steps[j].loss[0] for j in range(1, 5)) for k, r in runs.items()}
                        red.append(1.0 - loss[args.scale] / loss[0.0])
                        still = runs[0.0]
                        image = (np.asarray(still.images[0]) * 255).round().astype(np.uint8)
                        for step in (2, 5):
                            lifts += lift(still.diagnostics.maps[step][0], image, colours)
                lifts = [v for v in lifts if np.isfinite(v)]
                rows.append((blocks, norm, statistics.mean(red), statistics.stdev(red), statistics.mean(lifts)))
                print(f"blocks {blocks} {norm}: reduction {rows[-1][2]:+.3f} (sd {rows[-1][3]:.3f}), "
                      f"lift {rows[-1][4]:.2f}  [{time.time() - t0:.0f} s]", flush=True)  # fmt: skip
    finally:
        StableDiffusion3Host.read_blocks, StableDiffusion3Host.normalise = saved

    command = "python benchmarks/sd3_read_choice.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"`{command}`", "",
        f"model {args.model}, {len(items)} prompts (two, three) x seeds {seeds}, {args.steps} steps, guidance scale "
        f"{args.guidance_scale}, ait2i scale_factor {args.scale} vs 0; reduction: relative drop of the summed loss "
        "over steps 1-4 (mean, sd); lift: map share on the subject's colour over its area share (steps 2 and 5, "
        "unguided)",
        "", "| blocks | " + " | ".join(f"{n} (red. / lift)" for n in MAP_NORMALISATIONS) + " |",
        "|---|" + "---|" * len(MAP_NORMALISATIONS),
    ]  # fmt: skip
    for blocks in block_sets:
        cells = [f"{r[2]:+.3f} ± {r[3]:.3f} / {r[4]:.2f}" for r in rows if r[0] == blocks]
        lines.append(f"| {', '.join(map(str, blocks))} | " + " | ".join(cells) + " |")
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
