"""Host adapters on tiny random pipelines: every supported pipeline and scheduler is right or refused up front.

Random tiny models have near-uniform attention, so these tests check correctness (guidance off = the stock
pipeline, the guided pass sees what the denoiser sees, state restored); the effect of guidance per scheduler is
tested on the shipped ShapesWorld model in test_schedulers_shapes.py.
"""

import math
import threading

import numpy as np
import pytest
import torch

import ait2i
from ait2i import AIT2IConfig
from ait2i.hosts.schedulers import SCHEDULER_NAMES
from ait2i.testing import make_scheduler, tiny_sd_pipeline

pytestmark = pytest.mark.slow

PROMPT, SUBJECTS = "a red car and a blue bench", ["red car", "blue bench"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _image(seed=0, size=64):
    rng = np.random.default_rng(seed)
    from PIL import Image

    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _mask(size=64):
    from PIL import Image

    m = np.zeros((size, size), dtype=np.uint8)
    m[:, size // 2 :] = 255
    return Image.fromarray(m)


def _inputs(kind):
    return {
        "text2img": {},
        "img2img": {"image": _image(), "strength": 0.75},
        "inpaint": {"image": _image(), "mask_image": _mask(), "strength": 1.0},
        "inpaint9": {"image": _image(), "mask_image": _mask()},
        "controlnet": {"image": _image(1)},
    }[kind]


def _no_leftovers(pipe, before):
    assert dict(pipe.unet.attn_processors) == before
    assert not {"encode_prompt", "prepare_latents", "get_timesteps", "prepare_image"} & set(vars(pipe))


# -- schedulers ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", sorted(SCHEDULER_NAMES))
def test_none_with_maps_equals_stock_and_guided_runs_under_every_supported_scheduler(scheduler):
    pipe = tiny_sd_pipeline(scheduler)
    kw = dict(num_inference_steps=4, output_type="latent")
    stock = pipe(PROMPT, generator=_gen(0), **kw).images
    before = dict(pipe.unet.attn_processors)
    rec = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0, 1), generator=_gen(0), **kw)
    assert torch.equal(rec.images, stock)
    assert sorted(rec.diagnostics.maps) == [0, 1]
    guided = ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(max_guided_steps=1.0), generator=_gen(0), **kw)
    steps = guided.diagnostics.steps
    # one engine step per denoising step, also for second-order samplers (two evaluations per step)
    assert [r.step for r in steps] == list(range(len(steps))) and len(steps) in (4, 5)  # PNDM runs N + 1
    assert all(math.isfinite(v) for r in steps for v in r.loss)
    assert not torch.equal(guided.images, stock)
    _no_leftovers(pipe, before)


def test_update_is_taken_in_the_model_input_space():
    # Euler's latents are sigma-scaled; the step must be the same in u = scale_model_input(z) as DDIM's in z.
    from ait2i.hosts.schedulers import input_scale

    sched = make_scheduler("euler")
    sched.set_timesteps(10)
    z = torch.ones(1, 4, 2, 2)
    c = input_scale(sched, sched.timesteps[0], z)
    assert math.isclose(c, 1 / math.sqrt(float(sched.sigmas[0]) ** 2 + 1), rel_tol=1e-6)
    ddim = make_scheduler("ddim")
    ddim.set_timesteps(10)
    assert input_scale(ddim, ddim.timesteps[0], z) == 1.0


def test_scheduler_notes_in_diagnostics():
    pipe = tiny_sd_pipeline("pndm")
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, num_inference_steps=3, output_type="latent")
    assert any("PNDM" in n and "step 1" in n for n in out.diagnostics.notes)
    heun = ait2i.generate(tiny_sd_pipeline("heun"), PROMPT, SUBJECTS, num_inference_steps=3, output_type="latent")
    assert any("second-order" in n for n in heun.diagnostics.notes)


