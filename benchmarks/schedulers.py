"""Guidance strength per scheduler on the shipped ShapesWorld model (docs/method.md, "Hosts and methods").

For each supported scheduler: the loss summed over the guided steps and seeds with the default method, against
the same run with step size 0 (the unguided trajectory's losses); the reduction ``1 - guided / unguided`` is the
strength of guidance. One config should have one strength under every scheduler.

    python benchmarks/schedulers.py --seeds 0-7 --steps 12
"""

from __future__ import annotations

import argparse
import time

import torch

import ait2i
from ait2i.hosts.schedulers import SCHEDULER_NAMES, scheduler_from_name
from ait2i.parsing import parse_seeds
from ait2i.shapes.model import load_pipeline


def guided_loss(pipe, scheduler, cfg, prompt, subjects, seeds, steps) -> float:
    pipe.scheduler = scheduler
    out = ait2i.generate(
        pipe,
        prompt,
        subjects,
        cfg,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        num_images_per_prompt=len(seeds),
        num_inference_steps=steps,
        output_type="latent",
    )
    return sum(v for r in out.diagnostics.steps if r.guided for v in r.loss)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0-7")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--method", default="ait2i")
    p.add_argument("--prompt", default="a red circle, a blue square and a green triangle")
    p.add_argument("--subjects", nargs="+", default=["red circle", "blue square", "green triangle"])
    p.add_argument("--schedulers", nargs="+", default=list(SCHEDULER_NAMES), choices=list(SCHEDULER_NAMES))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    config = pipe.scheduler.config
    cfg = ait2i.get_method(args.method)
    seeds = parse_seeds(args.seeds)
    print("| scheduler | loss reduction (guided vs step size 0) | seconds |\n|---|---|---|")
    for name in args.schedulers:
        t = time.time()
        g = guided_loss(pipe, scheduler_from_name(name, config), cfg, args.prompt, args.subjects, seeds, args.steps)
        f = guided_loss(pipe, scheduler_from_name(name, config), cfg.replace(scale_factor=0.0), args.prompt,
                        args.subjects, seeds, args.steps)  # fmt: skip
        print(f"| {name} | {1 - g / f:.3f} | {time.time() - t:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
