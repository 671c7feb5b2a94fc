"""Checks every transformer host passes (SD3, PixArt): shared by their test modules."""

import dataclasses
import math

import torch

import ait2i
from ait2i.testing import unmoved

PROMPT, SUBJECTS = "a red car and a blue bench", ["red car", "blue bench"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def none_with_maps_equals_stock(pipe, kw: dict, no_leftovers) -> None:
    """``method="none"`` with maps recorded gives the stock latents bit for bit; maps on the 16x16 token grid."""
    stock = pipe(PROMPT, generator=gen(), **kw).images
    before = dict(pipe.transformer.attn_processors)
    rec = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0, 3), generator=gen(), **kw)
    assert torch.equal(rec.images, stock)
    assert sorted(rec.diagnostics.maps) == [0, 3]
    assert rec.diagnostics.maps[0].shape == (1, 2, 16, 16)  # (B, G, h, w) on the 16x16 token grid
    no_leftovers(pipe, before)


def method_moves_the_latents(pipe, method: str, kw: dict, no_leftovers) -> None:
    """A guided method records finite losses at every step and moves the latents; step size 0 is stock."""
    before = dict(pipe.transformer.attn_processors)
    base = ait2i.get_method(method)
    refine = {0: 0.99} if base.refinement else {}
    cfg = dataclasses.replace(base, max_guided_steps=1.0, refinement=refine, max_refinement_steps=2)
    zero = unmoved(dataclasses.replace(base, max_guided_steps=1.0, refinement={}))
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, cfg, generator=gen(), **kw)
    still = ait2i.generate(pipe, PROMPT, SUBJECTS, zero, generator=gen(), **kw)
    steps = out.diagnostics.steps
    assert [r.step for r in steps] == [0, 1, 2, 3]
    assert all(r.guided for r in steps) and all(math.isfinite(v) for r in steps for v in r.loss)
    assert not torch.equal(out.images, still.images)
    assert torch.equal(still.images, pipe(PROMPT, generator=gen(), **kw).images)  # step size 0 = stock
    no_leftovers(pipe, before)


def two_images_with_refinement_rows(pipe, kw: dict) -> None:
    """Two images per prompt, A&E refinement on both rows: per-image losses and iterations, finite images."""
    cfg = dataclasses.replace(ait2i.get_method("attend-and-excite"), refinement={0: 0.99}, max_refinement_steps=2)
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, cfg, num_images_per_prompt=2, generator=[gen(0), gen(1)], **kw)
    first = out.diagnostics.steps[0]
    assert len(first.loss) == 2 and first.refinement_iterations == [2, 2]
    assert out.images.shape[0] == 2 and torch.isfinite(out.images).all()