def test_unsupported_schedulers_are_refused_up_front():
    from diffusers import DPMSolverSinglestepScheduler, PNDMScheduler

    pipe = tiny_sd_pipeline()
    pipe.scheduler = DPMSolverSinglestepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(TypeError, match=r"DPMSolverSinglestepScheduler is not supported.*supported: DDIMScheduler"):
        ait2i.generate(pipe, PROMPT, SUBJECTS)
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=False)
    with pytest.raises(TypeError, match="skip_prk_steps=True"):
        ait2i.generate(pipe, PROMPT, SUBJECTS)


# -- pipelines ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["img2img", "inpaint", "inpaint9", "controlnet"])
def test_none_equals_stock_and_guided_runs_on_every_pipeline(kind):
    pipe = tiny_sd_pipeline(kind=kind)
    kw = dict(num_inference_steps=4, output_type="np", **_inputs(kind))
    stock = pipe(PROMPT, generator=_gen(0), **kw).images
    before = dict(pipe.unet.attn_processors)
    rec = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), generator=_gen(0), **kw)
    assert np.array_equal(rec.images, stock)
    guided = ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(max_guided_steps=1.0), generator=_gen(0), **kw)
    assert all(math.isfinite(v) for r in guided.diagnostics.steps for v in r.loss)
    assert not np.array_equal(guided.images, stock)
    _no_leftovers(pipe, before)


def test_img2img_guides_the_steps_strength_runs():
    pipe = tiny_sd_pipeline(kind="img2img")
    out = ait2i.generate(
        pipe, PROMPT, SUBJECTS, AIT2IConfig(max_guided_steps=1.0), num_inference_steps=8, strength=0.5,
        output_type="latent", image=_image(),
    )  # fmt: skip
    steps = out.diagnostics.steps
    assert len(steps) == 4  # strength 0.5 of 8 steps
    pipe.scheduler.set_timesteps(8)
    assert [r.timestep for r in steps] == [int(t) for t in pipe.scheduler.timesteps[4:]]


def test_inpaint9_guided_pass_sees_the_mask_channels():
    pipe = tiny_sd_pipeline(kind="inpaint9")
    seen = []
    unet_forward = pipe.unet.forward

    def spy(sample, *a, **k):
        seen.append(sample.shape[1])
        return unet_forward(sample, *a, **k)

    pipe.unet.forward = spy
    ait2i.generate(pipe, PROMPT, SUBJECTS, num_inference_steps=2, output_type="latent", **_inputs("inpaint9"))
    assert seen and set(seen) == {9}


def _controlnet_calls(pipe):
    """Record every ControlNet call's (batch rows of the input, control image, scale, guess mode)."""
    calls = []
    forward = pipe.controlnet.forward

    def spy(sample, timestep, encoder_hidden_states=None, controlnet_cond=None, conditioning_scale=1.0, **k):
        calls.append((int(timestep), controlnet_cond[-1].clone(), conditioning_scale, k.get("guess_mode", False)))
        return forward(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, **k)

    pipe.controlnet.forward = spy
    return calls


@pytest.mark.parametrize("guess_mode", [False, True])
def test_controlnet_guided_pass_sees_what_the_denoiser_sees(guess_mode):
    pipe = tiny_sd_pipeline(kind="controlnet")
    calls = _controlnet_calls(pipe)
    kw = dict(
        num_inference_steps=6, output_type="latent", image=_image(1), controlnet_conditioning_scale=0.7,
        control_guidance_start=0.2, control_guidance_end=0.7, guess_mode=guess_mode,
    )  # fmt: skip
    ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(max_guided_steps=1.0), **kw)
    # each step: our guided call (1 row), then the pipeline's call; same timestep, image, scale, mode
    by_t = {}
    for t, img, scale, gm in calls:
        by_t.setdefault(t, []).append((img, scale, gm))
    assert len(by_t) == 6
    for group in by_t.values():
        assert len(group) == 2
        (img_a, scale_a, gm_a), (img_b, scale_b, gm_b) = group
        assert torch.equal(img_a, img_b) and math.isclose(scale_a, scale_b) and gm_a == gm_b == guess_mode
    scales = [group[0][1] for group in by_t.values()]
    assert scales[0] == 0.0 and scales[2] == pytest.approx(0.7) and scales[-1] == 0.0  # the start/end window


