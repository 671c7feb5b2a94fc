"""Regional adapters (``generate(..., regional_adapters=...)``): refusals, exact masking on a tiny pipeline, state
restored, and the effect on the shipped ShapesWorld star and ring LoRAs."""

import numpy as np
import pytest
import torch

import ait2i
from ait2i.regional import RegionalAdapters, RegionalHooks
from ait2i.subjects import resolve_subjects
from ait2i.testing import tiny_sd_pipeline

PROMPT = "a red cat and a blue frog"
SUBJECTS = ["red cat", "blue frog"]
IMAGE_SIDE = ["to_q", "to_out.0", "conv1", "conv2", "proj_in", "proj_out"]


def _with_adapters(targets=IMAGE_SIDE, text_encoder=False):
    from peft import LoraConfig

    pipe = tiny_sd_pipeline()
    for k, name in enumerate(("cat-lora", "frog-lora")):
        torch.manual_seed(10 + k)
        cfg = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
        pipe.unet.add_adapter(cfg, adapter_name=name)
        if text_encoder:
            te = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
            pipe.text_encoder.add_adapter(te, adapter_name=name)
    pipe.set_adapters(["cat-lora", "frog-lora"], adapter_weights=[1.0, 1.0])
    return pipe


def _run(pipe, steps=1, **kw):
    g = torch.Generator("cpu").manual_seed(0)
    out = ait2i.generate(pipe, PROMPT, SUBJECTS, method="none", num_inference_steps=steps, generator=g,
                         output_type="np", **kw)  # fmt: skip
    return out.images, out


def _hook_count(pipe) -> int:
    mods = [*pipe.unet.modules(), *pipe.text_encoder.modules()]
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in mods)


def test_the_first_mask_scales_the_image_side_updates_exactly():
    pipe = _with_adapters()
    on, _ = _run(pipe)
    spec = {"cat-lora": "red cat", "frog-lora": "blue frog"}
    # one step: the only UNet call runs before any map, so every image-side update is scaled by `first`
    full, out = _run(pipe, regional_adapters=RegionalAdapters(spec, first=1.0))
    np.testing.assert_allclose(full, on, atol=1e-6)
    zero, _ = _run(pipe, regional_adapters=RegionalAdapters(spec, first=0.0))
    pipe.unet.disable_adapters()
    off, _ = _run(pipe)
    pipe.unet.enable_adapters()
    np.testing.assert_allclose(zero, off, atol=1e-6)
    assert np.abs(on - off).max() > 1e-3  # the adapters change the picture, so the two checks are not vacuous
    assert any(n.startswith("regional adapters: cat-lora -> 'red cat'") for n in out.diagnostics.notes)


def test_hooks_are_removed_and_the_pipeline_is_as_before():
    pipe = _with_adapters(text_encoder=True)
    (before, _), hooks = _run(pipe, steps=3), _hook_count(pipe)
    regional, _ = _run(pipe, steps=3, regional_adapters={"cat-lora": 0, "frog-lora": 1})
    assert _hook_count(pipe) == hooks
    after, _ = _run(pipe, steps=3)
    np.testing.assert_array_equal(before, after)
    assert np.abs(regional - before).max() > 1e-4
    with pytest.raises(ValueError, match="not one of the subjects"):
        _run(pipe, regional_adapters={"cat-lora": "green dog"})
    assert _hook_count(pipe) == hooks  # a refusal installs nothing


def test_text_side_updates_only_on_the_subjects_tokens_in_the_prompt_rows():
    pipe = _with_adapters(targets=["to_k", "to_v"])
    subjects = resolve_subjects(pipe.tokenizer, PROMPT, SUBJECTS)
    hooks = RegionalHooks(pipe, RegionalAdapters({"cat-lora": "red cat"}), subjects, SUBJECTS, PROMPT, images=1)
    hook = hooks._lora_hook("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.cat-lora",
                            "cat-lora")  # fmt: skip
    out = torch.ones(2, 77, 8)  # [negative ; prompt]
    masked = hook(None, None, out)
    assert masked[0].abs().sum() == 0  # the negative prompt's row
    on = masked[1, :, 0].nonzero().flatten().tolist()
    assert on == list(subjects[0].tokens)  # "cat" only, not "red", not the other subject's words
    te = hooks._lora_hook("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj.lora_B.cat-lora", "cat-lora")
    hooks.state.te_prompt = False
    assert te(None, None, torch.ones(1, 77, 8)).abs().sum() == 0  # the negative prompt's encoding


def test_refusals_name_what_is_supported():
    pipe = _with_adapters()
    with pytest.raises(ValueError, match="not an active LoRA adapter.*'cat-lora', 'frog-lora'"):
        _run(pipe, regional_adapters={"dog-lora": "red cat"})
    with pytest.raises(ValueError, match="two adapters"):
        _run(pipe, regional_adapters={"cat-lora": "red cat", "frog-lora": 0})
    with pytest.raises(ValueError, match="low must be below high"):
        RegionalAdapters({"cat-lora": "red cat"}, low=0.5, high=0.2)
    with pytest.raises(ValueError, match="at least one adapter"):
        RegionalAdapters({})
    with pytest.raises(ValueError, match="prompt_embeds"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, method="none", prompt_embeds=torch.zeros(1, 77, 32),
                       regional_adapters={"cat-lora": 0})  # fmt: skip
    pipe.set_adapters(["cat-lora"])
    with pytest.raises(ValueError, match="not an active LoRA adapter"):
        _run(pipe, regional_adapters={"frog-lora": 1})
    pipe.fuse_lora(adapter_names=["cat-lora"])  # merged into the weights: no hook would see its update
    with pytest.raises(ValueError, match="fused into the weights.*unfuse_lora"):
        _run(pipe, regional_adapters={"cat-lora": 0})


def test_other_pipelines_are_refused_before_anything_runs():
    from ait2i.testing import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    with pytest.raises(TypeError, match=r"not supported for StableDiffusionXLPipeline; supported: \['StableDiffusion"):
        ait2i.generate(pipe, PROMPT, SUBJECTS, method="none", num_inference_steps=1, regional_adapters={"a": 0})


@pytest.mark.slow
def test_two_shapesworld_loras_draw_both_concepts_only_when_regional():
    # both LoRAs at weight 1: the model stops drawing shapes (docs/results/personalization.md); regional adapters
    # place each where its subject is. Seeds 200-201 were used for nothing else.
    from ait2i.bench.suites import personalization as P
    from ait2i.models import load_model
    from ait2i.shapes import concept as C

    pipe = load_model(None, scheduler="ddim")
    C.load_concepts(pipe, ("star", "ring"), "lora", adapter_weight=1.0)
    counts = {"plain": 0, "regional": 0}
    for objs in P.MULTI_PROMPTS:
        prompt, subjects = P.measure_prompt(objs, "lora")
        regional = {f"{shape}-lora": phrase for (_, shape), phrase in zip(objs, subjects)}
        for seed in (200, 201):
            for mode in counts:
                kw = {"regional_adapters": regional} if mode == "regional" else {}
                g = torch.Generator("cpu").manual_seed(seed)
                out = ait2i.generate(pipe, prompt, subjects, method="ait2i", num_inference_steps=20, generator=g, **kw)
                s = P.score_image(out.images[0], objs)
                counts[mode] += bool(s["concept_star"]) + bool(s["concept_ring"])
    assert counts["plain"] <= 1 and counts["regional"] >= 6, counts  # of 16 concepts asked for
