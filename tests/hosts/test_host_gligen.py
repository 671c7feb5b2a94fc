"""GLIGEN as a host (through the scheduler-step hook), on a tiny random gated UNet."""

import math

import pytest
import torch

import ait2i
from ait2i import AIT2IConfig
from ait2i.testing import tiny_sd_pipeline, unmoved

pytestmark = pytest.mark.slow

PROMPT, SUBJECTS = "a red car and a blue bench", ["red car", "blue bench"]
GROUNDING = dict(gligen_phrases=["a red car", "a blue bench"], gligen_boxes=[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1, 1]])


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline(kind="gligen")


def test_none_with_maps_equals_stock_and_guided_runs(pipe):
    kw = dict(num_inference_steps=4, output_type="latent", **GROUNDING)
    stock = pipe(PROMPT, generator=_gen(), **kw).images
    before = dict(pipe.unet.attn_processors)
    rec = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0, 2), generator=_gen(), **kw)
    assert torch.equal(rec.images, stock) and sorted(rec.diagnostics.maps) == [0, 2]
    for method in ("ait2i", "ait2i-paper", "attend-and-excite"):
        cfg = ait2i.get_method(method).replace(max_guided_steps=1.0)
        out = ait2i.generate(pipe, PROMPT, SUBJECTS, cfg, generator=_gen(), **kw)
        assert all(math.isfinite(v) for r in out.diagnostics.steps for v in r.loss)
        assert not torch.equal(out.images, stock)
        flat = ait2i.generate(pipe, PROMPT, SUBJECTS, unmoved(cfg), generator=_gen(), **kw)
        assert torch.equal(flat.images, stock)
    assert dict(pipe.unet.attn_processors) == before
    assert "step" not in vars(pipe.scheduler) and not {"encode_prompt", "enable_fuser"} & set(vars(pipe))


def test_guided_pass_gets_the_grounding_and_the_fuser_state_of_its_step(pipe):
    seen = []  # (timestep, batch, fuser enabled, gligen boxes)
    forward = pipe.unet.forward

    def spy(sample, timestep, *a, cross_attention_kwargs=None, **k):
        fuser = next(m for m in pipe.unet.modules() if type(m).__name__ == "GatedSelfAttentionDense")
        boxes = (cross_attention_kwargs or {}).get("gligen", {}).get("boxes")
        seen.append((int(timestep), sample.shape[0], fuser.enabled, boxes))
        return forward(sample, timestep, *a, cross_attention_kwargs=cross_attention_kwargs, **k)

    pipe.unet.forward = spy
    try:
        ait2i.generate(
            pipe, PROMPT, SUBJECTS, AIT2IConfig(max_guided_steps=1.0), num_inference_steps=5, output_type="latent",
            gligen_scheduled_sampling_beta=0.4, **GROUNDING,
        )  # fmt: skip
    finally:
        del pipe.unet.forward
    guided = {t: (on, boxes) for t, b, on, boxes in seen if b == 1}
    loop = {t: (on, boxes) for t, b, on, boxes in seen if b == 2}
    assert set(guided) == set(loop) and len(loop) == 5
    for t in loop:
        assert guided[t][0] == loop[t][0]  # grounding on for the first 2 of 5 steps, off after, in both passes
        assert torch.equal(guided[t][1], loop[t][1][1:])  # the conditional half of the grounding inputs
    assert [loop[t][0] for t in sorted(loop, reverse=True)] == [True, True, False, False, False]


def test_gligen_inpainting_is_refused(pipe):
    from PIL import Image

    with pytest.raises(ValueError, match="gligen_inpaint_image"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, gligen_inpaint_image=Image.new("RGB", (64, 64)), **GROUNDING)