def test_two_control_images_give_two_losses():
    pipe = tiny_sd_pipeline(kind="controlnet")
    kw = dict(num_inference_steps=2, output_type="latent", generator=None)
    losses = []
    for img in (_image(1), _image(2)):
        out = ait2i.generate(pipe, PROMPT, SUBJECTS, image=img, **{**kw, "generator": _gen(0)})
        losses.append(out.diagnostics.steps[0].loss[0])
    assert losses[0] != losses[1]


@pytest.mark.parametrize(
    "name",
    ["LatentConsistencyModelPipeline", "KandinskyV22Pipeline", "StableDiffusionControlNetImg2ImgPipeline"],
)
def test_unsupported_pipelines_are_refused_up_front(name):
    fake = type(name, (), {})()
    with pytest.raises(TypeError, match=f"{name} is not supported; supported pipelines: .*StableDiffusionPipeline"):
        ait2i.generate(fake, PROMPT, SUBJECTS)


def test_attend_and_excite_pipeline_is_refused():
    from diffusers import StableDiffusionAttendAndExcitePipeline

    comps = tiny_sd_pipeline().components
    comps.pop("image_encoder", None)
    ane = StableDiffusionAttendAndExcitePipeline(**comps, requires_safety_checker=False)
    with pytest.raises(TypeError, match="StableDiffusionAttendAndExcitePipeline is not supported"):
        ait2i.generate(ane, PROMPT, SUBJECTS)


def test_refused_arguments_and_unets():
    pipe = tiny_sd_pipeline()
    with pytest.raises(ValueError, match="ip_adapter_image"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, ip_adapter_image=_image())
    with pytest.raises(ValueError, match="prompt_embeds"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, prompt_embeds=torch.zeros(1, 77, 32))
    pipe.unet.register_to_config(time_cond_proj_dim=8)
    with pytest.raises(TypeError, match="LCM"):
        ait2i.generate(pipe, PROMPT, SUBJECTS)


# -- LoRA scale ---------------------------------------------------------------------------------------------------
def _maps(pipe, **kw):
    out = ait2i.generate(
        pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), num_inference_steps=2, output_type="latent",
        generator=_gen(0), **kw,
    )  # fmt: skip
    return out.diagnostics.maps[0]


@pytest.mark.parametrize("where", ["text_encoder", "unet"])
def test_lora_scale_reaches_the_guided_pass(where):
    from peft import LoraConfig, inject_adapter_in_model

    pipe = tiny_sd_pipeline()
    plain = _maps(pipe)
    torch.manual_seed(0)
    if where == "text_encoder":  # as diffusers' LoRA loader injects it (peft), whatever transformers' own mixin says
        cfg = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False)
        inject_adapter_in_model(cfg, pipe.text_encoder)
    else:
        cfg = LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v"], init_lora_weights=False)
        pipe.unet.add_adapter(cfg)
    full = _maps(pipe, cross_attention_kwargs={"scale": 1.0})
    off = _maps(pipe, cross_attention_kwargs={"scale": 0.0})
    assert not torch.allclose(full, plain, atol=1e-6)
    torch.testing.assert_close(off, plain, rtol=1e-5, atol=1e-6)


# -- the diffusers contract ---------------------------------------------------------------------------------------
def test_return_dict_false_returns_the_pipelines_tuple_then_the_diagnostics():
    pipe = tiny_sd_pipeline()
    kw = dict(num_inference_steps=2, output_type="np")
    stock = pipe(PROMPT, generator=_gen(0), return_dict=False, **kw)
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), generator=_gen(0), return_dict=False, **kw)
    assert len(out) == len(stock) + 1 and np.array_equal(out[0], stock[0])
    assert isinstance(out[-1], ait2i.Diagnostics) and 0 in out[-1].maps
    guided = ait2i.generate(pipe, PROMPT, SUBJECTS, return_dict=False, **kw)
    assert isinstance(guided[-1], ait2i.Diagnostics) and guided[-1].steps


