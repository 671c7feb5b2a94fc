"""SDXL hosts on tiny random components: none = stock, guided runs, the guided pass sees the added conditions.

The components follow diffusers' own SDXL tests (``get_dummy_components``): a UNet with
``addition_embed_type="text_time"`` and two transformer layers in its cross-attention block, a ``CLIPTextModel`` and
a ``CLIPTextModelWithProjection`` (their hidden states concatenated: 32 + 32 = the UNet's 64), the shipped CLIP
vocabulary for both tokenizers. 64 px images, 32x32 latents, cross-attention at 16x16.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

import ait2i
from ait2i.testing import clip_bang_tokenizer, tiny_sdxl_pipeline, unmoved

pytestmark = pytest.mark.slow

PROMPT, SUBJECTS = "a red car and a blue bench", ["red car", "blue bench"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _image(seed=1, size=64):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _kw(kind, steps=4, **more):
    kw = dict(num_inference_steps=steps, output_type="latent", **more)
    if kind == "controlnet":
        kw["image"] = _image()
    return kw


def _no_leftovers(pipe, before):
    assert dict(pipe.unet.attn_processors) == before
    wrapped = {"encode_prompt", "prepare_latents", "get_timesteps", "prepare_image", "_get_add_time_ids"}
    assert not (wrapped | {"progress_bar"}) & set(vars(pipe))


# -- none = stock, guided runs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["text2img", "controlnet"])
def test_none_with_maps_equals_stock(kind):
    pipe = tiny_sdxl_pipeline(kind)
    stock = pipe(PROMPT, generator=_gen(), **_kw(kind)).images
    before = dict(pipe.unet.attn_processors)
    rec = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0, 3), generator=_gen(), **_kw(kind))
    assert torch.equal(rec.images, stock)
    assert sorted(rec.diagnostics.maps) == [0, 3] and rec.diagnostics.maps[0].shape[-2:] == (16, 16)
    _no_leftovers(pipe, before)


@pytest.mark.parametrize(
    "kind,method",
    [("text2img", "ait2i"), ("text2img", "ait2i-paper"), ("text2img", "attend-and-excite"), ("controlnet", "ait2i")],
)
def test_guided_methods_run_and_move_the_latents(kind, method):
    pipe = tiny_sdxl_pipeline(kind)
    before = dict(pipe.unet.attn_processors)
    cfg = ait2i.get_method(method)
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, cfg, generator=_gen(), **_kw(kind))
    guided = [r for r in out.diagnostics.steps if r.guided]
    assert guided and all(math.isfinite(v) for r in guided for v in r.loss)
    still = ait2i.generate(pipe, PROMPT, SUBJECTS, unmoved(cfg), generator=_gen(), **_kw(kind))
    stock = pipe(PROMPT, generator=_gen(), **_kw(kind)).images
    assert torch.equal(still.images, stock)  # step size 0: the guided passes change nothing
    assert not torch.equal(out.images, stock)
    _no_leftovers(pipe, before)


def _spy(module, calls):
    """Record ``(timestep, batch rows, added_cond_kwargs)`` of every forward call of ``module``."""
    forward = module.forward

    def spy(sample, timestep, *a, **k):
        added = {n: v.detach().clone() for n, v in (k.get("added_cond_kwargs") or {}).items()}
        calls.append((float(timestep), sample.shape[0], added))
        return forward(sample, timestep, *a, **k)

    module.forward = spy


@pytest.mark.parametrize("kind", ["text2img", "controlnet"])
def test_guided_pass_gets_the_conditional_added_conditions(kind):
    # Conditional and unconditional time ids differ (negative_original_size): the guided pass must get the
    # conditional half of what the pipeline passes, and the conditional pooled embedding.
    pipe = tiny_sdxl_pipeline(kind)
    calls = []
    _spy(pipe.controlnet if kind == "controlnet" else pipe.unet, calls)
    sizes = dict(original_size=(96, 80), target_size=(64, 64), crops_coords_top_left=(4, 8))
    negative = dict(negative_original_size=(32, 32), negative_target_size=(48, 48))
    cfg = ait2i.get_method("ait2i-paper")
    ait2i.generate(pipe, PROMPT, SUBJECTS, cfg, generator=_gen(), **_kw(kind, steps=3), **sizes, **negative)
    ours = [c for c in calls if c[1] == 1]
    theirs = [c for c in calls if c[1] == 2]
    assert len(ours) == len(theirs) == 3
    for (t_a, _, a), (t_b, _, b) in zip(ours, theirs):
        assert t_a == t_b
        assert torch.equal(a["time_ids"], b["time_ids"][1:]) and not torch.equal(b["time_ids"][0], b["time_ids"][1])
        assert torch.equal(a["text_embeds"], b["text_embeds"][1:])
    assert ours[0][2]["time_ids"].tolist() == [[96.0, 80.0, 4.0, 8.0, 64.0, 64.0]]


def test_denoising_end_guides_the_steps_the_loop_runs():
    pipe = tiny_sdxl_pipeline()
    calls = []
    _spy(pipe.unet, calls)
    out = ait2i.generate(
        pipe, PROMPT, SUBJECTS, "ait2i-paper", num_inference_steps=8, denoising_end=0.5, output_type="latent"
    )
    run = [t for t, rows, _ in calls if rows == 2]
    steps = out.diagnostics.steps
    assert len(run) == 4 and [r.timestep for r in steps] == [int(t) for t in run] and all(r.guided for r in steps)


def test_user_callback_replacing_the_added_conditions_is_followed():
    from diffusers.callbacks import SDXLCFGCutoffCallback

    pipe = tiny_sdxl_pipeline()
    kw = _kw("text2img")
    stock = pipe(PROMPT, generator=_gen(), callback_on_step_end=SDXLCFGCutoffCallback(cutoff_step_ratio=0.5), **kw)
    cut = SDXLCFGCutoffCallback(cutoff_step_ratio=0.5)
    rec = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0, 3), generator=_gen(),
                         callback_on_step_end=cut, **kw)  # fmt: skip
    assert torch.equal(rec.images, stock.images)
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, "ait2i-paper", generator=_gen(),
                         callback_on_step_end=SDXLCFGCutoffCallback(cutoff_step_ratio=0.5), **kw)  # fmt: skip
    assert all(math.isfinite(v) for r in out.diagnostics.steps for v in r.loss)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_with_float32_loss_math(dtype):
    pipe = tiny_sdxl_pipeline().to(dtype)
    kw = _kw("text2img")
    stock = pipe(PROMPT, generator=_gen(), **kw).images
    rec = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), generator=_gen(), **kw)
    assert torch.equal(rec.images, stock) and rec.diagnostics.maps[0].dtype == torch.float32
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, "ait2i-paper", generator=_gen(), **kw)
    assert out.images.dtype == dtype
    assert all(math.isfinite(v) for r in out.diagnostics.steps for v in r.loss)
    assert not torch.equal(out.images, stock)


# -- the text side ------------------------------------------------------------------------------------------------
def _host(pipe, prompt=PROMPT, **kw):
    return ait2i.host_for(pipe)(pipe, prompt, kw)


def test_prompt_2_other_than_the_prompt_is_refused():
    pipe = tiny_sdxl_pipeline()
    with pytest.raises(ValueError, match=r"`prompt_2` \('a cat'\) differs from the prompt"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, prompt_2="a cat")
    kw = _kw("text2img", steps=2)
    stock = pipe(PROMPT, generator=_gen(), **kw).images
    same = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), prompt_2=PROMPT, generator=_gen(), **kw)
    assert torch.equal(same.images, stock)
    _host(pipe, negative_prompt_2="blurry")  # not guided: free


def test_both_tokenizers_must_split_the_prompt_alike():
    pipe = tiny_sdxl_pipeline(tokenizer_2=clip_bang_tokenizer())  # SDXL's second tokenizer pads with "!"
    # one "!": the same piece at the same position ("!</w>" for the first tokenizer, the "!" token for the second)
    host = _host(pipe, "a red car! and a blue bench")
    assert ait2i.resolve_subjects(host.tokenizer, host.text, SUBJECTS)[1].tokens == (8,)
    with pytest.raises(ValueError, match=r"from token 4 on \(tokenizer: '!!', tokenizer_2: '!'\)"):
        _host(pipe, "a red car!! and a blue bench")
    # a textual-inversion placeholder loaded into the first encoder only
    pipe = tiny_sdxl_pipeline()
    pipe.tokenizer.add_tokens(["<cat>"])
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    with pytest.raises(ValueError, match=r"from token 2 on \(tokenizer: '<cat>', tokenizer_2: '<'\)"):
        _host(pipe, "a <cat> and a dog")


# -- attention layers and refusals --------------------------------------------------------------------------------
def test_sdxl_base_unet_reads_32x32_and_64x64_at_1024_px():
    """The SDXL base UNet (its config; weights on the meta device): cross-attention exists at 64x64 and 32x32 only."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from ait2i.capture.unet import cross_attention_resolutions, select_layers

    with init_empty_weights():
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=2048,
            transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        )  # fmt: skip
    latents = (128, 128)  # 1024 px / vae_scale_factor 8
    table = cross_attention_resolutions(unet, latents)
    assert sorted(set(table.values())) == [(32, 32), (64, 64)]
    res = (math.ceil(1024 / 32),) * 2  # attn_res=None: ceil(width / 32)
    layers = select_layers(unet, latents, res, ("down", "mid", "up"))
    count = {p: sum(n.startswith(p) for n in layers) for p in ("down_blocks.2", "mid_block", "up_blocks.0")}
    assert count == {"down_blocks.2": 20, "mid_block": 10, "up_blocks.0": 30} and len(layers) == 60
    assert len(select_layers(unet, latents, (64, 64), ("down", "up"))) == 10  # down 1 (2 x 2), up 1 (3 x 2)
    with pytest.raises(ValueError, match="produces 64x64, 32x32"):
        select_layers(unet, latents, (16, 16), ("down", "mid", "up"))


