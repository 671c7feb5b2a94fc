"""The scheduler-step injector (:data:`ait2i.hosts.injectors.SCHEDULER_STEP`) on a toy pipeline with a plain
``scheduler.step`` loop (no ``callback_on_step_end``), built from the tiny Stable Diffusion components.

The toy loop is Stable Diffusion's without classifier-free guidance, so the step-hook path must give exactly what
the callback path (:data:`~ait2i.hosts.injectors.CALLBACK` on ``StableDiffusionPipeline`` at ``guidance_scale=1``)
gives, guided or not.
"""

import inspect
import math

import pytest
import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

import ait2i
from ait2i.hosts import SCHEDULER_STEP, UNetHost, register_host
from ait2i.testing import tiny_sd_components, tiny_sd_pipeline, unmoved

pytestmark = pytest.mark.slow

PROMPT, SUBJECTS = "a red car and a blue bench", ["red car", "blue bench"]


class ToyStepPipeline:
    """Stable Diffusion's loop without CFG, returning latents; ``scheduler.step`` answers a tuple or an object."""

    vae_scale_factor = 2

    def __init__(self, scheduler="ddim", tuple_output=True):
        c = tiny_sd_components(scheduler)
        self.unet, self.tokenizer, self.scheduler = c["unet"], c["tokenizer"], c["scheduler"]
        self.text_encoder = c["text_encoder"]
        self.tuple_output = tuple_output

    def encode_prompt(self, prompt):
        ids = self.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return (self.text_encoder(ids.input_ids, attention_mask=None)[0],)

    def prepare_latents(self, generator):
        return torch.randn((1, 4, 32, 32), generator=generator) * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def __call__(self, prompt, num_inference_steps=4, generator=None, callback=None, eta=0.0):
        emb = self.encode_prompt(prompt)[0]
        self.scheduler.set_timesteps(num_inference_steps)
        z = self.prepare_latents(generator)
        params = inspect.signature(self.scheduler.step).parameters  # as diffusers' prepare_extra_step_kwargs
        extra = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in params}
        for i, t in enumerate(self.scheduler.timesteps):
            eps = self.unet(self.scheduler.scale_model_input(z, t), t, encoder_hidden_states=emb).sample
            out = self.scheduler.step(eps, t, z, return_dict=not self.tuple_output, **extra)
            z = out[0] if self.tuple_output else out.prev_sample
            if callback is not None:
                callback(i, t, z)
        return ImagePipelineOutput(images=z)


@register_host
class ToyStepHost(UNetHost):
    pipelines = ("ToyStepPipeline",)
    injector = SCHEDULER_STEP


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _no_leftovers(pipe, before):
    assert dict(pipe.unet.attn_processors) == before
    assert not {"encode_prompt", "prepare_latents"} & set(vars(pipe))
    assert "step" not in vars(pipe.scheduler)


@pytest.mark.parametrize("tuple_output", [True, False])
@pytest.mark.parametrize("scheduler", ["ddim", "euler", "ddpm", "heun"])
def test_hook_equals_the_callback_path(scheduler, tuple_output):
    # ddpm: stochastic (the generator reaches step only if the hook keeps its signature); euler: c != 1; heun: two
    # evaluations per step
    toy = ToyStepPipeline(scheduler, tuple_output)
    sd = tiny_sd_pipeline(scheduler)
    stock = toy(PROMPT, generator=_gen()).images
    sd_kw = dict(num_inference_steps=4, guidance_scale=1.0, output_type="latent")
    assert torch.equal(stock, sd(PROMPT, generator=_gen(), **sd_kw).images)  # the same loop
    before = dict(toy.unet.attn_processors)
    rec = ait2i.generate(toy, PROMPT, SUBJECTS, "none", record_maps=(0, 1), generator=_gen())
    assert torch.equal(rec.images, stock) and sorted(rec.diagnostics.maps) == [0, 1]
    cfg = ait2i.AIT2IConfig(max_guided_steps=1.0)
    hooked = ait2i.generate(toy, PROMPT, SUBJECTS, cfg, generator=_gen())
    called = ait2i.generate(sd, PROMPT, SUBJECTS, cfg, generator=_gen(), **sd_kw)
    assert not torch.equal(hooked.images, stock)
    assert torch.allclose(hooked.images, called.images, atol=1e-6, rtol=0)
    losses = [v for r in hooked.diagnostics.steps for v in r.loss]
    assert losses == pytest.approx([v for r in called.diagnostics.steps for v in r.loss])
    assert all(math.isfinite(v) for r in hooked.diagnostics.steps for v in r.loss)
    _no_leftovers(toy, before)


def test_legacy_callback_sees_the_updated_latents():
    toy = ToyStepPipeline()
    inputs = []
    hook = toy.unet.register_forward_pre_hook(lambda m, a: None if torch.is_grad_enabled() else inputs.append(a[0]))
    seen, plain = {}, {}
    cfg = ait2i.AIT2IConfig(max_guided_steps=1.0)
    try:
        ait2i.generate(toy, PROMPT, SUBJECTS, cfg, generator=_gen(), callback=lambda i, t, z: seen.update({i: z}))
    finally:
        hook.remove()
    zero = unmoved(cfg)
    ait2i.generate(toy, PROMPT, SUBJECTS, zero, generator=_gen(), callback=lambda i, t, z: plain.update({i: z}))
    for i in range(3):  # what the callback sees after step i is what the loop denoises at step i + 1 (DDIM: c = 1)
        assert torch.equal(seen[i], inputs[i + 1])
    assert not torch.equal(seen[0], plain[0])  # ... and it is the guided update, not the scheduler's own output


def test_hook_is_removed_after_an_exception():
    toy = ToyStepPipeline()
    before = dict(toy.unet.attn_processors)

    def boom(i, t, z):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        ait2i.generate(toy, PROMPT, SUBJECTS, generator=_gen(), callback=boom)
    _no_leftovers(toy, before)
    assert torch.equal(toy(PROMPT, generator=_gen()).images, ToyStepPipeline()(PROMPT, generator=_gen()).images)