def test_output_is_a_declared_subclass_of_the_pipelines_output():
    import dataclasses

    from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

    out = ait2i.generate(tiny_sd_pipeline(), PROMPT, SUBJECTS, num_inference_steps=2, output_type="np")
    assert isinstance(out, StableDiffusionPipelineOutput)
    assert [f.name for f in dataclasses.fields(out)] == ["images", "nsfw_content_detected", "diagnostics"]
    assert type(out) is ait2i.guided_output_class(StableDiffusionPipelineOutput)
    assert out["diagnostics"] is out.diagnostics and out.diagnostics.steps


def test_pipeline_callback_objects_with_their_own_tensor_inputs():
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback, SDCFGCutoffCallback

    class Seen(PipelineCallback):
        tensor_inputs = ["latents", "negative_prompt_embeds"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            self.keys = sorted(callback_kwargs)
            return callback_kwargs

    pipe = tiny_sd_pipeline()
    kw = dict(num_inference_steps=4, output_type="latent")
    cut = SDCFGCutoffCallback(cutoff_step_ratio=0.5)
    stock = pipe(PROMPT, generator=_gen(0), callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5), **kw)
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0, 3), generator=_gen(0),
                         callback_on_step_end=cut, **kw)  # fmt: skip
    assert torch.equal(out.images, stock.images)
    seen = Seen()
    multi = MultiPipelineCallbacks([SDCFGCutoffCallback(cutoff_step_ratio=0.5), seen])
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, AIT2IConfig(max_guided_steps=1.0), callback_on_step_end=multi, **kw)
    assert seen.keys == ["latents", "negative_prompt_embeds", "prompt_embeds"]
    assert len(out.diagnostics.steps) == 4


def test_attention_slicing_and_legacy_and_kwarg_processors():
    pipe = tiny_sd_pipeline()
    kw = dict(num_inference_steps=3, output_type="latent", method=AIT2IConfig(max_guided_steps=1.0))
    ref = ait2i.generate(pipe, PROMPT, SUBJECTS, generator=_gen(0), **kw)
    pipe.enable_attention_slicing(1)
    sliced = ait2i.generate(pipe, PROMPT, SUBJECTS, generator=_gen(0), **kw)
    torch.testing.assert_close(sliced.images, ref.images, rtol=1e-4, atol=1e-4)
    pipe.disable_attention_slicing()

    from diffusers.models.attention_processor import AttnProcessor

    plain = AttnProcessor()

    class Legacy:  # positional signature, no temb
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
            return plain(attn, hidden_states, encoder_hidden_states, attention_mask)

    pipe.unet.set_attn_processor(Legacy())
    legacy = ait2i.generate(pipe, PROMPT, SUBJECTS, generator=_gen(0), **kw)
    torch.testing.assert_close(legacy.images, ref.images, rtol=1e-4, atol=1e-4)

    class Scaled:  # takes an extra keyword through cross_attention_kwargs
        def __init__(self):
            self.got = []

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, gain=1.0):
            self.got.append(gain)
            return plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb) * gain

    scaled = Scaled()
    pipe.unet.set_attn_processor(scaled)
    before = dict(pipe.unet.attn_processors)
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, generator=_gen(0), cross_attention_kwargs={"gain": 0.5}, **kw)
    assert scaled.got and set(scaled.got) == {0.5}  # recorded layers included
    assert dict(pipe.unet.attn_processors) == before
    assert not torch.allclose(out.images, ref.images)


def test_two_threads_on_one_pipeline():
    pipe = tiny_sd_pipeline()
    before = dict(pipe.unet.attn_processors)
    kw = dict(num_inference_steps=3, output_type="latent")
    expected = {s: ait2i.generate(pipe, PROMPT, SUBJECTS, generator=_gen(s), **kw).images for s in (0, 1)}
    results, errors = {}, []

    def work(seed):
        try:
            results[seed] = ait2i.generate(pipe, PROMPT, SUBJECTS, generator=_gen(seed), **kw).images
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for s in (0, 1):
        assert torch.equal(results[s], expected[s])
    _no_leftovers(pipe, before)


