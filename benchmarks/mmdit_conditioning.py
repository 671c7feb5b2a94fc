"""What carries the prompt into the image of a ShapesWorld MM-DiT: the word tokens, the end/padding tokens, or the
pooled vector? And where does its image-query attention go?

Two measurements on ShapesWorld prompts (``single`` and ``two``), no guidance:

1. **Conditioning ablations.** The prompt is encoded once (``encode_prompt``); then parts of the conditioning are
   replaced by the empty prompt's at the same positions, and the checker reads the images:
   ``full``; ``no pooled`` (the pooled CLIP vector of ""); ``no end/padding`` (CLIP positions from the end token on);
   ``no words`` (the word positions between the start and end tokens); ``words only`` (no end/padding and no pooled).
   If the images keep their objects and colours without the words, the model does not need its word tokens, and maps
   read at the word tokens cannot point at the objects.
2. **Attention budget.** At every joint block, averaged over heads, image queries and the recorded steps, the share
   of the joint softmax on: image keys, the start token, the subject words (colour + shape), the other words, the end
   token, the CLIP padding, the (all-zero) T5 tokens.

Usage::

    python benchmarks/mmdit_conditioning.py                                  # the shipped MM-DiT
    python benchmarks/mmdit_conditioning.py --model train-runs/shapes-mmdit-v2/pipeline --seeds 0-7
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd3_read_choice import emit  # noqa: E402


class BudgetProcessor:
    """Wraps a block's joint-attention processor; while ``self.groups`` is set (``{name: LongTensor of text key
    positions}``), sums the image queries' probabilities within the joint softmax per group of text keys
    (:func:`ait2i.capture.joint.joint_text_probabilities`, the SD3 host's own arithmetic); the image keys get the
    rest (``"image"``)."""

    def __init__(self, inner):
        self.inner = inner
        self.groups = None
        self.sums = defaultdict(float)
        self.count = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if self.groups is not None and encoder_hidden_states is not None:
            from ait2i.capture.joint import joint_text_probabilities

            with torch.no_grad():
                n_text = encoder_hidden_states.shape[1]
                p = joint_text_probabilities(attn, hidden_states, encoder_hidden_states, n_text, "joint")
                p = p.mean(dim=(0, 1))  # (N_text,): mean over batch x heads and image queries
                self.sums["image"] += float(1.0 - p.sum())
                for name, idx in self.groups.items():
                    self.sums[name] += float(p[idx].sum())
                self.count += 1
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="SD3-family ShapesWorld folder (default: the shipped MM-DiT)")
    p.add_argument("--seeds", default="0-3")
    p.add_argument("--per-category", type=int, default=6)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the markdown tables here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ait2i.bench.suites.shapes import shapes_items
    from ait2i.parsing import parse_seeds
    from ait2i.shapes import check as C
    from ait2i.shapes.model import load_sd3_pipeline

    seeds = parse_seeds(args.seeds)
    pipe = load_sd3_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    tok = pipe.tokenizer
    enc = dict(prompt_2=None, prompt_3=None, do_classifier_free_guidance=False, device="cpu")
    empty, _, empty_pooled, _ = pipe.encode_prompt("", **enc)
    blocks = pipe.transformer.transformer_blocks
    procs = [BudgetProcessor(b.attn.processor) for b in blocks]
    for b, pr in zip(blocks, procs):
        b.attn.processor = pr

    variants = ("full", "no pooled", "no end/padding", "no words", "words only")
    res = {(cat, v): defaultdict(list) for cat in ("single", "two") for v in variants}
    t0 = time.time()
    for it in shapes_items(["single", "two"], args.per_category):
        ids = tok(it.prompt, padding="max_length", max_length=77, truncation=True).input_ids
        eot = ids.index(tok.eos_token_id)
        embeds, _, pooled, _ = pipe.encode_prompt(it.prompt, **enc)  # (1, 77 + 256, C), (1, P)
        words = set()
        for phrase in it.subjects:
            for w in phrase.split():
                words |= {i for i in range(1, eot) if tok.decode([ids[i]]).strip() == w}
        groups = {
            "start": torch.tensor([0]),
            "subject words": torch.tensor(sorted(words)),
            "other words": torch.tensor([i for i in range(1, eot) if i not in words] or [], dtype=torch.long),
            "end": torch.tensor([eot]),
            "CLIP padding": torch.arange(eot + 1, 77),
            "T5 (zeros)": torch.arange(77, embeds.shape[1]),
        }
        for v in variants:
            e, pl = embeds.clone(), pooled.clone()
            if v in ("no pooled", "words only"):
                pl = empty_pooled.clone()
            if v in ("no end/padding", "words only"):
                e[:, eot:77] = empty[:, eot:77]
            if v == "no words":
                e[:, 1:eot] = empty[:, 1:eot]
            for seed in seeds:
                for pr in procs:
                    pr.groups = groups if v == "full" else None
                out = pipe(
                    prompt_embeds=e, pooled_prompt_embeds=pl, negative_prompt_embeds=empty,
                    negative_pooled_prompt_embeds=empty_pooled, num_inference_steps=args.steps,
                    guidance_scale=args.guidance_scale, generator=torch.Generator().manual_seed(seed), output_type="np",
                )  # fmt: skip
                image = (out.images[0] * 255).round().astype(np.uint8)
                m = C.match(C.check(image), it.data["objects"])
                r = res[(it.category, v)]
                r["all present"].append(float(m["all_present"]))
                r["exact binding"].append(float(m["exact_binding"]))
                r["clean binding"].append(float(m["clean_binding"]))
        print(f"{it.prompt}: done [{time.time() - t0:.0f} s]", flush=True)
    for pr in procs:
        pr.groups = None

    command = "python benchmarks/mmdit_conditioning.py " + " ".join(sys.argv[1:] if argv is None else argv)
    model = args.model or "shapesworld-mmdit (shipped)"
    lines = [
        f"`{command}`", "",
        f"model {model}, {args.per_category} prompts per category x seeds {seeds}, {args.steps} steps, "
        f"CFG {args.guidance_scale}", "",
        "| category | conditioning | all present | exact binding | clean binding |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for (cat, v), r in res.items():
        lines.append(f"| {cat} | {v} | " + " | ".join(f"{np.mean(r[k]):.2f}" for k in r) + " |")
    names = list(procs[0].sums)
    lines += ["", "Attention budget of the image queries (share of the joint softmax, mean over heads, pixels, "
              "steps and prompts; 'full' conditioning):", "",
              "| block | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
    for i, pr in enumerate(procs):
        lines.append(f"| {i} | " + " | ".join(f"{pr.sums[n] / max(pr.count, 1):.3f}" for n in names) + " |")
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