def test_refused_arguments():
    pipe = tiny_sdxl_pipeline()
    with pytest.raises(ValueError, match="prompt_embeds"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, prompt_embeds=torch.zeros(1, 77, 64))
    with pytest.raises(ValueError, match="ip_adapter_image"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, ip_adapter_image=_image())
    with pytest.raises(ValueError, match="denoising_end"):
        ait2i.generate(tiny_sdxl_pipeline("controlnet"), PROMPT, SUBJECTS, image=_image(), denoising_end=0.5)
    pipe.unet.register_to_config(time_cond_proj_dim=8)
    with pytest.raises(TypeError, match="LCM"):
        ait2i.generate(pipe, PROMPT, SUBJECTS)


@pytest.mark.parametrize("name", ["StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"])
def test_sdxl_img2img_and_inpaint_stay_refused(name):
    fake = type(name, (), {})()
    with pytest.raises(TypeError, match=f"{name} is not supported; supported pipelines: .*StableDiffusionXLPipeline"):
        ait2i.generate(fake, PROMPT, SUBJECTS)


def test_several_images_and_refinement_rows():
    # two images per prompt: the added conditions follow the rows the refinement re-runs
    pipe = tiny_sdxl_pipeline()
    cfg = dataclasses.replace(ait2i.get_method("attend-and-excite"), refinement={0: 0.99}, max_refinement_steps=2)
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, cfg, num_images_per_prompt=2, generator=[_gen(0), _gen(1)],
                         **_kw("text2img", steps=2))  # fmt: skip
    first = out.diagnostics.steps[0]
    assert len(first.loss) == 2 and first.refinement_iterations == [2, 2] and out.images.shape[0] == 2


def test_controlnet_guess_mode():
    pipe = tiny_sdxl_pipeline("controlnet")
    kw = _kw("controlnet", guess_mode=True)
    stock = pipe(PROMPT, generator=_gen(), **kw).images
    rec = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), generator=_gen(), **kw)
    assert torch.equal(rec.images, stock)
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, "ait2i-paper", generator=_gen(), **kw)
    assert all(math.isfinite(v) for r in out.diagnostics.steps for v in r.loss)