# -- methods ------------------------------------------------------------------------------------------------------
def test_a_third_party_method_registers_and_runs_without_editing_the_package():
    from dataclasses import dataclass, field

    from ait2i.methods.registry import _REGISTRY

    @dataclass
    class LeftBias(ait2i.GuidanceConfig):
        """Toy method: pull every subject's attention to the left half."""

        max_guided_steps: int | float = 1.0
        name: str = field(default="left-bias", repr=False)

        def loss(self, raw, subjects, eot_index):
            maps = torch.stack([raw[..., list(s.tokens)].mean(-1) for s in subjects], 1)  # (B, G, h, w)
            w = maps.shape[-1]
            right = maps[..., w // 2 :].sum((-2, -1)) / maps.sum((-2, -1))
            return right.mean(1), {"right": right.mean(1)}, maps.amax((-2, -1))

    try:
        ait2i.register_method("left-bias", LeftBias)
        assert "left-bias" in ait2i.available_methods()
        out = ait2i.generate(tiny_sd_pipeline(), PROMPT, SUBJECTS, "left-bias", num_inference_steps=2,
                             output_type="latent")  # fmt: skip
        assert set(out.diagnostics.steps[0].terms) == {"right"} and out.diagnostics.method == "left-bias"
        with pytest.raises(ValueError, match="already registered"):
            ait2i.register_method("left-bias", LeftBias)
    finally:
        _REGISTRY.pop("left-bias", None)


def test_box_for_a_method_that_reads_no_boxes_is_refused():
    pipe = tiny_sd_pipeline()
    boxed = ait2i.Subject("car", (3,), box=(0.0, 0.0, 0.5, 0.5))
    with pytest.raises(ValueError, match="does not read boxes"):
        ait2i.generate(pipe, PROMPT, [boxed, "blue bench"], num_inference_steps=2)


# -- review fixes: concurrency, ControlNet edge cases, output ---------------------------------------------------
def test_reentry_from_a_callback_raises_instead_of_deadlocking():
    pipe = tiny_sd_pipeline()

    def nested(p, i, t, kw):
        ait2i.generate(p, PROMPT, SUBJECTS, num_inference_steps=2, output_type="latent")
        return {}

    with pytest.raises(RuntimeError, match="already running"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, num_inference_steps=2, output_type="latent", callback_on_step_end=nested)
    _no_leftovers(pipe, dict(pipe.unet.attn_processors))
    ait2i.generate(pipe, PROMPT, SUBJECTS, num_inference_steps=2, output_type="latent")  # the lock was released


def test_pipelines_sharing_a_unet_in_two_threads_and_unguided_calls_stay_stock():
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = tiny_sd_pipeline()
    other = StableDiffusionImg2ImgPipeline(**pipe.components)  # the usual way: same UNet object
    other.set_progress_bar_config(disable=True)
    before = dict(pipe.unet.attn_processors)
    kw = dict(num_inference_steps=3, output_type="latent")
    stock = pipe(PROMPT, generator=_gen(5), **kw).images
    expected = ait2i.generate(pipe, PROMPT, SUBJECTS, generator=_gen(0), **kw).images
    expected_other = ait2i.generate(other, PROMPT, SUBJECTS, image=_image(), generator=_gen(1), **kw).images
    results, errors = {}, []

    def work(name, fn):
        try:
            results[name] = fn()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    jobs = {
        "guided": lambda: ait2i.generate(pipe, PROMPT, SUBJECTS, generator=_gen(0), **kw).images,
        "other": lambda: ait2i.generate(other, PROMPT, SUBJECTS, image=_image(), generator=_gen(1), **kw).images,
        "none": lambda: ait2i.generate(pipe, PROMPT, SUBJECTS, "none", generator=_gen(5), **kw).images,
    }
    threads = [threading.Thread(target=work, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert torch.equal(results["guided"], expected) and torch.equal(results["other"], expected_other)
    assert torch.equal(results["none"], stock)
    _no_leftovers(pipe, before)
    _no_leftovers(other, before)


def test_multicontrolnet_with_one_net_and_a_control_image_changed_by_the_callback():
    from diffusers import MultiControlNetModel

    pipe = tiny_sd_pipeline(kind="controlnet")
    pipe.controlnet = MultiControlNetModel([pipe.controlnet])
    kw = dict(num_inference_steps=3, output_type="latent", image=[_image(1)])
    stock = pipe(PROMPT, generator=_gen(0), **kw).images
    rec = ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(0,), generator=_gen(0), **kw)
    assert torch.equal(rec.images, stock)

    single = tiny_sd_pipeline(kind="controlnet")
    calls = _controlnet_calls(single)

    def swap(p, i, t, kw):
        return {"image": torch.zeros_like(kw["image"])}

    ait2i.generate(single, PROMPT, SUBJECTS, AIT2IConfig(max_guided_steps=1.0), num_inference_steps=3,
                   output_type="latent", image=_image(1), callback_on_step_end=swap,
                   callback_on_step_end_tensor_inputs=["latents", "image"])  # fmt: skip
    # after step 0 the pipeline denoises with the zero image; so must the guided pass (calls 3, 4, 5, ...)
    assert all(float(img.abs().max()) == 0.0 for _, img, _, _ in calls[2:])


def test_record_maps_outside_the_run_is_an_error():
    pipe = tiny_sd_pipeline(kind="img2img")
    with pytest.raises(ValueError, match=r"record_maps \[5\]: this run has 2 steps"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, "none", record_maps=(5,), num_inference_steps=4, strength=0.5,
                       image=_image(), output_type="latent")  # fmt: skip


def test_output_pickles():
    import pickle

    out = ait2i.generate(tiny_sd_pipeline(), PROMPT, SUBJECTS, num_inference_steps=2, output_type="np")
    back = pickle.loads(pickle.dumps(out))
    assert type(back) is type(out) and np.array_equal(back.images, out.images)
    assert back.diagnostics.steps[0].loss == out.diagnostics.steps[0].loss


def test_a_broken_method_plugin_is_reported_when_asked_for(monkeypatch):
    from ait2i.methods import registry

    class EP:
        name, value = "broken", "nowhere:factory"

        def load(self):
            raise ImportError("no module named nowhere")

    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_entry_point_errors", {})
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [EP()])
    assert "ait2i" in ait2i.available_methods()  # the others still load
    with pytest.raises(ValueError, match="failed to load from its package.*no module named nowhere"):
        ait2i.get_method("broken")


def test_flow_matching_scheduler_is_refused_outside_its_family():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ait2i.testing import tiny_pixart_pipeline

    for pipe, kw in ((tiny_sd_pipeline(), {}), (tiny_pixart_pipeline(), {"clean_caption": False})):
        pipe.scheduler = FlowMatchEulerDiscreteScheduler()
        with pytest.raises(TypeError, match=r"FlowMatchEulerDiscreteScheduler is not supported \(not with this"):
            ait2i.generate(pipe, PROMPT, SUBJECTS, num_inference_steps=2, **kw)


@pytest.mark.slow
def test_unet_gradient_checkpointing_is_refused_up_front():
    """A checkpointed block would be recomputed in the backward pass from a guided forward pass that stopped at the
    last read layer: refused before anything runs, naming the fix."""
    pipe = tiny_sd_pipeline()
    pipe.unet.enable_gradient_checkpointing()
    with pytest.raises(ValueError, match=r"pipe\.unet\.disable_gradient_checkpointing\(\)"):
        ait2i.generate(pipe, "a red car and a blue bench", ["red car", "blue bench"], num_inference_steps=2)
