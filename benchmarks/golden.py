"""Golden outputs: the exact bytes of a fixed set of generations, to show that a refactoring changed nothing.

Every built-in method on the shipped ShapesWorld UNet and MM-DiT, fixed prompts and seeds, a few steps, one thread;
for each generation the SHA-256 of the output image array (float32 bytes), of the recorded subject maps and of the
per-step losses and notes. Record before a change, check after it, on the same machine (floating-point results
differ between CPUs, so the hashes are not committed)::

    python benchmarks/golden.py record runs/golden-before.json
    python benchmarks/golden.py check runs/golden-before.json      # exit 1 and the differing cases if any
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import torch

PROMPT = "a red circle and a blue square"
SUBJECTS = ["red circle", "blue square"]
BOXES = ["red circle@0.55,0.55,0.95,0.95", "blue square@0.05,0.05,0.45,0.45"]
CASES = {
    "shapesworld": ["none", "ait2i", "ait2i-paper", "attend-and-excite", "ait2i-layout", "layout-guidance", "boxdiff"],
    "shapesworld-mmdit": ["none", "ait2i", "ait2i-paper", "attend-and-excite"],
}
SEEDS = (0, 1)
STEPS = 6


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprints() -> dict[str, dict[str, str]]:
    """``{"model/method/seed": {"image": sha, "maps": sha, "losses": sha}}`` for every case."""
    import ait2i
    from ait2i.models import load_model

    torch.set_num_threads(1)
    out = {}
    for model, methods in CASES.items():
        pipe = load_model(model, scheduler="default")
        pipe.set_progress_bar_config(disable=True)
        for method in methods:
            cfg = ait2i.get_method(method)
            subjects = BOXES if cfg.uses_boxes else SUBJECTS
            for seed in SEEDS:
                res = ait2i.generate(
                    pipe, PROMPT, subjects, method, generator=torch.Generator().manual_seed(seed),
                    num_inference_steps=STEPS, output_type="np", record_maps=(1, 3),
                )  # fmt: skip
                image = np.ascontiguousarray(np.asarray(res.images, dtype=np.float32))
                maps = b"".join(res.diagnostics.maps[s].float().numpy().tobytes() for s in sorted(res.diagnostics.maps))
                steps = [(r.step, [float(v) for v in r.loss]) for r in res.diagnostics.steps]
                losses = json.dumps({"steps": steps, "notes": list(res.diagnostics.notes)}, sort_keys=True)
                out[f"{model}/{method}/{seed}"] = {
                    "image": _sha(image.tobytes()), "maps": _sha(maps), "losses": _sha(losses.encode()),
                }  # fmt: skip
                print(f"{model}/{method}/{seed}: {out[f'{model}/{method}/{seed}']['image'][:12]}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("record", "check"))
    p.add_argument("file")
    args = p.parse_args(argv)
    now = fingerprints()
    if args.action == "record":
        with open(args.file, "w") as f:
            json.dump(now, f, indent=1, sort_keys=True)
        print(f"recorded {len(now)} generations to {args.file}")
        return 0
    with open(args.file) as f:
        before = json.load(f)
    diff = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    for k in diff:
        print(f"DIFFERS {k}: before {before.get(k)} now {now.get(k)}")
    print(f"{len(now) - len(diff)} of {len(set(before) | set(now))} generations byte-identical")
    return 1 if diff else 0


if __name__ == "__main__":
    raise SystemExit(main())
